"""Decoding event records, whatever their encoding (detected per record), into :class:`Event`.

Detection order, per the contract: Confluent wire format (magic byte 0 + schema id; the writer
schema comes from the Schema Registry), JSON (``content-type: application/json`` header or a leading
``{``), then schemaless Avro with the shipped schema when the input format is ``avro``. Anything else
raises :class:`CodecError`, which the pipeline turns into a DLQ record. Nothing else may escape.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from consumer.avro import decode_schemaless, encode_schemaless, is_confluent_wire, join_wire, split_wire
from consumer.errors import CodecError, describe_validation
from consumer.events import fastpath
from consumer.events.model import Event
from consumer.events.triggers import Platform
from consumer.schemas import parsed_schema

#: A record's headers as the Kafka client gives them: pairs (or a mapping), or None.
Headers = Sequence[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None] | None
#: Resolves a schema id to the parsed writer schema (the Schema Registry, cached).
WriterSchemaLookup = Callable[[int], Any]

SCHEMA_NAMES: dict[Platform, str] = {Platform.LMS: "lms_event", Platform.CALL_LOGIC: "call_logic_event"}
MAX_RECORD_BYTES = 1_000_000


class SchemaFetchNeeded(Exception):
    """Raised by ``decode(..., fetch=False)``: the record's writer schema is not cached; fetch it
    (e.g. off the event loop) and decode again with ``writer=``."""

    def __init__(self, schema_id: int) -> None:
        super().__init__(f"schema id {schema_id} is not cached")
        self.schema_id = schema_id


class InputFormat(StrEnum):
    AUTO = "auto"  # Confluent wire format or JSON
    JSON = "json"
    AVRO = "avro"  # additionally: schemaless Avro with the shipped schema


def _content_type(headers: Headers) -> str | None:
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for key, value in pairs:
        if key.lower() == "content-type" and value is not None:
            return value.decode("latin-1") if isinstance(value, bytes) else value
    return None


def _looks_like_json(value: bytes) -> bool:
    return value.lstrip(b" \t\r\n")[:1] == b"{"


class EventDecoder:
    """Turns record values into events. Thread-compatible; holds only caches.

    Each record is decoded by the fast path (msgspec, :mod:`consumer.events.fastpath`) first; a record
    it does not accept goes through the reference path (``json.loads``/fastavro and pydantic), which
    gives the event or the error, so errors (the DLQ reasons) are the reference path's by construction.
    ``fast=False`` runs the reference path alone (the equivalence tests compare the two).
    """

    def __init__(
        self,
        input_format: InputFormat = InputFormat.AUTO,
        writer_schema: WriterSchemaLookup | None = None,
        *,
        fast: bool = True,
    ) -> None:
        self.input_format = input_format
        self._writer_schema = writer_schema
        self._build = build_event if fast else build_event_reference
        self._json = _decode_json if fast else decode_json_reference

    @property
    def writer_schema(self) -> WriterSchemaLookup | None:
        """The writer-schema lookup of the Confluent wire format (None: no registry)."""
        return self._writer_schema

    def decode(
        self,
        platform: Platform,
        value: bytes | None,
        headers: Headers = None,
        *,
        fetch: bool = True,
        writer: Any = None,
    ) -> Event:
        """The event of a record value. For the Confluent wire format, ``writer`` is the writer
        schema when the caller fetched it already; with ``fetch=False`` a schema that is not cached
        raises :class:`SchemaFetchNeeded` instead of asking the registry from this thread."""
        if value is None:
            raise CodecError("empty record (null value)")
        if len(value) > MAX_RECORD_BYTES:
            raise CodecError(f"record of {len(value)} bytes exceeds {MAX_RECORD_BYTES}")
        if headers:
            content_type = _content_type(headers)
            if content_type is not None and "json" in content_type.lower():
                return self._json(platform, value)
        if value[:1] == b"{":  # the usual JSON record (a Confluent wire record starts with byte 0)
            return self._json(platform, value)
        if is_confluent_wire(value):
            return self._from_wire(platform, value, fetch, writer)
        if _looks_like_json(value):
            return self._json(platform, value)
        if self.input_format is InputFormat.AVRO:
            record = decode_schemaless(value, parsed_schema(SCHEMA_NAMES[platform]))
            return self._build(platform, record)
        raise CodecError(
            "unrecognised encoding: neither JSON nor Confluent wire format"
            + ("" if self.input_format is InputFormat.AUTO else f" (input format {self.input_format.value})")
        )

    def decode_scoped(
        self, platform: Platform, value: bytes | None, headers: Headers, in_scope: fastpath.ScopeTest
    ) -> Event | str:
        """As ``decode(..., fetch=False)``, except that a valid JSON record whose event no rule can
        match (``in_scope`` false for its platform, trigger, product and campaign) may come back as its
        trigger alone, the event not built: the fast path checks the whole record before it asks, so a
        record that is not a valid event still raises its error (the DLQ reason). Every other record
        (Avro, the wire format, what the fast path declines) is decoded in full, as by ``decode``."""
        if (
            self._json is _decode_json
            and value is not None
            and value[:1] == b"{"  # decode() reads such a record as JSON, whatever its headers
            and len(value) <= MAX_RECORD_BYTES
        ):
            found = fastpath.decode_json_scoped(platform, value, in_scope)
            return decode_json_reference(platform, value) if found is None else found
        return self.decode(platform, value, headers, fetch=False)

    def _from_wire(self, platform: Platform, value: bytes, fetch: bool, writer: Any) -> Event:
        schema_id, body = split_wire(value)
        if self._writer_schema is None:
            raise CodecError(f"Confluent wire format (schema id {schema_id}) but no schema registry is set")
        if writer is None and not fetch:
            cached = getattr(self._writer_schema, "cached", None)
            if cached is not None:
                writer = cached(schema_id)
                if writer is None:
                    raise SchemaFetchNeeded(schema_id)
        if writer is None:
            try:
                writer = self._writer_schema(schema_id)
            except CodecError:
                raise
            except Exception as exc:
                raise CodecError(f"schema id {schema_id}: cannot fetch from the registry: {exc}") from None
        record = decode_schemaless(body, writer, parsed_schema(SCHEMA_NAMES[platform]))
        return self._build(platform, record)


def _decode_json(platform: Platform, value: bytes) -> Event:
    event = fastpath.decode_json(platform, value)
    if event is not None:
        return event
    return decode_json_reference(platform, value)


def decode_json_reference(platform: Platform, value: bytes) -> Event:
    """The reference path of a JSON record value (``json.loads`` and pydantic): the fast path's
    fallback, whose errors are the DLQ reasons."""
    try:
        record = json.loads(value)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CodecError(f"invalid JSON: {exc}") from None
    if not isinstance(record, dict):
        raise CodecError(f"JSON event must be an object, not {type(record).__name__}")
    return build_event_reference(platform, record)


def build_event(platform: Platform, record: dict[str, Any]) -> Event:
    """Validate a decoded record into an :class:`Event`; errors name the field."""
    event = fastpath.from_record(platform, record)
    if event is not None:
        return event
    return build_event_reference(platform, record)


def build_event_reference(platform: Platform, record: dict[str, Any]) -> Event:
    """The reference path of :func:`build_event` (pydantic): the fast path's fallback."""
    if "platform" in record:
        raise CodecError("not an event field (the platform comes from the topic)", field="platform")
    try:
        return Event.model_validate({**record, "platform": platform})
    except ValidationError as exc:
        field, message = describe_validation(exc)
        raise CodecError(message, field=field or None) from None
    except RecursionError:
        raise CodecError("record nested too deeply") from None


# --- encoders, used by the demo, the benchmarks and the tests (producers of the platform) --------------


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode_json(event: Event) -> bytes:
    return json.dumps(event.wire_dict(), default=_json_default, separators=(",", ":")).encode()


def encode_avro(event: Event) -> bytes:
    """Schemaless Avro with the shipped schema of the event's platform."""
    return encode_schemaless(event.wire_dict(), parsed_schema(SCHEMA_NAMES[event.platform]))


def encode_wire(event: Event, schema_id: int) -> bytes:
    """Confluent wire format: the shipped schema must be the one registered under ``schema_id``."""
    return join_wire(schema_id, encode_avro(event))
