"""Outcome records to :class:`Observation` (the few fields the aggregator needs), fast.

The aggregator reads up to six hours of outcomes on every start, so it decodes with fastavro and the
shipped schema (``created`` read as plain epoch milliseconds) and skips building the full pydantic
model. Bytes that are not an outcome raise :class:`CodecError`; this module never drops or guesses.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from consumer.aggregator.state import Observation
from consumer.avro import decode_schemaless
from consumer.errors import CodecError
from consumer.outcomes.model import Alert
from consumer.schemas import raw_schema


@cache
def _outcome_schema() -> Any:
    import fastavro

    raw = copy.deepcopy(raw_schema("outcome"))
    for field in raw["fields"]:
        if field["name"] == "created":
            field["type"] = "long"
    return fastavro.parse_schema(raw)


def decode_observation(value: bytes | None, max_created_ms: int | None = None) -> Observation:
    """The observation of an outcome record; ``created`` capped at ``max_created_ms`` when given (an
    outcome cannot have been created after its record was written, give or take clock skew)."""
    if not value:
        raise CodecError("empty outcome record")
    record = decode_schemaless(value, _outcome_schema())
    try:
        created = int(record["created"])
        status = record["status"]
        source = record.get("source") if status == "config_error" else None
        return Observation(
            rule_id=record["rule_id"],
            created_ms=created if max_created_ms is None else min(created, max_created_ms),
            status=status,
            error=record.get("error"),
            smtp_code=record.get("smtp_code"),
            warnings_enabled=bool(record.get("warnings_enabled", False)),
            source=None
            if not source
            else (str(source["topic"]), int(source["partition"]), int(source["offset"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError(f"not an outcome: {exc}") from None


def to_ms(alert: Alert) -> int:
    """The event time of an alert decision, in epoch milliseconds."""
    return round(alert.created.timestamp() * 1000)
