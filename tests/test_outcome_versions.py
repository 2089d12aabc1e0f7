"""Outcome records of every schema version decode: fields are appended, nullable with defaults, and
an older record is read with its own writer schema (schemas/outcome.v1.avsc)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.avro import encode_schemaless
from consumer.errors import CodecError
from consumer.outcomes.codec import decode_outcome, encode_outcome
from consumer.outcomes.model import Outcome, OutcomeStatus, SourcePosition
from consumer.schemas import field_names, parsed_schema


def outcome(**changes: object) -> Outcome:
    values: dict[str, object] = {
        "created": datetime(2026, 11, 1, 12, 0, tzinfo=UTC),
        "event_id": "e-1",
        "rule_id": "r-1",
        "platform": "lms",
        "trigger": "lead_sold",
        "status": OutcomeStatus.SENT,
        "to": ["ops@example.com"],
        "subject": "Lead L1 sold",
        "message_id": "<x@example.com>",
        "attempts": 1,
        "source": SourcePosition(topic="lms.events", partition=0, offset=7),
        "connection": "esp:default",
    }
    return Outcome(**(values | changes))


def test_current_schema_appends_rule_version_to_version_1() -> None:
    assert field_names("outcome")[: len(field_names("outcome.v1"))] == field_names("outcome.v1")
    assert field_names("outcome")[len(field_names("outcome.v1")) :] == ["rule_version"]


def test_rule_version_round_trips() -> None:
    assert decode_outcome(encode_outcome(outcome(rule_version=42))).rule_version == 42
    assert decode_outcome(encode_outcome(outcome())).rule_version is None


@settings(max_examples=60, deadline=None)
@given(
    subject=st.text(max_size=40),
    attempts=st.integers(min_value=0, max_value=50),
    offset=st.integers(min_value=0, max_value=2**40),
)
def test_a_version_1_record_decodes_with_defaults(subject: str, attempts: int, offset: int) -> None:
    old = outcome(
        subject=subject, attempts=attempts, source=SourcePosition(topic="t", partition=1, offset=offset)
    )
    record = old.model_dump(mode="python")
    del record["rule_version"]
    written_by_v1 = encode_schemaless(record, parsed_schema("outcome.v1"))
    assert decode_outcome(written_by_v1) == old


def test_garbage_is_still_a_codec_error() -> None:
    with pytest.raises(CodecError):
        decode_outcome(b"\x02\x04garbage")
    with pytest.raises(CodecError):
        decode_outcome(encode_outcome(outcome()) + b"\x00\x00\x00")
