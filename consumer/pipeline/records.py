"""Processing of single records, on the asyncio side: events (decode -> match -> deliver each rule)
and retry records (wait until due -> deliver again). Bad input goes to the DLQ, never up the stack.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from confluent_kafka import Message

from consumer.errors import CodecError
from consumer.events.codec import EventDecoder, SchemaFetchNeeded
from consumer.events.model import Event
from consumer.events.triggers import Platform
from consumer.mail.params import manual_label
from consumer.observability.metrics import (
    BILLABLE_EVENTS,
    DECODE_FAILURES,
    DUPLICATES_SKIPPED,
    END_TO_END_SECONDS,
    EVENTS_CONSUMED,
    MAILS_FAILED,
    MAILS_IN_FLIGHT,
    MAILS_RETRIED,
    MAILS_SENT,
    OUTCOMES_WRITTEN,
    RULES_MATCHED,
    child,
)
from consumer.outcomes.codec import encode_outcome
from consumer.outcomes.model import Outcome, OutcomeStatus, SourcePosition
from consumer.pipeline.dlq import DeadLetterWriter
from consumer.pipeline.handoff import RetryHandoff
from consumer.pipeline.offsets import position
from consumer.pipeline.outcome_writer import OutcomeWriter, source_header
from consumer.pipeline.producer import AsyncProducer
from consumer.pipeline.result import DeliveryResult, Verdict
from consumer.pipeline.retry import RetryRecord, schedule
from consumer.pipeline.schema_fetch import OffLoopSchemas
from consumer.settings import Settings

log = logging.getLogger(__name__)
_running_loop = asyncio.get_running_loop


class MatchedRule(Protocol):
    """What the pipeline needs of a compiled rule."""

    @property
    def rule_id(self) -> str: ...

    @property
    def warnings_enabled(self) -> bool: ...


class Rules(Protocol):
    def match(self, event: Event) -> Sequence[Any]: ...

    def in_scope(
        self, platform: Platform, trigger: str, product_id: str | None, campaign_id: str | None
    ) -> bool:
        """False only when ``match`` of every such event is empty, whatever its other fields."""
        ...

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
        self.outcomes = OutcomeWriter(producer, settings.topics.outcomes)
        self.dead_letters = DeadLetterWriter(producer, settings.topics.dlq)
        lookup = decoder.writer_schema
        self.schemas = OffLoopSchemas(lookup) if lookup is not None else None
        #: The consumed counter's child per (platform, trigger).
        self._consumed: dict[tuple[Platform, str], Any] = {}
        #: Events consumed on the loop and not yet added to the consumed counter (see :meth:`_match`).
        self._uncounted: dict[tuple[Platform, str], int] = {}

    # --- events ---------------------------------------------------------------------------------------
    def start_event(self, msg: Message, topic: str) -> Coroutine[Any, Any, None] | None:
        """Decode and match an event record (of ``topic``) synchronously: None when that is all it
        needs (no rule matched), else the coroutine that finishes it (deliveries, the DLQ, or the
        writer schema's fetch from the Schema Registry, which never runs on the event loop). Same
        effects as :meth:`process_event`, without a task for the records that match nothing."""
        platform = self.platforms[topic]
        rules = self.rules()
        try:
            # An event no rule can match is only checked, not built (most events, on most streams).
            # (headers as the client gives them, a list of pairs or None: no copy per record)
            event = self.decoder.decode_scoped(platform, msg.value(), msg.headers(), rules.in_scope)
        except SchemaFetchNeeded as need:
            return self._process_decoded(msg, platform, self._decode_fetched(platform, msg, need.schema_id))
        except CodecError as exc:
            return self._rejected(msg, platform, exc)
        if isinstance(event, str):  # its trigger: a valid event outside every rule's scope
            self._count(platform, event)
            return None
        matched = self._match(platform, event, rules)
        if not matched:
            return None
        return self._deliver_matched(msg, event, matched)

    async def process_event(self, msg: Message) -> None:
        topic, _, _ = position(msg)
        coro = self.start_event(msg, topic)
        if coro is not None:
            await coro

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

    def _match(self, platform: Platform, event: Event, rules: Rules | None = None) -> Sequence[Any]:
        """The rules the event triggers (of ``rules``, else the current ones), counted in the
        consumed and matched metrics."""
        self._count(platform, event.trigger)
        matched = (self.rules() if rules is None else rules).match(event)
        if matched:
            child(RULES_MATCHED, platform.value, event.trigger).inc(len(matched))
        return matched

    def _count(self, platform: Platform, trigger: str) -> None:
        """One event of ``trigger`` consumed."""
        key = (platform, trigger)
        # The consumed counter: on the event loop the counts of a batch of records are added once,
        # by a callback that runs right after the batch (the counter's lock costs as much as
        # matching an event); off it (no batch to join, nor to touch from another thread), at once.
        try:
            loop = _running_loop()
        except RuntimeError:
            self._consumed_child(key).inc()
        else:
            uncounted = self._uncounted
            if not uncounted:
                loop.call_soon(self._add_uncounted)
            uncounted[key] = uncounted.get(key, 0) + 1

    def _add_uncounted(self) -> None:
        uncounted, self._uncounted = self._uncounted, {}
        for key, count in uncounted.items():
            self._consumed_child(key).inc(count)

    def _consumed_child(self, key: tuple[Platform, str]) -> Any:
        found = self._consumed.get(key)
        if found is None:  # label children are looked up once per (platform, trigger): a bounded set
            found = self._consumed[key] = EVENTS_CONSUMED.labels(platform=key[0].value, trigger=key[1])
        return found

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

    async def _decode_fetched(self, platform: Platform, msg: Message, schema_id: int) -> Event:
        """Decode once the writer schema is fetched (off the loop). While the Schema Registry is
        unavailable this waits (backpressure: the partition's commits stop here) instead of sending
        good records to the DLQ; an answer about this schema id alone raises CodecError (the DLQ)."""
        if self.schemas is None:  # decode() asks for a fetch only when a lookup exists
            raise CodecError(f"schema id {schema_id}: no schema registry is set")
        writer = await self.schemas.get(schema_id)
        return self.decoder.decode(platform, msg.value(), msg.headers(), writer=writer)

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
        await self.outcomes.wait_writable()  # no mail without a way to record it
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
        ids = {"event_id": event.event_id, "rule_id": rule.rule_id, "attempts": result.attempts}
        if result.verdict is Verdict.SENT:
            child(MAILS_SENT, connection).inc()
            child(END_TO_END_SECONDS, event.platform.value).observe(_age_seconds(event))
        elif result.verdict is Verdict.TRANSIENT:
            now = datetime.now(UTC)
            retry = schedule(
                event,
                rule.rule_id,
                result.attempts,
                origin,
                result.error or "transient failure",
                first_failed_at,
                self.settings.pipeline.retry_deadline_seconds,
                now=now,
                base_delay=self.settings.pipeline.retry_base_seconds,
                not_before=result.retry_after or 0.0,
            )
            if retry is not None:
                wait = (retry.due_at - now).total_seconds()
                result.error = f"{result.error or 'transient failure'}; next attempt in {wait:.1f}s"
                MAILS_RETRIED.labels(connection=connection, reason=result.reason or "transient").inc()
                outcome = self._outcome(event, rule, result, OutcomeStatus.RETRYING, origin)
                await self.handoff.handoff(
                    (self.topics.retry, event.event_id.encode(), retry.encode()),
                    (self.topics.outcomes, rule.rule_id.encode(), encode_outcome(outcome)),
                    outcome_headers=source_header(origin),
                )
                OUTCOMES_WRITTEN.labels(status=OutcomeStatus.RETRYING.value).inc()
                log.info("mail retried later", extra={**ids, "error": result.error[:300], "due_in": wait})
                return
            status = OutcomeStatus.FAILED
            result.error = f"gave up after {result.attempts} attempts: {result.error}"
            MAILS_FAILED.labels(connection=connection, reason="deadline").inc()
            log.warning("mail failed", extra={**ids, "error": result.error[:300], "reason": "deadline"})
        else:
            status = OutcomeStatus.FAILED
            MAILS_FAILED.labels(connection=connection, reason=result.reason or "permanent").inc()
            log.warning(
                "mail failed",
                extra={**ids, "error": (result.error or "")[:300], "reason": result.reason or "permanent"},
            )
        if rule.warnings_enabled:
            BILLABLE_EVENTS.inc()
        await self.write_outcome(self._outcome(event, rule, result, status, origin))
        if status is OutcomeStatus.SENT:  # logged once its outcome is written: outside the duplicate window
            _info("mail sent", {**ids, "message_id": result.message_id, "code": result.smtp_code})

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
            rule_version=getattr(rule, "record_offset", None),
            empty_placeholders=result.empty_placeholders,
            warnings_enabled=bool(rule.warnings_enabled),
        )

    async def write_outcome(self, outcome: Outcome) -> None:
        await self.outcomes.write(outcome)

    async def dead_letter(self, msg: Message, error: str) -> None:
        await self.dead_letters.write(msg, error)


def _info(message: str, extra: dict[str, Any]) -> None:
    """``log.info(message, extra=extra)`` for a line of every mail, without the search for the
    caller's file and line (which no eventmail formatter writes): the same record otherwise."""
    if log.isEnabledFor(logging.INFO):
        log.handle(log.makeRecord(log.name, logging.INFO, "", 0, message, (), None, extra=extra))


@functools.lru_cache(maxsize=1024)
def _metric_label(connection: str | None) -> str:
    """The ``connection`` label, as the transport's metrics use it: the ESP connection's name, or
    for ``manual:HOST:PORT`` the bounded :func:`~consumer.mail.params.manual_label`."""
    if connection is None:
        return "unknown"
    if connection.startswith("esp:"):
        return connection[len("esp:") :]
    host, _, port = connection.removeprefix("manual:").rpartition(":")
    return manual_label(host, int(port)) if host and port.isdigit() else "manual"


def _age_seconds(event: Event) -> float:
    return max(0.0, (datetime.now(UTC) - event.occurred_at).total_seconds())
