"""Schemaless Avro and the Confluent wire format (magic byte 0 + 4-byte schema id + Avro body).

Every failure, whatever fastavro raised, becomes a :class:`CodecError`: arbitrary bytes must never
take the consumer down with an unexpected exception type.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import fastavro

from consumer.errors import CodecError
from consumer.schemas import parsed_schema

MAGIC = 0
WIRE_HEADER = struct.Struct(">bI")


def is_confluent_wire(value: bytes) -> bool:
    return len(value) > WIRE_HEADER.size and value[0] == MAGIC


def split_wire(value: bytes) -> tuple[int, bytes]:
    """(schema id, Avro body) of a Confluent wire-format record."""
    if not is_confluent_wire(value):
        raise CodecError("not in Confluent wire format (magic byte 0 + schema id)")
    _, schema_id = WIRE_HEADER.unpack_from(value)
    return schema_id, value[WIRE_HEADER.size :]


def join_wire(schema_id: int, body: bytes) -> bytes:
    return WIRE_HEADER.pack(MAGIC, schema_id) + body


def decode_schemaless(body: bytes, writer: Any, reader: Any | None = None) -> dict[str, Any]:
    """Decode one Avro datum; trailing bytes mean the record was not written with this schema."""
    buffer = io.BytesIO(body)
    try:
        record = fastavro.schemaless_reader(buffer, writer, reader)
    except CodecError:
        raise
    except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError ... on bad input
        raise CodecError(f"invalid Avro: {type(exc).__name__}: {exc}") from None
    if buffer.tell() != len(body):
        raise CodecError(f"invalid Avro: {len(body) - buffer.tell()} unread trailing bytes")
    if not isinstance(record, dict):
        raise CodecError("invalid Avro: not a record")
    return record


def encode_schemaless(record: dict[str, Any], schema: Any) -> bytes:
    buffer = io.BytesIO()
    try:
        fastavro.schemaless_writer(buffer, schema, record)
    except Exception as exc:
        raise CodecError(f"cannot encode as Avro: {exc}") from None
    return buffer.getvalue()


class AvroRecordCodec:
    """Schemaless Avro with one of the shipped schemas (outcomes, alerts).

    Records are written with the current schema. Fields are only ever appended, nullable with a
    default, and each earlier version stays in ``schemas/`` (``older``, newest first): a record that
    does not decode with the current schema (an older, shorter one) is read with the earlier writer
    schemas in turn, resolved to the current one, so the new fields come out as their defaults.
    """

    def __init__(self, schema_name: str, older: tuple[str, ...] = ()) -> None:
        self.schema = parsed_schema(schema_name)
        self._older = tuple(parsed_schema(name) for name in older)

    def encode(self, record: dict[str, Any]) -> bytes:
        return encode_schemaless(record, self.schema)

    def decode(self, body: bytes) -> dict[str, Any]:
        try:
            return decode_schemaless(body, self.schema)
        except CodecError as current:
            for writer in self._older:
                try:
                    return decode_schemaless(body, writer, self.schema)
                except CodecError:
                    continue
            raise current from None
