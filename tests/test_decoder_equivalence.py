"""The fast event decoder (msgspec) against the reference decoder (``json.loads``/fastavro and pydantic,
``EventDecoder(fast=False)``): for arbitrary valid and invalid records, both give equal events (the
same field values, value types, reprs and set fields) or the same error, byte for byte (the DLQ
reason), whatever the encoding."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from consumer.avro import encode_schemaless, join_wire
from consumer.errors import CodecError
from consumer.events import fastpath
from consumer.events.codec import (
    SCHEMA_NAMES,
    EventDecoder,
    InputFormat,
    build_event,
    build_event_reference,
    encode_json,
)
from consumer.events.model import ID_FIELDS, Event
from consumer.events.triggers import CALL_LOGIC_TRIGGERS, LMS_TRIGGERS, Platform
from consumer.schemas import parsed_schema
from tests.factories import make_event

SCHEMA_IDS = {7: Platform.LMS, 8: Platform.CALL_LOGIC}


def _lookup(schema_id: int) -> object:
    if schema_id not in SCHEMA_IDS:
        raise CodecError(f"unknown schema id {schema_id}")
    return parsed_schema(SCHEMA_NAMES[SCHEMA_IDS[schema_id]])


FAST = {fmt: EventDecoder(fmt, writer_schema=_lookup) for fmt in InputFormat}
REFERENCE = {fmt: EventDecoder(fmt, writer_schema=_lookup, fast=False) for fmt in InputFormat}


def snapshot(event: Event) -> tuple[Any, ...]:
    """Everything observable of an event: class, each value with its type and repr, the set fields,
    the dumps (JSON and Python), the types inside ``data`` and the timestamp's tzinfo type."""
    return (
        type(event),
        [(name, type(value), repr(value)) for name, value in event.__dict__.items()],
        sorted(event.model_fields_set),
        event.__pydantic_extra__,
        event.__pydantic_private__,
        event.model_dump_json(),
        repr(event.wire_dict()),
        repr(event),
        [(type(k), type(v)) for k, v in event.data.items()],
        type(event.occurred_at.tzinfo),
        event.occurred_at.utcoffset(),
    )


def outcome(decode: Any, *args: Any) -> tuple[Any, ...]:
    try:
        event = decode(*args)
    except CodecError as exc:
        return ("error", str(exc), exc.field)
    except Exception as exc:  # nothing else may escape: recorded, so a difference shows
        return ("escaped", type(exc).__name__, str(exc))
    if isinstance(event, str):  # decode_scoped: the trigger of an event no rule can match
        return ("trigger", event)
    return ("event", snapshot(event))


# --- strategies -------------------------------------------------------------------------------------

ALL_TRIGGERS = sorted({*LMS_TRIGGERS, *CALL_LOGIC_TRIGGERS})
#: Any code point, lone surrogates included.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)
BOUNDARY_TEXT = st.sampled_from([0, 1, 8, 9, 63, 64, 65, 255, 256, 257, 4095, 4096, 4097]).map(
    lambda n: "é" * n
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | ANY_TEXT
    | st.sampled_from([10**400, -(10**400), 2**63, 2**64 + 1]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=8,
)
TEXT = st.one_of(st.text(max_size=12), ANY_TEXT, BOUNDARY_TEXT)
OPTIONAL_TEXT = st.one_of(st.none(), TEXT, TEXT, JSON_VALUES)
ZONES = st.sampled_from(
    [None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11, minutes=59))]
)
DATETIMES = st.builds(
    lambda at, zone: at.replace(tzinfo=zone),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    ZONES,
)
OCCURRED_AT = st.one_of(
    DATETIMES.map(lambda at: at.isoformat()),
    DATETIMES.map(lambda at: at.isoformat(sep=" ", timespec="milliseconds")),
    DATETIMES.map(lambda at: at.isoformat().replace("+00:00", "Z")),
    st.sampled_from(
        [
            "2026-11-01T10:00:00Z",
            "2026-11-01T10:00:00z",
            "2026-11-01t10:00:00Z",
            "2026-11-01",
            "2026-11-01T10:00",
            "2026-11-01T10:00:00.1234567Z",
            "2026-11-01T10:00:00.123456789+01:00",
            "2026-11-01T23:59:60Z",
            "2026-02-30T10:00:00Z",
            "2026-11-01T10:00:00+24:00",
            "2026-11-01T10:00:00-00:00",
            "20261101T100000Z",
            "yesterday",
            "",
            "1700000000",
        ]
    ),
    st.integers(min_value=-(10**13), max_value=10**13),
    st.floats(),
    JSON_VALUES,
)
PRICES = st.one_of(
    st.none(),
    st.floats(),
    st.integers(),
    st.sampled_from([0, -0.0, 10**400, 2**53 + 1, 1e308, 5e-324, "12.5", True]),
    JSON_VALUES,
)
DATA = st.one_of(
    st.dictionaries(TEXT, TEXT, max_size=4),
    st.dictionaries(TEXT, JSON_VALUES, max_size=3),
    st.sampled_from([510, 511, 512, 513]).map(lambda n: {f"k{i}": "v" for i in range(n)}),
    JSON_VALUES,
)


