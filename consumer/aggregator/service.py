"""The aggregator's Kafka side: a consumer group over the outcome topic, state rebuilt on assignment.

Outcomes are keyed by rule id, so a rule lives on one partition and the replica that owns the
partition alone decides that rule's alerts. On assignment of a partition the replica:

1. reads the alerts topic to its end (:class:`DecisionLog`), learning the last decisions taken by any
   earlier owner;
2. starts the partition at ``offsets_for_times(now - 6h)`` (the largest timeframe), or at the group's
   committed offset when that is older, and replays to the current end: windows are rebuilt, and
   decisions at event times an earlier owner already covered are not taken again;
3. is *ready* for that partition once it has read up to the end the partition had at assignment.

No local disk is used. Offsets are committed (never past a record whose alert is still being sent)
so a downtime longer than the largest timeframe still misses nothing, and so billable events are
counted once: only records at or after the committed offset count toward ``BILLABLE_EVENTS``.

On revocation the partition's alerts in flight are finished and flushed before it is handed over.
Alert sending runs on the asyncio loop; the consumer is called from one worker thread at a time.
This module must never block the loop on Kafka or SMTP, and never let an alert failure stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from consumer.aggregator.config import WarningsProvider
from consumer.aggregator.decisions import DecisionLog
from consumer.aggregator.notify import AlertMailer
from consumer.aggregator.records import decode_observation
from consumer.aggregator.state import AlertDecision, PartitionState
from consumer.aggregator.windows import LARGEST_TIMEFRAME
from consumer.errors import CodecError
from consumer.observability.metrics import (
    AGGREGATOR_LAG_SECONDS,
    ALERTS_FIRED,
    BILLABLE_EVENTS,
    KAFKA_ERRORS,
    OUTCOMES_AGGREGATED,
    WINDOW_BUCKETS,
    WINDOW_RULES,
)
from consumer.outcomes.codec import encode_alert
from consumer.outcomes.model import AlertKind
from consumer.settings import Settings

log = logging.getLogger(__name__)


def aggregator_group(settings: Settings) -> str:
    """The aggregator's consumer group: its own, so ``run`` rebalances never move its partitions."""
    return f"{settings.group_id}-aggregate"


@dataclass
class PartitionRun:
    state: PartitionState
    position: int  # next offset to process
    rebuild_until: int  # the partition's end when it was assigned
    bill_from: int  # records from here on were not counted by an earlier owner
    pending: dict[asyncio.Task[None], int] = field(default_factory=dict)  # alert task -> record offset

    @property
    def rebuilt(self) -> bool:
        return self.position >= self.rebuild_until

    def committable(self) -> int:
        """The offset to commit: never past a record whose alert is still in flight."""
        return min([self.position, *list(self.pending.values())])


