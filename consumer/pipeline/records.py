"""Processing of single records, on the asyncio side: events (decode -> match -> deliver each rule)
and retry records (wait until due -> deliver again). Bad input goes to the DLQ, never up the stack.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from confluent_kafka import Message

from consumer.errors import CodecError
from consumer.events.codec import EventDecoder
from consumer.events.model import Event
from consumer.events.registry import RegistryUnavailableError
from consumer.events.triggers import Platform
from consumer.observability.metrics import (
    BILLABLE_EVENTS,
    DECODE_FAILURES,
    DLQ_RECORDS,
    DUPLICATES_SKIPPED,
    END_TO_END_SECONDS,
    EVENTS_CONSUMED,
    MAILS_FAILED,
    MAILS_IN_FLIGHT,
    MAILS_RETRIED,
    MAILS_SENT,
    OUTCOMES_WRITTEN,
    RULES_MATCHED,
)
from consumer.outcomes.codec import encode_outcome
from consumer.outcomes.model import Outcome, OutcomeStatus, SourcePosition
from consumer.pipeline.handoff import RetryHandoff
from consumer.pipeline.offsets import position
from consumer.pipeline.producer import AsyncProducer
from consumer.pipeline.result import DeliveryResult, Verdict
from consumer.pipeline.retry import RetryRecord, schedule
from consumer.settings import Settings

log = logging.getLogger(__name__)
#: A DLQ record (key, value and headers) stays under this size: the producer's default limit is
#: 1,000,000 bytes, and a record the consumer refused for its size must still reach the DLQ.
DLQ_MAX_RECORD_BYTES = 990_000
DLQ_MAX_KEY_BYTES = 10_000


class MatchedRule(Protocol):
    """What the pipeline needs of a compiled rule."""

    @property
    def rule_id(self) -> str: ...

    @property
    def warnings_enabled(self) -> bool: ...


class Rules(Protocol):
    def match(self, event: Event) -> Sequence[Any]: ...

    def get(self, rule_id: str) -> Any | None: ...


class Deliverer(Protocol):
    async def deliver(self, event: Event, rule: Any, attempts_before: int) -> DeliveryResult: ...


class RecordProcessor:
    def __init__(
        self,
        settings: Settings,
        decoder: EventDecoder,
        rules: Callable[[], Rules],
        deliverer: Deliverer,
        producer: AsyncProducer,
        handoff: RetryHandoff,
        already_delivered: Callable[[tuple[str, int], int], set[str]],
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.platforms = {settings.topics.lms: Platform.LMS, settings.topics.call_logic: Platform.CALL_LOGIC}
        self.decoder = decoder
        self.rules = rules
        self.deliverer = deliverer
        self.producer = producer
        self.handoff = handoff
        self.already_delivered = already_delivered
        self.mail_slots = asyncio.Semaphore(settings.pipeline.max_in_flight)
        self._consumed: dict[tuple[Platform, str], Any] = {}

    # --- events ---------------------------------------------------------------------------------------
    def start_event(self, msg: Message, topic: str) -> Coroutine[Any, Any, None] | None:
        """Decode and match an event record (of ``topic``) synchronously: None when that is all it
        needs (no rule matched), else the coroutine that finishes it (deliveries, the DLQ, or decoding
        again later while the Schema Registry is unavailable). Same effects as :meth:`process_event`,
        without a task for the records that match nothing."""
        platform = self.platforms[topic]
        try:
            event = self.decoder.decode(platform, msg.value(), _headers(msg))
        except RegistryUnavailableError as exc:
            return self._process_decoded(msg, platform, self._decode_later(platform, msg, exc))
        except CodecError as exc:
            return self._rejected(msg, platform, exc)
        matched = self._match(platform, event)
        if not matched:
            return None
        return self._deliver_matched(msg, event, matched)

    async def process_event(self, msg: Message) -> None:
        topic, _, _ = position(msg)
        platform = self.platforms[topic]
        await self._process_decoded(msg, platform, self._decode(platform, msg))

    async def _process_decoded(
        self, msg: Message, platform: Platform, decoding: Coroutine[Any, Any, Event]
    ) -> None:
        try:
            event = await decoding
        except CodecError as exc:
            await self._rejected(msg, platform, exc)
            return
        matched = self._match(platform, event)
        if matched:
            await self._deliver_matched(msg, event, matched)

    def _match(self, platform: Platform, event: Event) -> Sequence[Any]:
        """The rules the event triggers, counted in the consumed and matched metrics."""
        key = (platform, event.trigger)
        consumed = self._consumed.get(key)
        if consumed is None:  # label children are looked up once per (platform, trigger): a bounded set
            consumed = self._consumed[key] = EVENTS_CONSUMED.labels(platform=platform.value, trigger=key[1])
        consumed.inc()
        matched = self.rules().match(event)
        if matched:
            RULES_MATCHED.labels(platform=platform.value, trigger=key[1]).inc(len(matched))
        return matched

    async def _rejected(self, msg: Message, platform: Platform, exc: CodecError) -> None:
        DECODE_FAILURES.labels(platform=platform.value).inc()
        await self.dead_letter(msg, str(exc))

    async def _deliver_matched(self, msg: Message, event: Event, matched: Sequence[Any]) -> None:
        topic, partition, offset = position(msg)
        origin = SourcePosition(topic=topic, partition=partition, offset=offset)
        done = self.already_delivered((topic, partition), offset)
        work: list[Awaitable[None]] = []
        for rule in matched:
            if rule.rule_id in done:
                DUPLICATES_SKIPPED.inc()
                log.info(
                    "already delivered, skipped", extra={"event_id": event.event_id, "rule_id": rule.rule_id}
                )
                continue
            work.append(self.deliver(event, rule, origin, attempts_before=0, first_failed_at=None))
        await asyncio.gather(*work)

    async def _decode(self, platform: Platform, msg: Message) -> Event:
        """Decode; while the Schema Registry is unreachable, wait and try again (backpressure: the
        partition's commits stop here) instead of sending good records to the DLQ."""
        try:
            return self.decoder.decode(platform, msg.value(), _headers(msg))
        except RegistryUnavailableError as exc:
            return await self._decode_later(platform, msg, exc)

    async def _decode_later(self, platform: Platform, msg: Message, error: RegistryUnavailableError) -> Event:
        """The retries of :meth:`_decode` after its first attempt failed with ``error``."""
        delay = 0.5
        while True:
            log.warning("schema registry unavailable; retrying", extra={"error": str(error)[:300]})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            try:
                return self.decoder.decode(platform, msg.value(), _headers(msg))
            except RegistryUnavailableError as exc:
                error = exc

    # --- retries --------------------------------------------------------------------------------------
    async def process_retry(self, msg: Message) -> None:
        try:
            record = RetryRecord.decode(msg.value())
        except CodecError as exc:
            await self.dead_letter(msg, str(exc))
            return
        wait = (record.due_at - datetime.now(UTC)).total_seconds()
        if wait > 0:
            await asyncio.sleep(wait)  # cancelled on revoke/shutdown: the record stays uncommitted
        topic, partition, offset = position(msg)
        origin = SourcePosition(topic=topic, partition=partition, offset=offset)
        if record.rule_id in self.already_delivered((topic, partition), offset):
            DUPLICATES_SKIPPED.inc()
            return
        rule = self.rules().get(record.rule_id)
        if rule is None:
            await self.write_outcome(
                Outcome(
                    event_id=record.event.event_id,
                    rule_id=record.rule_id,
                    platform=record.event.platform.value,
                    trigger=record.event.trigger,
                    status=OutcomeStatus.FAILED,
                    error=f"rule deleted or disabled before retry; last error: {record.last_error}",
                    attempts=record.attempts,
                    source=origin,
                )
            )
            return
        await self.deliver(
            record.event,
            rule,
            origin,
            attempts_before=record.attempts,
            first_failed_at=record.first_failed_at,
        )

    # --- one delivery ---------------------------------------------------------------------------------
    async def deliver(
        self,
        event: Event,
        rule: Any,
        origin: SourcePosition,
        attempts_before: int,
        first_failed_at: datetime | None,
    ) -> None:
        async with self.mail_slots:
            MAILS_IN_FLIGHT.inc()
            try:
                result = await self.deliverer.deliver(event, rule, attempts_before)
            except Exception as exc:  # a bug must not lose the mail silently: it becomes a failed outcome
                log.exception("delivery crashed", extra={"event_id": event.event_id, "rule_id": rule.rule_id})
                result = DeliveryResult(
                    Verdict.FAILED,
                    attempts_before + 1,
                    error=f"internal error: {type(exc).__name__}",
                    reason="internal",
                )
            finally:
                MAILS_IN_FLIGHT.dec()
        connection = _metric_label(result.connection)
        status = OutcomeStatus.SENT
        if result.verdict is Verdict.SENT:
            MAILS_SENT.labels(connection=connection).inc()
            END_TO_END_SECONDS.labels(platform=event.platform.value).observe(_age_seconds(event))
        elif result.verdict is Verdict.TRANSIENT:
            retry = schedule(
                event,
                rule.rule_id,
                result.attempts,
                origin,
                result.error or "transient failure",
                first_failed_at,
                self.settings.pipeline.retry_deadline_seconds,
                base_delay=self.settings.pipeline.retry_base_seconds,
            )
            if retry is not None:
                MAILS_RETRIED.labels(connection=connection, reason=result.reason or "transient").inc()
                outcome = self._outcome(event, rule, result, OutcomeStatus.RETRYING, origin)
                await self.handoff.handoff(
                    (self.topics.retry, event.event_id.encode(), retry.encode()),
                    (self.topics.outcomes, rule.rule_id.encode(), encode_outcome(outcome)),
                )
                OUTCOMES_WRITTEN.labels(status=OutcomeStatus.RETRYING.value).inc()
                return
            status = OutcomeStatus.FAILED
            result.error = f"gave up after {result.attempts} attempts: {result.error}"
            MAILS_FAILED.labels(connection=connection, reason="deadline").inc()
        else:
            status = OutcomeStatus.FAILED
            MAILS_FAILED.labels(connection=connection, reason=result.reason or "permanent").inc()
        if rule.warnings_enabled:
            BILLABLE_EVENTS.inc()
        await self.write_outcome(self._outcome(event, rule, result, status, origin))

    def _outcome(
        self, event: Event, rule: Any, result: DeliveryResult, status: OutcomeStatus, origin: SourcePosition
    ) -> Outcome:
        return Outcome(
            event_id=event.event_id,
            rule_id=rule.rule_id,
            platform=event.platform.value,
            trigger=event.trigger,
            status=status,
            to=result.to,
            cc=result.cc,
            bcc=result.bcc,
            subject=result.subject,
            message_id=result.message_id,
            error=result.error,
            smtp_code=result.smtp_code,
            attempts=result.attempts,
            latency_ms=int(_age_seconds(event) * 1000),
            source=origin,
            connection=result.connection,
            empty_placeholders=result.empty_placeholders,
            warnings_enabled=bool(rule.warnings_enabled),
        )

    async def write_outcome(self, outcome: Outcome) -> None:
        await self.producer.send(self.topics.outcomes, encode_outcome(outcome), key=outcome.rule_id.encode())
        OUTCOMES_WRITTEN.labels(status=outcome.status.value).inc()

    async def dead_letter(self, msg: Message, error: str) -> None:
        topic, partition, offset = position(msg)
        where = f"{topic}:{partition}:{offset}"
        headers: list[tuple[str, bytes | str]] = [
            (k, v) for k, v in _headers(msg) if v is not None and not k.startswith("eventmail.")
        ]
        headers += [("eventmail.error", error[:1000].encode()), ("eventmail.source", where.encode())]
        value, key = msg.value(), msg.key()
        if key is not None and len(key) > DLQ_MAX_KEY_BYTES:
            headers.append(("eventmail.key_truncated_from", str(len(key)).encode()))
            key = key[:DLQ_MAX_KEY_BYTES]
        if value is not None and len(value) > _dlq_room(key, headers):
            # Kafka would refuse the record as it came (it was refused for its size): keep its start,
            # and say how long it was; the source offset points at the whole record while it is retained.
            headers.append(("eventmail.truncated_from", str(len(value)).encode()))
            value = value[: _dlq_room(key, headers)]
        await self.producer.send(self.topics.dlq, value, key=key, headers=headers)
        DLQ_RECORDS.labels(source=topic).inc()
        log.warning("record sent to the DLQ", extra={"error": error[:300], "source": where})


def _dlq_room(key: bytes | None, headers: list[tuple[str, bytes | str]]) -> int:
    """How many value bytes a DLQ record with this key and these headers may carry (a record's
    framing, and each header's, counted generously)."""
    framing = 64 + sum(len(k) + len(v) + 8 for k, v in headers)
    return max(0, DLQ_MAX_RECORD_BYTES - len(key or b"") - framing)


def _headers(msg: Message) -> list[tuple[str, bytes | str | None]]:
    raw = msg.headers()
    if raw is None:
        return []
    if isinstance(raw, dict):
        return list(raw.items())
    return list(raw)


def _metric_label(connection: str | None) -> str:
    """The ``connection`` label, as the transport's metrics use it: the ESP connection's name, or
    ``manual`` for every manual connection (their hosts come from rules: an unbounded set)."""
    if connection is None:
        return "unknown"
    if connection.startswith("esp:"):
        return connection[len("esp:") :]
    return "manual"


def _age_seconds(event: Event) -> float:
    return max(0.0, (datetime.now(UTC) - event.occurred_at).total_seconds())