SHORT_ID = st.text(min_size=1, max_size=12)
ID = st.one_of(SHORT_ID, SHORT_ID, SHORT_ID, ANY_TEXT.filter(bool), BOUNDARY_TEXT.filter(bool))
OPTIONAL_ID = st.one_of(st.none(), ID)
#: Values the model accepts (mostly: a boundary length or a Call Logic pool on LMS is not).
VALID: dict[str, st.SearchStrategy[Any]] = {
    "event_id": ID,
    "occurred_at": st.one_of(
        DATETIMES.map(lambda at: at.isoformat()),
        DATETIMES.map(lambda at: at.isoformat().replace("+00:00", "Z")),
        st.integers(min_value=0, max_value=2**31),
    ),
    **dict.fromkeys(ID_FIELDS, OPTIONAL_ID),
    "call_tracking_pool_id": OPTIONAL_ID,
    "method": st.sampled_from([None, "POST", "FORM"]),
    "tracking_strategy": st.sampled_from([None, "direct_sold", "pingback"]),
    "price": st.one_of(
        st.none(), st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**70), 2**70)
    ),
    "currency": st.sampled_from([None, "USD", "EUR", "x", "ABCDEFGH"]),
    "data": st.dictionaries(ID, TEXT, max_size=4),
}
#: Values the model may well refuse.
JUNK: dict[str, st.SearchStrategy[Any]] = {
    "event_id": st.one_of(TEXT, JSON_VALUES),
    "trigger": st.one_of(TEXT, JSON_VALUES, st.sampled_from(ALL_TRIGGERS)),
    "occurred_at": OCCURRED_AT,
    **dict.fromkeys((*ID_FIELDS, "call_tracking_pool_id"), OPTIONAL_TEXT),
    "method": st.one_of(TEXT, JSON_VALUES),
    "tracking_strategy": st.one_of(TEXT, JSON_VALUES),
    "price": st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, 10**400, True, "1"]), PRICES),
    "currency": st.one_of(st.sampled_from(["", "ABCDEFGHI", 1, True, []]), OPTIONAL_TEXT),
    "data": DATA,
}
EXTRA = st.dictionaries(st.sampled_from(["platform", "surprise", "Event_id", ""]), JSON_VALUES, max_size=1)
REQUIRED = ("event_id", "trigger", "occurred_at")
TRIGGERS = {Platform.LMS: LMS_TRIGGERS, Platform.CALL_LOGIC: CALL_LOGIC_TRIGGERS}


@st.composite
def records(draw: st.DrawFn, platform: Platform) -> dict[str, Any]:
    """An event record of the platform: valid, or with a few faults (a junk value, a missing required
    field, an unknown key or ``platform``); optional fields present or not."""
    record: dict[str, Any] = {}
    for name in JUNK:
        if name in REQUIRED or draw(st.booleans()):
            valid = st.sampled_from(TRIGGERS[platform]) if name == "trigger" else VALID[name]
            record[name] = draw(valid)
    if platform is Platform.LMS and draw(st.integers(0, 3)):
        record.pop("call_tracking_pool_id", None)
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2]))):
        fault = draw(st.sampled_from(["junk", "junk", "junk", "missing", "extra"]))
        if fault == "junk":
            name = draw(st.sampled_from(sorted(JUNK)))
            record[name] = draw(JUNK[name])
        elif fault == "missing":
            record.pop(draw(st.sampled_from(REQUIRED)), None)
        else:
            record.update(draw(EXTRA))
    return record


