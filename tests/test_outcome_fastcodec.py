"""The outcome's direct Avro writer (consumer.outcomes.fastcodec) writes the bytes fastavro writes
(encode_outcome_reference, the reference), for every outcome the model accepts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.errors import CodecError
from consumer.outcomes import fastcodec
from consumer.outcomes.codec import decode_outcome, encode_outcome, encode_outcome_reference
from consumer.outcomes.model import Outcome, OutcomeStatus, SourcePosition

INT32 = st.integers(-(2**31), 2**31 - 1)
LONG = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-300, 300))
ANY_INT = st.one_of(INT32, LONG, st.integers(-(2**70), 2**70))
TEXT = st.text(max_size=40)
OPT_TEXT = st.none() | TEXT
ZONES = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])
WHEN = st.one_of(
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2300, 1, 1), timezones=ZONES),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2300, 1, 1)),  # naive: fastavro's
)


def outcomes(ints: st.SearchStrategy[int], when: st.SearchStrategy[datetime]) -> st.SearchStrategy[Outcome]:
    return st.builds(
        Outcome,
        created=when,
        event_id=OPT_TEXT,
        rule_id=TEXT,
        platform=OPT_TEXT,
        trigger=OPT_TEXT,
        status=st.sampled_from(list(OutcomeStatus)),
        to=st.lists(TEXT, max_size=3),
        cc=st.lists(TEXT, max_size=3),
        bcc=st.lists(TEXT, max_size=3),
        subject=OPT_TEXT,
        message_id=OPT_TEXT,
        error=OPT_TEXT,
        smtp_code=st.none() | ints,
        attempts=ints,
        latency_ms=st.none() | ints,
        source=st.none() | st.builds(SourcePosition, topic=TEXT, partition=ints, offset=ints),
        connection=OPT_TEXT,
        empty_placeholders=st.lists(TEXT, max_size=3),
        warnings_enabled=st.booleans(),
        rule_version=st.none() | ints,
    )


def _reference(outcome: Outcome) -> bytes | str:
    try:
        return encode_outcome_reference(outcome)
    except CodecError as exc:
        return f"CodecError: {exc}"


def _ours(outcome: Outcome) -> bytes | str:
    try:
        return encode_outcome(outcome)
    except CodecError as exc:
        return f"CodecError: {exc}"


@settings(max_examples=400, deadline=None)
@given(outcomes(ANY_INT, WHEN))
def test_every_outcome_is_written_as_fastavro_writes_it(outcome: Outcome) -> None:
    assert _ours(outcome) == _reference(outcome)


@settings(max_examples=300, deadline=None)
@given(outcomes(INT32, st.datetimes(timezones=ZONES, min_value=datetime(1900, 1, 1))))
def test_the_direct_writer_covers_outcomes_of_plain_values(outcome: Outcome) -> None:
    """Aware times and ints in range (every outcome the service writes): written directly, the same
    bytes, and they read back."""
    direct = fastcodec.encode(outcome)
    assert direct is not None
    assert direct == encode_outcome_reference(outcome)
    back = decode_outcome(direct)
    assert back.model_dump(exclude={"created"}) == outcome.model_dump(exclude={"created"})


def test_a_typical_sent_outcome() -> None:
    outcome = Outcome(
        created=datetime(2026, 12, 1, 12, 0, 0, 999_999, tzinfo=UTC),
        event_id="ev-1",
        rule_id="r-1",
        platform="lms",
        trigger="lead_sold",
        status=OutcomeStatus.SENT,
        to=["ops@example.com"],
        subject="Lead sold",
        message_id="<abc@example.com>",
        smtp_code=250,
        attempts=1,
        latency_ms=12,
        source=SourcePosition(topic="lms", partition=2, offset=123_456_789),
        connection="esp:fast",
        warnings_enabled=True,
        rule_version=7,
    )
    assert fastcodec.encode(outcome) == encode_outcome_reference(outcome)
    assert decode_outcome(encode_outcome(outcome)).created == datetime(
        2026, 12, 1, 12, 0, 0, 999_000, tzinfo=UTC
    )


@pytest.mark.parametrize(
    "change",
    [{"attempts": 2**31}, {"smtp_code": -(2**31) - 1}, {"created": datetime(2026, 1, 1)}],
)
def test_values_outside_the_direct_writer_go_to_fastavro(change: dict[str, object]) -> None:
    outcome = Outcome(rule_id="r-1", status=OutcomeStatus.FAILED, **change)  # type: ignore[arg-type]
    assert fastcodec.encode(outcome) is None
    assert _ours(outcome) == _reference(outcome)
