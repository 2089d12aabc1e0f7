"""Event, outcome and alert codecs: round trips in every encoding, errors naming the field, and
arbitrary bytes never raising anything but CodecError."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.avro import join_wire
from consumer.errors import CodecError
from consumer.events.codec import EventDecoder, InputFormat, encode_avro, encode_json, encode_wire
from consumer.events.triggers import CALL_LOGIC_TRIGGERS, LMS_TRIGGERS, Platform
from consumer.outcomes.codec import decode_alert, decode_outcome, encode_alert, encode_outcome
from consumer.outcomes.model import Alert, AlertKind, ErrorCount, Outcome, OutcomeStatus, SourcePosition
from consumer.schemas import parsed_schema
from tests.factories import make_event

ALL_TRIGGERS = [(Platform.LMS, t) for t in LMS_TRIGGERS] + [
    (Platform.CALL_LOGIC, t) for t in CALL_LOGIC_TRIGGERS
]
SCHEMA_IDS = {Platform.LMS: 7, Platform.CALL_LOGIC: 8}


def _lookup(schema_id: int) -> object:
    by_id = {7: parsed_schema("lms_event"), 8: parsed_schema("call_logic_event")}
    if schema_id not in by_id:
        raise CodecError(f"unknown schema id {schema_id}")
    return by_id[schema_id]


@pytest.mark.parametrize(("platform", "trigger"), ALL_TRIGGERS)
def test_every_trigger_round_trips_in_every_encoding(platform: Platform, trigger: str) -> None:
    event = make_event(platform, trigger)
    decoder = EventDecoder(InputFormat.AVRO, writer_schema=_lookup)
    assert decoder.decode(platform, encode_json(event)) == event
    assert decoder.decode(platform, encode_avro(event)) == event
    assert decoder.decode(platform, encode_wire(event, SCHEMA_IDS[platform])) == event


def test_optional_fields_may_be_absent_in_json() -> None:
    raw = b'{"event_id": "e1", "trigger": "lead_sold", "occurred_at": "2026-11-01T10:00:00Z"}'
    event = EventDecoder().decode(Platform.LMS, raw)
    assert event.price is None
    assert event.currency == "USD"
    assert event.data == {}
    assert event.occurred_at == datetime(2026, 11, 1, 10, tzinfo=UTC)


def test_json_detected_by_content_type_header_even_with_leading_space() -> None:
    event = make_event()
    value = b"  \n" + encode_json(event)
    assert EventDecoder().decode(Platform.LMS, value, [("content-type", b"application/json")]) == event
    # the client may give headers as a mapping too
    assert EventDecoder().decode(Platform.LMS, value, {"Content-Type": "application/json"}) == event


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"trigger": "amd"}, "trigger"),  # a Call Logic trigger on the LMS topic
        ({"price": "cheap"}, "price"),
        ({"method": "GET"}, "method"),
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"data": {"n": 1}}, "data.n"),
        ({"event_id": ""}, "event_id"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_json_event_names_the_field(patch: dict[str, object], field: str) -> None:
    record = json.loads(encode_json(make_event()))
    record.update(patch)
    with pytest.raises(CodecError) as info:
        EventDecoder().decode(Platform.LMS, json.dumps(record).encode())
    assert field in str(info.value)


def test_missing_required_field_is_named() -> None:
    with pytest.raises(CodecError, match="event_id"):
        EventDecoder().decode(
            Platform.LMS, b'{"trigger": "lead_sold", "occurred_at": "2026-11-01T10:00:00Z"}'
        )


def test_call_tracking_pool_is_call_logic_only() -> None:
    record = json.loads(encode_json(make_event()))
    record["call_tracking_pool_id"] = "pool-9"
    with pytest.raises(CodecError, match="call_logic"):
        EventDecoder().decode(Platform.LMS, json.dumps(record).encode())


def test_schemaless_avro_needs_the_avro_input_format() -> None:
    value = encode_avro(make_event())
    with pytest.raises(CodecError, match="unrecognised encoding"):
        EventDecoder(InputFormat.AUTO).decode(Platform.LMS, value)


def test_wire_format_without_registry_is_a_clear_error() -> None:
    with pytest.raises(CodecError, match="no schema registry"):
        EventDecoder().decode(Platform.LMS, encode_wire(make_event(), 7))


def test_unknown_schema_id_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match="99"):
        EventDecoder(writer_schema=_lookup).decode(Platform.LMS, join_wire(99, b"\x02x"))


def test_truncated_and_padded_avro_are_rejected() -> None:
    value = encode_avro(make_event())
    decoder = EventDecoder(InputFormat.AVRO)
    with pytest.raises(CodecError):
        decoder.decode(Platform.LMS, value[:-3])
    with pytest.raises(CodecError, match="trailing"):
        decoder.decode(Platform.LMS, value + b"\x00\x00")


@pytest.mark.parametrize("value", [None, b"", b"[]", b"{", b'"x"', b"\xff\xfe{", b"{" * 100_000])
def test_garbage_is_a_codec_error(value: bytes | None) -> None:
    with pytest.raises(CodecError):
        EventDecoder(InputFormat.AVRO, writer_schema=_lookup).decode(Platform.LMS, value)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(list(Platform)), st.sampled_from(list(InputFormat)))
def test_arbitrary_bytes_never_raise_anything_but_codec_error(
    value: bytes, platform: Platform, input_format: InputFormat
) -> None:
    decoder = EventDecoder(input_format, writer_schema=_lookup)
    try:
        event = decoder.decode(platform, value)
    except CodecError:
        return
    assert event.platform is platform


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_behind_a_wire_header_never_escape(body: bytes) -> None:
    with contextlib.suppress(CodecError):
        EventDecoder(writer_schema=_lookup).decode(Platform.CALL_LOGIC, join_wire(8, body))


def _outcome() -> Outcome:
    return Outcome(
        created=datetime(2026, 11, 2, 8, 30, tzinfo=UTC),
        event_id="ev-1",
        rule_id="r-1",
        platform="lms",
        trigger="lead_sold",
        status=OutcomeStatus.FAILED,
        to=["Ops <ops@example.com>"],
        cc=["cc@example.com"],
        bcc=["audit@example.com"],
        subject="Lead sold",
        message_id="<abc@eventmail>",
        error="550 mailbox unavailable",
        smtp_code=550,
        attempts=3,
        latency_ms=1200,
        source=SourcePosition(topic="lms.events", partition=2, offset=41),
        connection="esp:default",
        empty_placeholders=["data.first_name"],
        warnings_enabled=True,
    )


def test_outcome_and_alert_round_trip() -> None:
    outcome = _outcome()
    assert decode_outcome(encode_outcome(outcome)) == outcome
    alert = Alert(
        created=datetime(2026, 11, 2, 9, tzinfo=UTC),
        rule_id="r-1",
        rule_name="High value",
        kind=AlertKind.FIRED,
        timeframe="1h",
        window_start=datetime(2026, 11, 2, 8, tzinfo=UTC),
        window_end=datetime(2026, 11, 2, 9, tzinfo=UTC),
        events=100,
        warnings=12,
        percent=12.0,
        threshold_percent=10.0,
        threshold_count=None,
        reason="12.0% of events are warnings (> 10%)",
        top_errors=[ErrorCount(error="550 mailbox unavailable", count=12)],
        recipients=["ops@example.com"],
        email_sent=True,
    )
    assert decode_alert(encode_alert(alert)) == alert


def test_outcome_decode_of_garbage_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        decode_outcome(b"\x01\x02\x03")