@st.composite
def json_values(draw: st.DrawFn, platform: Platform) -> bytes:
    """The JSON text of a record, with what a producer may get wrong: duplicate keys, NaN, escapes or
    not, surrogates, stray bytes that are not UTF-8, truncation, leading and trailing junk."""
    record = draw(records(platform))
    text = json.dumps(record, ensure_ascii=draw(st.booleans()), allow_nan=True)
    if record and draw(st.integers(0, 4)) == 0:  # a duplicate key, before or after the first one
        name = draw(st.sampled_from(sorted(record)))
        twin = json.dumps({name: draw(st.one_of(VALID.get(name, JSON_VALUES), JSON_VALUES))}, allow_nan=True)
        twin = twin[1:-1]
        text = "{" + twin + "," + text[1:] if draw(st.booleans()) else text[:-1] + "," + twin + "}"
    value = text.encode("utf-8", "surrogatepass")
    mutation = draw(st.integers(0, 15))
    if mutation == 0 and value:  # a byte that is not UTF-8, or a byte flipped
        at = draw(st.integers(0, len(value) - 1))
        value = (
            value[:at]
            + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"}"]))
            + value[at:]
        )
    elif mutation == 1:
        value = value[: draw(st.integers(0, len(value)))]
    elif mutation == 2:
        value = (
            draw(st.sampled_from([b" ", b"\n\t", b"\xef\xbb\xbf"]))
            + value
            + draw(st.sampled_from([b"", b" ", b"x", b"{}", b"\x00"]))
        )
    return value


#: (the platform of the topic, a record mostly of that platform).
JSON_CASES = st.sampled_from(
    [(Platform.LMS, Platform.LMS), (Platform.CALL_LOGIC, Platform.CALL_LOGIC)] * 3
    + [(Platform.LMS, Platform.CALL_LOGIC), (Platform.CALL_LOGIC, Platform.LMS)]
).flatmap(lambda pair: st.tuples(st.just(pair[0]), json_values(pair[1])))
HEADERS = st.sampled_from([None, [("content-type", b"application/json")], [("Content-Type", "text/plain")]])


def _base(platform: Platform) -> bytes:
    return encode_json(make_event(platform, "lead_sold"))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON_CASES, st.sampled_from(list(InputFormat)), HEADERS)
@example((Platform.LMS, _base(Platform.LMS)), InputFormat.AUTO, None)
@example((Platform.CALL_LOGIC, _base(Platform.CALL_LOGIC)), InputFormat.JSON, None)
@example((Platform.LMS, _base(Platform.CALL_LOGIC)), InputFormat.AUTO, None)  # call_tracking_pool_id
@example(
    (
        Platform.LMS,
        b'{"event_id":"e","trigger":"lead_sold","occurred_at":"2026-11-01T10:00:00Z","price":NaN}',
    ),
    InputFormat.AUTO,
    None,
)
@example(
    (
        Platform.LMS,
        b'{"event_id":"e","trigger":"lead_sold","occurred_at":"2026-11-01T10:00:00Z","price":1e400}',
    ),
    InputFormat.AUTO,
    None,
)
@example(
    (Platform.LMS, b'{"event_id":"e","trigger":"lead_sold","occurred_at":1700000000,"price":-0}'),
    InputFormat.AUTO,
    None,
)
@example(
    (Platform.LMS, b'{"event_id":"e","event_id":"","trigger":"lead_sold","occurred_at":"2026-11-01"}'),
    InputFormat.AUTO,
    None,
)
@example(
    (Platform.LMS, b'{"event_id":"e","trigger":"lead_sold","occurred_at":"2026-11-01","currency":null}'),
    InputFormat.AUTO,
    None,
)
@example(
    (Platform.LMS, b'{"event_id":"e","trigger":"lead_sold","occurred_at":"2026-11-01","platform":"lms"}'),
    InputFormat.AUTO,
    None,
)
@example(
    (Platform.LMS, b'{"event_id":"\\ud800","trigger":"lead_sold","occurred_at":"2026-11-01"}'),
    InputFormat.AUTO,
    None,
)
@example((Platform.LMS, b"{" * 100_000), InputFormat.AUTO, None)
def test_json_records_decode_alike(
    case: tuple[Platform, bytes], input_format: InputFormat, headers: Any
) -> None:
    platform, value = case
    fast = outcome(FAST[input_format].decode, platform, value, headers)
    assert fast == outcome(REFERENCE[input_format].decode, platform, value, headers)
    event(f"{fast[0]}, fast path {'taken' if fastpath.decode_json(platform, value) else 'declined'}")


