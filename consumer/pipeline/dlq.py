"""The dead-letter writer: a record that cannot be decoded or validated goes to the DLQ topic with
the reason, and the DLQ record always fits under the producer's size limit, whatever the original
carried (a huge key, a huge value, or mostly headers).

Budget, in this order: our own headers (``eventmail.error``, ``eventmail.source``) always; the key
cut at :data:`DLQ_MAX_KEY_BYTES`; the original headers in their order while they fit in
:data:`DLQ_MAX_HEADER_BYTES` (the ones that do not are dropped and counted in
``eventmail.headers_dropped``); then as much of the value as the rest of the record's room allows
(``eventmail.truncated_from`` gives its original length). Should the broker still refuse the record
as too large (a DLQ topic with a smaller ``max.message.bytes``), it is written again with its
original headers dropped and its value cut to :data:`DLQ_FALLBACK_VALUE_BYTES`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message

from consumer.observability.metrics import DLQ_RECORDS
from consumer.pipeline.offsets import position
from consumer.pipeline.producer import AsyncProducer

log = logging.getLogger(__name__)

#: A DLQ record (key, value and headers) stays under this size: the producer's default limit is
#: 1,000,000 bytes, and a record the consumer refused for its size must still reach the DLQ.
DLQ_MAX_RECORD_BYTES = 990_000
DLQ_MAX_KEY_BYTES = 10_000
#: Room for the original record's headers (names and values).
DLQ_MAX_HEADER_BYTES = 100_000
#: The value kept when the broker refused the fitted record for its size.
DLQ_FALLBACK_VALUE_BYTES = 10_000
#: Framing counted per record and per header (Kafka's varints and attributes, counted generously).
RECORD_FRAMING_BYTES = 64
HEADER_FRAMING_BYTES = 8

Header = tuple[str, bytes]


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: list[Header]

    def size(self) -> int:
        """The record's size as :func:`fit` counts it (an upper bound of what Kafka counts)."""
        body = len(self.key or b"") + len(self.value or b"")
        return RECORD_FRAMING_BYTES + body + _headers_size(self.headers)


def fit(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | str | None]],
    error: str,
    source: str,
    max_bytes: int = DLQ_MAX_RECORD_BYTES,
    max_header_bytes: int = DLQ_MAX_HEADER_BYTES,
) -> DeadLetter:
    """The DLQ record of an original record (``key``, ``value``, ``headers``) refused with ``error``."""
    ours: list[Header] = [("eventmail.error", error[:1000].encode()), ("eventmail.source", source.encode())]
    if key is not None and len(key) > DLQ_MAX_KEY_BYTES:
        ours.append(("eventmail.key_truncated_from", str(len(key)).encode()))
        key = key[:DLQ_MAX_KEY_BYTES]
    kept: list[Header] = []
    room = max_header_bytes
    dropped = dropped_bytes = 0
    for name, raw in headers:
        if raw is None or name.startswith("eventmail."):
            continue
        data = raw.encode() if isinstance(raw, str) else bytes(raw)
        size = len(name.encode()) + len(data) + HEADER_FRAMING_BYTES
        if size > room:
            dropped += 1
            dropped_bytes += size
            continue
        room -= size
        kept.append((name, data))
    if dropped:
        ours.append(("eventmail.headers_dropped", f"{dropped} ({dropped_bytes} bytes)".encode()))
    all_headers = kept + ours
    if value is not None:
        # The length of a truncated_from header is counted before we know we need it.
        marker = ("eventmail.truncated_from", str(len(value)).encode())
        fixed = RECORD_FRAMING_BYTES + len(key or b"") + _headers_size(all_headers)
        if fixed + len(value) > max_bytes:
            all_headers.append(marker)
            value = value[: max(0, max_bytes - fixed - _headers_size([marker]))]
    return DeadLetter(key, value, all_headers)


def _headers_size(headers: Sequence[Header]) -> int:
    return sum(len(k.encode()) + len(v) + HEADER_FRAMING_BYTES for k, v in headers)


def headers_of(msg: Message) -> list[tuple[str, bytes | str | None]]:
    raw = msg.headers()
    if raw is None:
        return []
    if isinstance(raw, dict):
        return list(raw.items())
    return list(raw)


class DeadLetterWriter:
    def __init__(self, producer: AsyncProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    async def write(self, msg: Message, error: str) -> None:
        topic, partition, offset = position(msg)
        where = f"{topic}:{partition}:{offset}"
        record = fit(msg.key(), msg.value(), headers_of(msg), error, where)
        try:
            await self.producer.send(self.topic, record.value, key=record.key, headers=record.headers)
        except KafkaException as exc:
            if not _too_large(exc):
                raise
            smaller = fit(
                msg.key(),
                msg.value(),
                [],
                error,
                where,
                max_bytes=RECORD_FRAMING_BYTES + DLQ_MAX_KEY_BYTES + 2_000 + DLQ_FALLBACK_VALUE_BYTES,
            )
            log.warning(
                "DLQ record refused for its size; written again without the original headers",
                extra={"source": where, "error": str(exc)[:300]},
            )
            await self.producer.send(self.topic, smaller.value, key=smaller.key, headers=smaller.headers)
        DLQ_RECORDS.labels(source=topic).inc()
        log.warning("record sent to the DLQ", extra={"error": error[:300], "source": where})


def _too_large(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and error.code() == KafkaError.MSG_SIZE_TOO_LARGE
