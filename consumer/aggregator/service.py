"""The aggregator's Kafka side: a consumer group over the outcome topic, state rebuilt on assignment.

Outcomes are keyed by rule id, so a rule lives on one partition and the replica that owns the
partition alone decides that rule's alerts. On assignment of a partition the replica:

1. reads the alerts topic to its end (:class:`DecisionLog`), learning the last decisions taken by any
   earlier owner;
2. starts the partition at ``offsets_for_times(now - 6h)`` (the largest timeframe), or at the group's
   committed offset when that is older, and replays to the current end: windows are rebuilt, and
   decisions at event times an earlier owner already covered are not taken again;
3. is *ready* for that partition once it has read up to the end the partition had at assignment,
   judged by the consumer's end-of-partition event (a transaction's commit marker takes an offset
   but is never delivered, so "the last record's offset + 1 == high watermark" may never hold).

The broker calls of the assign callback (committed offsets, offsets by time, watermarks, the alerts
read-back) retry transient errors (a leader moving during a rolling restart) with backoff
(:mod:`consumer.kafka_retry`); nothing raises out of a callback. While a call is being retried, or a
partition rebuilds without progress, :meth:`Aggregator.healthy` says so and fails after
``stale_after`` seconds, so a stuck replica is restarted instead of hanging silently.
So does a consumer out of its group for ``EVENTMAIL_KAFKA__GROUP_STUCK_SECONDS`` while the brokers
answer a fresh client (:mod:`consumer.kafka.group_watch`; out of the group while the brokers are away
is an outage and stays healthy).

Event time is bounded: an outcome's ``created`` counts as at most :data:`MAX_AHEAD_MS` past the
record's own timestamp (when it was written), so one record with a wrong clock cannot move a
partition's clock ahead and drop every later outcome as too old.

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
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from consumer.aggregator.config import WarningsProvider
from consumer.aggregator.decisions import DecisionLog
from consumer.aggregator.notify import AlertMailer
from consumer.aggregator.records import decode_observation
from consumer.aggregator.state import AlertDecision, PartitionState
from consumer.aggregator.windows import LARGEST_TIMEFRAME
from consumer.errors import CodecError
from consumer.kafka.fetching import FETCH_DEFAULTS
from consumer.kafka.group_watch import GroupWatch, brokers_answer
from consumer.kafka_retry import BrokerCalls, RetryStopped
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

#: How far an outcome's ``created`` may be ahead of its record's timestamp before it is capped.
MAX_AHEAD_MS = 60_000
#: A broker call retried, or a partition rebuilding without progress, this long makes it unhealthy.
STUCK_AFTER_SECONDS = 30.0


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
    at_end: bool = False  # an end-of-partition event arrived: everything readable was read
    progress_at: float = field(default_factory=time.monotonic)  # when position last moved

    @property
    def rebuilt(self) -> bool:
        return self.at_end or self.position >= self.rebuild_until

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
        #: Event time of the newest outcome processed; the lag gauge is computed from it when scraped,
        #: so an aggregator that stops processing shows a growing lag, not the last value it set.
        self.newest_ms: int | None = None
        AGGREGATOR_LAG_SECONDS.set_function(self.lag_seconds)
        self.commit_interval = commit_interval or settings.pipeline.commit_interval_seconds
        self.drain_timeout = settings.pipeline.drain_timeout_seconds
        self.stopping = threading.Event()  # set when run() is asked to stop: ends broker retries
        self.calls = BrokerCalls(stop=self.stopping)
        self.log = DecisionLog(settings.kafka_config(), settings.topics.alerts, calls=self.calls)
        self.consumer = Consumer(
            FETCH_DEFAULTS
            | settings.kafka_config(
                **{
                    "group.id": aggregator_group(settings),
                    "partition.assignment.strategy": "cooperative-sticky",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                    "enable.partition.eof": True,
                    "session.timeout.ms": 10000,
                    "heartbeat.interval.ms": 1000,
                    "statistics.interval.ms": 5000,
                    "error_cb": self._on_error,
                    "on_commit": self._on_commit,
                    "stats_cb": self._on_stats,
                }
            )
        )
        #: Out of the group this long while the brokers answer fails /healthz (a restart rejoins).
        self.group = GroupWatch(settings.kafka.group_stuck_seconds)
        self._next_probe = 0.0
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

    def healthy(self, stale_after: float | None = None) -> tuple[bool, dict[str, object]]:
        """Alive and not stuck: the loop turns, no broker call has been retried for ``stale_after``
        seconds (:data:`STUCK_AFTER_SECONDS`), and no partition has been rebuilding that long without
        reading anything."""
        stale_after = STUCK_AFTER_SECONDS if stale_after is None else stale_after
        now = time.monotonic()
        loop_ok = now - self.last_loop < stale_after
        details: dict[str, object] = {"loop": loop_ok, "fatal": self.fatal}
        retrying = self.calls.retrying
        stuck = retrying is not None and now - retrying.since >= stale_after
        if retrying is not None:
            details["retrying"] = {
                "call": retrying.what,
                "error": retrying.error,
                "attempts": retrying.attempts,
                "seconds": round(now - retrying.since, 1),
            }
        stalled = sorted(
            p
            for p, run in list(self.parts.items())
            if not run.rebuilt and now - run.progress_at >= stale_after
        )
        if stalled:
            details["rebuild_stalled"] = stalled
        details.update(self.group.details())
        out_of_group = self.group.stuck()
        return loop_ok and not stuck and not stalled and not out_of_group and self.fatal is None, details

    # --- librdkafka callbacks (inside consume, on the worker thread) ---------------------------------------
    def _on_error(self, error: KafkaError) -> None:
        KAFKA_ERRORS.labels(code=error.name()).inc()
        if error.fatal():
            self.fatal = f"fatal consumer error: {error.str()}"
        else:
            log.warning("kafka error", extra={"kafka_error": error.str()})

    def _on_stats(self, raw: str) -> None:
        try:
            self.group.on_stats(json.loads(raw))
        except ValueError:
            return

    def _watch_group(self) -> None:
        """Out of the group for its bound: do the brokers answer a fresh client? (then: stuck)"""
        now = time.monotonic()
        if not self.group.overdue() or now < self._next_probe:
            return
        self._next_probe = now + max(self.group.stuck_after, 5.0)
        self.group.reachable = brokers_answer(
            self.settings.kafka_config(**{"group.id": aggregator_group(self.settings)})
        )
        if self.group.reachable:
            log.error(
                "not a member of the consumer group while the brokers answer: not healthy",
                extra={"out_of_group_seconds": round(self.group.out_for()), "group": self.group.state},
            )

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Never raises (an exception here would be lost inside librdkafka and leave the replica
        unready for good): transient broker errors are retried, anything else is fatal and said."""
        self.group.joined()
        starts: list[TopicPartition] = []
        stopped = False
        try:
            self.log.refresh()
            if partitions:
                runs, starts = self._start_positions(consumer, partitions)
                self.parts.update(runs)
        except RetryStopped:
            stopped = True
            log.info("stopping while partitions were being assigned")
        except Exception as exc:
            self.fatal = f"cannot rebuild state of {self.topic}: {type(exc).__name__}: {exc}"
            log.exception("cannot rebuild state on assignment")
        try:
            consumer.incremental_assign(starts)
        except Exception as exc:
            self.fatal = f"cannot assign partitions of {self.topic}: {exc}"
            log.exception("cannot assign partitions")
            return
        self.assignment_received = self.assignment_received or not stopped
        if starts:
            log.info(
                "partitions assigned; rebuilding",
                extra={"partitions": {tp.partition: tp.offset for tp in starts}},
            )

    def _start_positions(
        self, consumer: Consumer, partitions: list[TopicPartition]
    ) -> tuple[dict[int, PartitionRun], list[TopicPartition]]:
        """Where each partition starts, and its run (see the module docstring). Broker calls retry."""
        since_ms = int((self.wall_clock() - LARGEST_TIMEFRAME.seconds) * 1000)
        asked = [TopicPartition(self.topic, tp.partition) for tp in partitions]
        committed = {
            tp.partition: tp.offset
            for tp in self.calls.call("committed offsets", lambda: consumer.committed(asked, timeout=30))
        }
        by_time = self.calls.call(
            "offsets by time",
            lambda: consumer.offsets_for_times(
                [TopicPartition(self.topic, tp.partition, since_ms) for tp in partitions], timeout=30
            ),
        )
        found = {tp.partition: tp.offset for tp in by_time}
        runs: dict[int, PartitionRun] = {}
        out: list[TopicPartition] = []
        for tp in partitions:
            p = tp.partition
            low, high = self.calls.watermarks(consumer, self.topic, p, 30)
            start = found.get(p, -1)
            start = high if start < 0 else start
            done = committed.get(p, -1)
            from_committed = 0 <= done < start
            if from_committed:
                start = done
            start = max(start, low)
            # Windows that start before the data read lack outcomes: no decisions on them. After a
            # downtime longer than the largest timeframe the partition is read from its committed
            # offset, and windows are complete from the first outcome read on (not from now - 6 h:
            # the breaches of the downtime are decided, late, instead of never).
            state = PartitionState(
                self.provider,
                earlier=self.log.state_for,
                complete_from_ms=None if start <= low or from_committed else since_ms,
                complete_from_first=start > low and from_committed,
            )
            runs[p] = PartitionRun(
                state, position=start, rebuild_until=high, bill_from=done if done >= 0 else high
            )
            out.append(TopicPartition(self.topic, p, start))
        return runs, out

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {tp.partition for tp in partitions}
        try:
            self._settle_from_thread(keys)
            self._commit(keys, consumer, give_up_after=self.drain_timeout)
        except Exception:  # never out of a callback: the next owner replays from the last commit
            log.exception("handing partitions over failed", extra={"partitions": sorted(keys)})
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

    def _commit(
        self, keys: set[int] | None, consumer: Consumer | None = None, give_up_after: float = 5.0
    ) -> None:
        """Commit and wait for the answer: when partitions are handed over and at the stop."""
        client = consumer or self.consumer
        offsets = self._committable(keys)
        if not offsets:
            return
        try:
            self.calls.call(
                "commit", lambda: client.commit(offsets=offsets, asynchronous=False), give_up_after
            )
        except Exception as exc:
            log.warning("commit failed; will retry", extra={"error": str(exc)})

    def _commit_in_background(self) -> None:
        """The periodic commit, asynchronous: the loop never waits for the group coordinator (a
        synchronous commit waits for one as long as a broker restart lasts, or longer)."""
        offsets = self._committable(None)
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            log.warning("commit failed; will retry", extra={"error": str(exc)})

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if error is not None and error.code() != KafkaError._NO_OFFSET:
            KAFKA_ERRORS.labels(code=error.name()).inc()
            log.warning("commit failed; will retry", extra={"error": error.str()})

    def _committable(self, keys: set[int] | None) -> list[TopicPartition]:
        return [
            TopicPartition(self.topic, p, run.committable())
            for p, run in list(self.parts.items())
            if keys is None or p in keys
        ]

    # --- the loop --------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        watcher = asyncio.create_task(self._watch_stop(stop))
        try:
            await self._run(stop)
        finally:
            watcher.cancel()

    async def _watch_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.stopping.set()

    async def _run(self, stop: asyncio.Event) -> None:
        last_commit = last_gauges = time.monotonic()
        try:
            try:
                await asyncio.to_thread(self.log.refresh)
            except RetryStopped:
                return  # stopped while the brokers were away; the clients are closed below
            self.consumer.subscribe(
                [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
            self.group.out_since = time.monotonic()
            while not stop.is_set() and self.fatal is None:
                self.last_loop = time.monotonic()
                batch = await asyncio.to_thread(self.consumer.consume, 1000, 0.2)
                self.process(batch)
                if self.group.overdue():
                    await asyncio.to_thread(self._watch_group)
                now = time.monotonic()
                if now - last_gauges >= 1.0:
                    self.update_gauges()
                    last_gauges = now
                if now - last_commit >= self.commit_interval:
                    self._commit_in_background()
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
                elif error.code() == KafkaError._PARTITION_EOF:
                    self._reached_end(msg)
                else:
                    KAFKA_ERRORS.labels(code=error.name()).inc()
                    log.warning("consume error", extra={"kafka_error": error.str()})
                continue
            partition, offset = msg.partition() or 0, msg.offset() or 0
            run = self.parts.get(partition)
            if run is None or offset < run.position:
                continue
            run.position = offset + 1
            run.progress_at = time.monotonic()
            try:
                obs = decode_observation(msg.value(), max_created_ms=self._latest_plausible(msg))
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
        if newest and (self.newest_ms is None or newest > self.newest_ms):
            self.newest_ms = newest

    def lag_seconds(self) -> float:
        """How old the newest processed outcome is now (0 before the first)."""
        if self.newest_ms is None:
            return 0.0
        return max(0.0, self.wall_clock() - self.newest_ms / 1000)

    def _reached_end(self, msg: Message) -> None:
        run = self.parts.get(msg.partition() or 0)
        if run is None or run.at_end:
            return
        run.at_end = True
        run.progress_at = time.monotonic()
        if run.position < run.rebuild_until:
            log.info(
                "partition read to its end",
                extra={
                    "partition": msg.partition(),
                    "position": run.position,
                    "end_at_assign": run.rebuild_until,
                },
            )

    def _latest_plausible(self, msg: Message) -> int:
        """The latest event time an outcome of this record may claim (its timestamp, else now)."""
        kind, ts = msg.timestamp()
        if kind == TIMESTAMP_NOT_AVAILABLE or ts <= 0:
            ts = int(self.wall_clock() * 1000)
        return ts + MAX_AHEAD_MS

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