def _avro_record(draw: st.DrawFn, platform: Platform) -> dict[str, Any]:
    """A record of the shipped Avro schema's types, its values otherwise arbitrary (too long, unknown
    trigger, NaN price, a call_tracking_pool_id on LMS ...)."""
    texts = st.one_of(SHORT_ID, SHORT_ID, st.text(max_size=12), BOUNDARY_TEXT)  # UTF-8: no surrogates
    record: dict[str, Any] = {
        "event_id": draw(st.one_of(SHORT_ID, SHORT_ID, SHORT_ID, texts)),
        "trigger": draw(
            st.one_of(*[st.sampled_from(TRIGGERS[platform])] * 4, st.sampled_from(ALL_TRIGGERS), texts)
        ),
        "occurred_at": draw(
            st.datetimes(
                min_value=datetime(1970, 1, 2), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
            )
        ),
        "method": draw(st.sampled_from([None, "POST", "FORM"])),
        "tracking_strategy": draw(st.sampled_from([None, "direct_sold", "pingback"])),
        "price": draw(
            st.one_of(
                st.none(),
                st.floats(allow_nan=False, allow_infinity=False),
                st.sampled_from([math.nan, math.inf, -math.inf, -0.0]),
            )
        ),
        "currency": draw(
            st.one_of(st.none(), st.sampled_from(["USD", "EUR", "ABCDEFGH"]), st.just(""), texts)
        ),
        "data": draw(st.dictionaries(texts, texts, max_size=3)),
    }
    for name in ID_FIELDS:
        record[name] = draw(st.one_of(st.none(), texts))
    if platform is Platform.CALL_LOGIC:
        record["call_tracking_pool_id"] = draw(st.one_of(st.none(), texts))
    return record


@st.composite
def avro_cases(draw: st.DrawFn) -> tuple[Platform, bytes, bool]:
    platform = draw(st.sampled_from(list(Platform)))
    schema = parsed_schema(SCHEMA_NAMES[platform])
    body = encode_schemaless(_avro_record(draw, platform), schema)
    wire = draw(st.booleans())
    if draw(st.integers(0, 9)) == 0:
        body = body[: draw(st.integers(0, len(body)))]
    return platform, join_wire(7 if platform is Platform.LMS else 8, body) if wire else body, wire


@settings(max_examples=300, deadline=None)
@given(avro_cases())
def test_avro_and_wire_records_decode_alike(case: tuple[Platform, bytes, bool]) -> None:
    platform, value, _ = case
    fast = outcome(FAST[InputFormat.AVRO].decode, platform, value)
    assert fast == outcome(REFERENCE[InputFormat.AVRO].decode, platform, value)
    event(fast[0])


class Shade(StrEnum):
    RED = "red"


class Text(str):
    pass


PYTHON_VALUES = st.one_of(
    JSON_VALUES,
    st.sampled_from([b"bytes", bytearray(b"x"), Shade.RED, Text("sub"), datetime(2026, 1, 1), (1, 2), {"a"}]),
    DATETIMES,
)


@st.composite
def python_records(draw: st.DrawFn) -> dict[str, Any]:
    """A record built in Python (a retry record's event, a rule test): any value of any type."""
    record = draw(records(draw(st.sampled_from(list(Platform)))))
    for name in draw(st.lists(st.sampled_from(sorted(JUNK)), max_size=2)):
        record[name] = draw(PYTHON_VALUES)
    if draw(st.booleans()) and isinstance(record.get("data"), dict):
        record["data"] = {**record["data"], draw(st.sampled_from(["k", Text("k")])): draw(PYTHON_VALUES)}
    return record


BOUNDARY_RECORD = {"event_id": "e", "trigger": "lead_sold", "occurred_at": "2026-11-01T10:00:00Z"}


@settings(max_examples=500, deadline=None)
@given(python_records(), st.sampled_from(list(Platform)))
@example({**BOUNDARY_RECORD, "price": math.nan}, Platform.LMS)
@example({**BOUNDARY_RECORD, "price": -math.inf}, Platform.LMS)
@example({**BOUNDARY_RECORD, "currency": ""}, Platform.LMS)
@example({**BOUNDARY_RECORD, "currency": "ABCDEFGHI"}, Platform.LMS)
@example({**BOUNDARY_RECORD, "event_id": "x" * 256}, Platform.LMS)
@example({**BOUNDARY_RECORD, "event_id": "x" * 257}, Platform.LMS)
@example({**BOUNDARY_RECORD, "trigger": "x" * 65}, Platform.LMS)
@example({**BOUNDARY_RECORD, "lead_id": "x" * 4097}, Platform.LMS)
@example({**BOUNDARY_RECORD, "data": {"x" * 4097: "v"}}, Platform.LMS)
@example({**BOUNDARY_RECORD, "data": {"k": "x" * 4097}}, Platform.LMS)
@example({**BOUNDARY_RECORD, "data": {f"k{i}": "v" for i in range(513)}}, Platform.LMS)
@example({**BOUNDARY_RECORD, "call_tracking_pool_id": "pool"}, Platform.LMS)
@example({**BOUNDARY_RECORD, "method": "GET"}, Platform.LMS)
@example({**BOUNDARY_RECORD, "tracking_strategy": "direct"}, Platform.LMS)
def test_records_built_in_python_validate_alike(record: dict[str, Any], platform: Platform) -> None:
    fast = outcome(build_event, platform, record)
    assert fast == outcome(build_event_reference, platform, record)
    event(f"{fast[0]}, fast path {'taken' if fastpath.from_record(platform, record) else 'declined'}")