class Aggregator:
    """Consumes the outcome topic and raises alerts; :meth:`run` until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        provider: WarningsProvider,
        mailer: AlertMailer,
        *,
        wall_clock: Callable[[], float] = time.time,
        commit_interval: float | None = None,
    ) -> None:
        self.settings = settings
        self.topic = settings.topics.outcomes
        self.provider = provider
        self.mailer = mailer
        self.wall_clock = wall_clock
        self.commit_interval = commit_interval or settings.pipeline.commit_interval_seconds
        self.drain_timeout = settings.pipeline.drain_timeout_seconds
        self.log = DecisionLog(settings.kafka_config(), settings.topics.alerts)
        self.consumer = Consumer(
            settings.kafka_config(
                **{
                    "group.id": aggregator_group(settings),
                    "partition.assignment.strategy": "cooperative-sticky",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                    "session.timeout.ms": 10000,
                    "heartbeat.interval.ms": 1000,
                    "error_cb": self._on_error,
                }
            )
        )
        self.producer = Producer(
            settings.kafka_config(**{"enable.idempotence": True, "acks": "all", "linger.ms": 5})
        )
        self.parts: dict[int, PartitionRun] = {}
        self.assignment_received = False
        self.fatal: str | None = None
        self.last_loop = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._chains: dict[str, asyncio.Task[None]] = {}

    # --- state -----------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """State rebuilt: alerts read back, partitions assigned, each replayed to its end at assignment."""
        return (
            self.log.loaded and self.assignment_received and all(p.rebuilt for p in list(self.parts.values()))
        )

    def readiness(self) -> tuple[bool, dict[str, object]]:
        parts = dict(self.parts)
        details: dict[str, object] = {
            "alerts_read_back": self.log.loaded,
            "assignment_received": self.assignment_received,
            "partitions": sorted(parts),
            "rebuilding": sorted(p for p, run in parts.items() if not run.rebuilt),
        }
        return self.ready and self.fatal is None, details

    def healthy(self, stale_after: float = 30.0) -> tuple[bool, dict[str, object]]:
        loop_ok = time.monotonic() - self.last_loop < stale_after
        return loop_ok and self.fatal is None, {"loop": loop_ok, "fatal": self.fatal}

    # --- librdkafka callbacks (inside consume, on the worker thread) ---------------------------------------
    def _on_error(self, error: KafkaError) -> None:
        KAFKA_ERRORS.labels(code=error.name()).inc()
        if error.fatal():
            self.fatal = f"fatal consumer error: {error.str()}"
        else:
            log.warning("kafka error", extra={"kafka_error": error.str()})

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self.log.refresh()
            starts = self._start_positions(consumer, partitions) if partitions else []
        except Exception as exc:
            self.fatal = f"cannot rebuild state: {exc}"
            log.exception("cannot rebuild state on assignment")
            starts = []
        consumer.incremental_assign(starts)
        self.assignment_received = True
        if starts:
            log.info(
                "partitions assigned; rebuilding",
                extra={"partitions": {tp.partition: tp.offset for tp in starts}},
            )

    def _start_positions(self, consumer: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
        since_ms = int((self.wall_clock() - LARGEST_TIMEFRAME.seconds) * 1000)
        committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=30)}
        by_time = consumer.offsets_for_times(
            [TopicPartition(self.topic, tp.partition, since_ms) for tp in partitions], timeout=30
        )
        found = {tp.partition: tp.offset for tp in by_time}
        out: list[TopicPartition] = []
        for tp in partitions:
            p = tp.partition
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=30)
            start = found.get(p, -1)
            start = high if start < 0 else start
            done = committed.get(p, -1)
            if 0 <= done < start:
                start = done
            start = max(start, low)
            state = PartitionState(
                self.provider,
                earlier=self.log.state_for,
                complete_from_ms=None if start <= low else since_ms,
            )
            self.parts[p] = PartitionRun(
                state, position=start, rebuild_until=high, bill_from=done if done >= 0 else high
            )
            out.append(TopicPartition(self.topic, p, start))
        return out

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {tp.partition for tp in partitions}
        self._settle_from_thread(keys)
        self._commit(keys, consumer)
        for p in keys:
            self.parts.pop(p, None)
        if keys:
            log.info("partitions revoked", extra={"partitions": sorted(keys)})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {tp.partition for tp in partitions}
        for p in keys:
            self.parts.pop(p, None)
        log.warning("partitions lost", extra={"partitions": sorted(keys)})

    def _settle_from_thread(self, keys: set[int]) -> None:
        if self._loop is None or not keys:
            return
        future = asyncio.run_coroutine_threadsafe(self.settle(keys), self._loop)
        try:
            future.result(self.drain_timeout + 5)
        except Exception:
            log.warning(
                "alerts still in flight when partitions were revoked", extra={"partitions": sorted(keys)}
            )

    def _commit(self, keys: set[int] | None, consumer: Consumer | None = None) -> None:
        consumer = consumer or self.consumer
        offsets = [
            TopicPartition(self.topic, p, run.committable())
            for p, run in list(self.parts.items())
            if keys is None or p in keys
        ]
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:
            log.warning("commit failed; will retry", extra={"error": str(exc)})

    # --- the loop --------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.log.refresh)
        self.consumer.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        last_commit = last_gauges = time.monotonic()
        try:
            while not stop.is_set() and self.fatal is None:
                self.last_loop = time.monotonic()
                batch = await asyncio.to_thread(self.consumer.consume, 1000, 0.2)
                self.process(batch)
                now = time.monotonic()
                if now - last_gauges >= 1.0:
                    self.update_gauges()
                    last_gauges = now
                if now - last_commit >= self.commit_interval:
                    await asyncio.to_thread(self._commit, None)
                    last_commit = now
        finally:
            await self.settle(None)
            await asyncio.to_thread(self._commit, None)
            await asyncio.to_thread(self.consumer.close)
            await asyncio.to_thread(self.producer.flush, 30)
            self.log.close()
            await self.mailer.close()

    def process(self, batch: list[Message]) -> None:
        newest = 0
        statuses: Counter[str] = Counter()
        billable = 0
        for msg in batch:
            error = msg.error()
            if error is not None:
                if error.fatal():
                    self.fatal = f"fatal consumer error: {error.str()}"
                elif error.code() != KafkaError._PARTITION_EOF:
                    KAFKA_ERRORS.labels(code=error.name()).inc()
                    log.warning("consume error", extra={"kafka_error": error.str()})
                continue
            partition, offset = msg.partition() or 0, msg.offset() or 0
            run = self.parts.get(partition)
            if run is None or offset < run.position:
                continue
            run.position = offset + 1
            try:
                obs = decode_observation(msg.value())
            except CodecError as exc:
                log.warning(
                    "skipping an undecodable outcome",
                    extra={"partition": partition, "offset": offset, "error": str(exc)},
                )
                continue
            statuses[obs.status] += 1
            if obs.is_billable and offset >= run.bill_from:
                billable += 1
            if obs.created_ms > newest:
                newest = obs.created_ms
            for decision in run.state.apply(obs):
                self._raise(run, offset, decision)
        for status, count in statuses.items():
            OUTCOMES_AGGREGATED.labels(status=status).inc(count)
        if billable:
            BILLABLE_EVENTS.inc(billable)
        if newest:
            AGGREGATOR_LAG_SECONDS.set(max(0.0, self.wall_clock() - newest / 1000))

    def update_gauges(self) -> None:
        runs = list(self.parts.values())
        WINDOW_RULES.set(sum(len(run.state.rules) for run in runs))
        WINDOW_BUCKETS.set(sum(run.state.buckets() for run in runs))

    # --- alerts ----------------------------------------------------------------------------------------
    def _raise(self, run: PartitionRun, offset: int, decision: AlertDecision) -> None:
        rule = decision.config.rule_id
        previous = self._chains.get(rule)
        task = asyncio.get_running_loop().create_task(self._alert(decision, previous))
        self._chains[rule] = task
        run.pending[task] = offset

        def done(t: asyncio.Task[None]) -> None:
            run.pending.pop(t, None)
            if self._chains.get(rule) is t:
                del self._chains[rule]

        task.add_done_callback(done)

    async def _alert(self, decision: AlertDecision, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:  # one rule's alerts go out in the order they were decided
            with contextlib.suppress(Exception):
                await asyncio.shield(previous)
        try:
            await self._send_and_record(decision)
        except Exception:  # an alert must never take the service down
            log.exception("alert handling failed", extra={"rule_id": decision.config.rule_id})

    async def _send_and_record(self, decision: AlertDecision) -> None:
        users = self.settings.users
        email = decision.kind is AlertKind.FIRED or self.settings.alerts.send_resolved
        recipients = decision.config.recipients(users) if email else []
        if email and decision.config.unknown_users(users):
            log.warning(
                "alert users without an address in EVENTMAIL_USERS",
                extra={"rule_id": decision.config.rule_id, "users": decision.config.unknown_users(users)},
            )
        sent = await self.mailer.deliver(decision, recipients) if email else False
        alert = decision.to_alert(recipients if sent else [], sent)
        ALERTS_FIRED.labels(kind=decision.kind.value).inc()
        log.info(
            "alert raised",
            extra={
                "rule_id": alert.rule_id,
                "kind": alert.kind.value,
                "events": alert.events,
                "warnings": alert.warnings,
                "email_sent": sent,
            },
        )
        self.producer.produce(
            self.settings.topics.alerts, key=alert.rule_id.encode(), value=encode_alert(alert)
        )
        remaining = await asyncio.to_thread(self.producer.flush, 30)
        if remaining:
            log.error("alert record not acknowledged", extra={"rule_id": alert.rule_id})
        else:
            self.log.remember(alert)

    async def settle(self, partitions: set[int] | None) -> None:
        """Wait (bounded) for the alerts in flight of these partitions (None: all)."""
        tasks = [
            task
            for p, run in list(self.parts.items())
            if partitions is None or p in partitions
            for task in run.pending
        ]
        if tasks:
            await asyncio.wait(tasks, timeout=self.drain_timeout)
        await asyncio.to_thread(self.producer.flush, 10)
