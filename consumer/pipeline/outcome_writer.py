"""The outcome writer: every delivery's outcome reaches the outcomes topic before its source record
counts as done, and an outcome the broker refuses is never given up on.

An outcome is the only record that a mail was sent: were the service to stop when one cannot be
written, the next start would send that mail again, and again after each restart. So a refused
outcome (the topic missing, not authorised, refusing the record's size ...) is written again with
a growing delay (up to :data:`MAX_BACKOFF_SECONDS`) while its record stays uncommitted, and no new
delivery starts meanwhile (:meth:`OutcomeWriter.wait_writable`): the consumer stops taking new work
(its in-flight bound fills) instead of mailing without a record. A fatal producer error (the
idempotent producer lost its guarantees) is handled by the producer, which replaces its instance and
produces the outcome again (:mod:`consumer.pipeline.producer`); only a closed producer, or a fatal
error that reaches this writer all the same, is raised.

Each outcome carries the header ``eventmail.source`` (``topic:partition:offset`` of its source
record), so the read-back after an assignment (:mod:`consumer.pipeline.dedup`) skips the outcomes
of other partitions without decoding them.
"""

from __future__ import annotations

import asyncio
import logging
import time

from confluent_kafka import KafkaError, KafkaException

from consumer.observability.metrics import OUTCOMES_WRITTEN, child
from consumer.outcomes.codec import encode_outcome
from consumer.outcomes.model import Outcome, SourcePosition
from consumer.pipeline.producer import AsyncProducer

log = logging.getLogger(__name__)

FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
#: The header naming an outcome's source record.
SOURCE_HEADER = "eventmail.source"


def source_header(source: SourcePosition | None) -> list[tuple[str, bytes]]:
    if source is None:
        return []
    return [(SOURCE_HEADER, f"{source.topic}:{source.partition}:{source.offset}".encode())]


def parse_source_header(value: bytes) -> tuple[str, int, int] | None:
    """(topic, partition, offset) of an ``eventmail.source`` header value, None if malformed."""
    try:
        topic, partition, offset = value.decode().rsplit(":", 2)
        return topic, int(partition), int(offset)
    except (UnicodeDecodeError, ValueError):
        return None


class OutcomeWriter:
    def __init__(
        self,
        producer: AsyncProducer,
        topic: str,
        first_backoff: float = FIRST_BACKOFF_SECONDS,
        max_backoff: float = MAX_BACKOFF_SECONDS,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self._writable = asyncio.Event()
        self._writable.set()
        self._blocked_since: float | None = None
        self._refusals = 0

    @property
    def writable(self) -> bool:
        return self._writable.is_set()

    async def wait_writable(self) -> None:
        """Return once the last outcome written was acknowledged (at once while nothing is refused)."""
        if not self._writable.is_set():
            await self._writable.wait()

    async def write(self, outcome: Outcome) -> None:
        """Write ``outcome`` and wait for its acknowledgement, however long the broker refuses it."""
        value = encode_outcome(outcome)
        key = outcome.rule_id.encode()
        headers = source_header(outcome.source)
        delay = self.first_backoff
        while True:
            try:
                await self.producer.send(self.topic, value, key=key, headers=headers)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.fatal():
                    raise
                self._refused(outcome, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            break
        child(OUTCOMES_WRITTEN, outcome.status.value).inc()
        if not self._writable.is_set():
            blocked = time.monotonic() - (self._blocked_since or time.monotonic())
            log.warning(
                "outcomes are written again; deliveries go on",
                extra={"blocked_seconds": round(blocked, 1), "refusals": self._refusals},
            )
            self._blocked_since, self._refusals = None, 0
            self._writable.set()

    def _refused(self, outcome: Outcome, exc: KafkaException, delay: float) -> None:
        self._refusals += 1
        if self._writable.is_set():
            self._writable.clear()
            self._blocked_since = time.monotonic()
        details = {
            "topic": self.topic,
            "error": str(exc)[:300],
            "event_id": outcome.event_id,
            "rule_id": outcome.rule_id,
            "refusals": self._refusals,
            "next_attempt_seconds": delay,
        }
        if self._refusals == 1:
            log.error(
                "outcome refused by the broker; no new delivery starts until it is written", extra=details
            )
        else:  # each retry, at info level: warnings and errors that repeat are held back by the log filter
            log.info("outcome still refused by the broker", extra=details)