def test_the_benchmark_record_takes_the_fast_path_and_equals_the_reference() -> None:
    """The usual record is decoded by the fast path (not only by the fallback) and equals the
    reference event, set fields included."""
    value = encode_json(make_event(Platform.CALL_LOGIC, "amd", price=3))
    event = fastpath.decode_json(Platform.CALL_LOGIC, value)
    assert event is not None
    reference = REFERENCE[InputFormat.AUTO].decode(Platform.CALL_LOGIC, value)
    assert snapshot(event) == snapshot(reference)
    assert event == reference
    minimal = b'{"event_id":"e","trigger":"amd","occurred_at":"2026-11-01T10:00:00+01:00"}'
    event = fastpath.decode_json(Platform.CALL_LOGIC, minimal)
    assert event is not None
    assert snapshot(event) == snapshot(REFERENCE[InputFormat.AUTO].decode(Platform.CALL_LOGIC, minimal))
    assert event.model_fields_set == {"platform", "event_id", "trigger", "occurred_at"}


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON_CASES, st.sampled_from(list(InputFormat)), HEADERS, st.booleans())
@example((Platform.LMS, _base(Platform.LMS)), InputFormat.AUTO, None, False)
@example((Platform.CALL_LOGIC, _base(Platform.CALL_LOGIC)), InputFormat.JSON, None, True)
@example((Platform.LMS, _base(Platform.CALL_LOGIC)), InputFormat.AUTO, None, False)  # call_tracking_pool_id
@example(
    (Platform.LMS, b'{"event_id":"e","trigger":"lead_sold","occurred_at":"x"}'), InputFormat.AUTO, None, False
)
def test_scoped_decoding_cuts_short_only_valid_events_outside_every_scope(
    case: tuple[Platform, bytes], input_format: InputFormat, headers: Any, in_scope: bool
) -> None:
    """``decode_scoped`` gives the reference path's error for every invalid record (never asking
    about its scope), the reference event when a rule may match it, and, for a valid event no rule
    can match, its trigger: asked with the reference event's own platform, trigger, product and
    campaign."""
    platform, value = case
    asked: list[tuple[Any, ...]] = []

    def scope(*args: Any) -> bool:
        asked.append(args)
        return in_scope

    reference = outcome(REFERENCE[input_format].decode, platform, value, headers)
    scoped = outcome(lambda *args: FAST[input_format].decode_scoped(*args, scope), platform, value, headers)
    if reference[0] != "event":
        assert scoped == reference
        assert asked == []
        event("error")
        return
    expected = REFERENCE[input_format].decode(platform, value, headers)
    assert asked in ([], [(platform, expected.trigger, expected.product_id, expected.campaign_id)])
    if scoped[0] == "trigger":
        assert not in_scope
        assert asked
        assert scoped[1] == expected.trigger
    else:
        assert scoped == reference
        assert in_scope or not asked  # built when in scope, or when the fast path declined the record
    event(scoped[0])


def test_scoped_decoding_of_the_usual_record() -> None:
    """The usual record is cut short when no rule can match it and built in full when one may."""
    value = encode_json(make_event(Platform.LMS, "lead_sold", product_id="p-1", campaign_id="c-1"))
    asked: list[tuple[Any, ...]] = []
    assert FAST[InputFormat.AUTO].decode_scoped(Platform.LMS, value, None, lambda *a: asked.append(a)) == (
        "lead_sold"
    )
    assert asked == [(Platform.LMS, "lead_sold", "p-1", "c-1")]
    built = FAST[InputFormat.AUTO].decode_scoped(Platform.LMS, value, None, lambda *a: True)
    assert isinstance(built, Event)
    assert snapshot(built) == snapshot(REFERENCE[InputFormat.AUTO].decode(Platform.LMS, value))
