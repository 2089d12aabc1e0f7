"""The source consumer: one thread that owns the confluent-kafka ``Consumer`` (every call to it is
made from this thread), hands records to the asyncio pipeline, applies backpressure with
``pause``/``resume``, commits what the pipeline says is done, and runs the rebalance protocol.

Never commits on partitions *lost*; on partitions *revoked* it first waits (bounded) for the
pipeline to finish the revoked partitions' work, then commits synchronously, then the pipeline drops
their state. The rebalance callbacks never raise: their broker calls are retried while the errors are
transient (``/healthz`` fails while one is stuck), and a call that cannot succeed stops the service.

Out of the group for ``group_stuck_after`` seconds while the brokers answer a fresh client (see
:mod:`consumer.kafka.group_watch`: librdkafka can stay without a coordinator after a broker restart),
the source drops its partitions' state (no commit: they are someone else's by now), replaces its
consumer with a new one that joins afresh, and ``/healthz`` fails until a consumer is a member again.

Pauses have three reasons, each with its own threshold and its own resume point: the pipeline holds
``max_in_flight`` event records (every event partition), ``max_retry_pending`` retry records (every
retry partition), or one partition's uncommitted span passed ``max_uncommitted_per_partition`` (that
partition: a stuck record does not let the ones behind it run ahead without bound).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer.kafka.fetching import FETCH_DEFAULTS
from consumer.kafka.group_watch import GroupWatch, brokers_answer
from consumer.kafka_retry import BrokerCalls, RetryStopped, is_retriable
from consumer.observability.metrics import CONSUMER_LAG, KAFKA_ERRORS, PARTITIONS_PAUSED
from consumer.pipeline.offsets import TopicPartitionKey

log = logging.getLogger(__name__)

#: Records taken from the consumer at most at once.
BATCH = 500
#: How long the pipeline may stay full (the source waiting for room) before event partitions are paused.
FULL_GRACE_SECONDS = 1.0
#: One attempt to read the committed offsets on assignment (retried while the errors are transient).
COMMITTED_TIMEOUT_SECONDS = 10.0
#: How long a synchronous commit on revoke is retried on transient errors.
REVOKE_COMMIT_RETRY_SECONDS = 10.0


class SourceHandler(Protocol):
    """What the pipeline offers the source thread. Called from the source thread."""

    def on_records(self, records: list[Message]) -> None: ...

    def on_assigned(self, partitions: dict[TopicPartitionKey, int]) -> None:
        """New partitions with their committed offsets (-1001: none), before any of their records."""

    def drain(self, partitions: set[TopicPartitionKey], timeout: float) -> None:
        """Block until the work of these partitions is done (or the timeout passes)."""

    def on_revoked(self, partitions: set[TopicPartitionKey]) -> None:
        """After the drain and the final commit: the partitions' state goes."""

    def on_lost(self, partitions: set[TopicPartitionKey]) -> None: ...

    def committable(
        self,
        partitions: set[TopicPartitionKey] | None = None,
        positions: dict[TopicPartitionKey, int] | None = None,
    ) -> dict[TopicPartitionKey, int]:
        """Offsets safe to commit; ``positions`` are the consumer's (past transaction markers)."""

    def mark_committed(self, offsets: dict[TopicPartitionKey, int]) -> None: ...

    def backlog(self) -> tuple[int, int]:
        """(pending event records, pending retry records)."""

    def spans(self) -> dict[TopicPartitionKey, int]:
        """Per partition, how many offsets are held uncommitted behind its first unfinished record."""

    def wait_for_room(self, limit: int, timeout: float) -> bool:
        """Block until fewer than ``limit`` event records are pending (or the timeout passes)."""

    def stuck_since(self) -> float | None:
        """Since when (time.monotonic()) one of the handler's broker reads is retried, if it is."""


class SourceConsumer:
    def __init__(
        self,
        config: dict[str, Any],
        topics: list[str],
        retry_topic: str,
        handler: SourceHandler,
        *,
        max_pending: int,
        max_retry_pending: int,
        commit_interval: float,
        drain_timeout: float,
        on_fatal: Callable[[str], None],
        max_uncommitted: int = 10_000,
        callback_retry_seconds: float = 300.0,
        group_stuck_after: float = 360.0,
    ) -> None:
        self._config: dict[str, Any] = {
            **FETCH_DEFAULTS,
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "statistics.interval.ms": 5000,
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 1000,
            **config,
        }
        self._generation = 0
        self._consumer = self._new_consumer()
        #: Membership of the group; out of it for too long while the brokers answer is "stuck".
        self.group = GroupWatch(group_stuck_after)
        #: When the brokers may be asked again whether they answer (while out of the group too long).
        self._next_probe = 0.0
        self.recreated = 0
        self._topics = topics
        self._retry_topic = retry_topic
        self._handler = handler
        self._max_pending = max_pending
        #: Once full, the source waits until fewer than this many are pending, then takes a batch.
        self._room_limit = max(1, max_pending - max_pending // 8)
        self._full_since: float | None = None
        self._max_retry_pending = max_retry_pending
        self._commit_interval = commit_interval
        self._drain_timeout = drain_timeout
        self._on_fatal = on_fatal
        self._stop = threading.Event()
        self._assigned: set[TopicPartitionKey] = set()
        self._paused: set[TopicPartitionKey] = set()
        self._max_uncommitted = max_uncommitted
        #: Paused for each reason (see the module docstring); what is paused is their union.
        self._events_held = False
        self._retries_held = False
        self._ahead: set[TopicPartitionKey] = set()
        #: Retries of this thread's broker calls inside the rebalance callbacks.
        self.calls = BrokerCalls(give_up_after=callback_retry_seconds, stop=self._stop)
        self._callback_since: float | None = None
        self.assignment_received = threading.Event()
        self.last_loop = time.monotonic()
        self.broker_reachable = False
        self._thread = threading.Thread(target=self._run, name="source", daemon=True)

    def _new_consumer(self) -> Consumer:
        """A consumer whose statistics and errors count only while it is the current one (a replaced
        consumer still reports while it closes)."""
        self._generation += 1
        generation = self._generation

        def on_error(error: KafkaError) -> None:
            if generation == self._generation:
                self._on_error(error)

        def on_stats(raw: str) -> None:
            if generation == self._generation:
                self._on_stats(raw)

        return Consumer({**self._config, "error_cb": on_error, "stats_cb": on_stats})

    # --- librdkafka callbacks (called from within poll, i.e. this thread) --------------------------------
    def _on_error(self, error: KafkaError) -> None:
        KAFKA_ERRORS.labels(code=error.name()).inc()
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self.broker_reachable = False
        if error.fatal():
            self._on_fatal(f"fatal consumer error: {error.str()}")
        else:
            log.warning("consumer error", extra={"kafka_error": error.str()})

    def _on_stats(self, raw: str) -> None:
        try:
            stats = json.loads(raw)
        except ValueError:
            return
        self.broker_reachable = any(b.get("state") == "UP" for b in stats.get("brokers", {}).values())
        self.group.on_stats(stats)
        for topic, tstats in stats.get("topics", {}).items():
            for pid, pstats in tstats.get("partitions", {}).items():
                if pid == "-1" or (topic, int(pid)) not in self._assigned:
                    continue
                # Offsets are committed explicitly (never stored): the lag is measured from the committed one.
                lag = pstats.get("consumer_lag", -1)
                if lag is not None and lag >= 0:
                    CONSUMER_LAG.labels(topic=topic, partition=pid).set(lag)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self._consumer:
            return  # a replaced consumer closing: its partitions are gone already
        self.group.joined()
        keys = {(p.topic, p.partition) for p in partitions}
        self._callback_since = time.monotonic()
        try:
            if partitions:
                # librdkafka keeps a partition's pause across a rebalance: one this consumer paused, lost
                # (e.g. while the broker was away) and is given back would never be fetched again.
                consumer.resume(partitions)
            offsets = self._committed(consumer, partitions) if partitions else {}
            self._handler.on_assigned(offsets)
        except RetryStopped:  # stopping while the broker was away: nothing to start
            log.info("partition assignment abandoned: stopping")
            return
        except Exception as exc:  # never out of a callback: librdkafka would lose it inside poll
            log.exception("partition assignment failed; stopping")
            self._on_fatal(f"partition assignment failed: {type(exc).__name__}: {exc}")
            return
        finally:
            self._callback_since = None
        self._assigned |= keys
        self.assignment_received.set()
        log.info("partitions assigned", extra={"partitions": sorted(f"{t}[{p}]" for t, p in keys)})

    def _committed(
        self, consumer: Consumer, partitions: list[TopicPartition]
    ) -> dict[TopicPartitionKey, int]:
        """The group's committed offsets (-1001: none), retried while the broker answers transiently."""

        def read() -> dict[TopicPartitionKey, int]:
            committed = consumer.committed(partitions, timeout=COMMITTED_TIMEOUT_SECONDS)
            for p in committed:
                if p.error is not None:
                    raise KafkaException(p.error)
            return {(p.topic, p.partition): p.offset for p in committed}

        return self.calls.call("committed offsets", read)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self._consumer:
            return
        keys = {(p.topic, p.partition) for p in partitions}
        self._callback_since = time.monotonic()
        try:
            self._handler.drain(keys, self._drain_timeout)
            self._commit(keys, asynchronous=False, retry_for=REVOKE_COMMIT_RETRY_SECONDS)
        except Exception:  # never out of a callback; what was not committed, the next owner redoes
            log.exception("revoke: drain or commit failed; the records stay uncommitted")
        finally:
            self._callback_since = None
            self._handler.on_revoked(keys)
            self._forget(keys)
        log.info("partitions revoked", extra={"partitions": sorted(f"{t}[{p}]" for t, p in keys)})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self._consumer:
            return
        keys = {(p.topic, p.partition) for p in partitions}
        try:
            self._handler.on_lost(keys)
        except Exception:  # never out of a callback
            log.exception("partitions lost: dropping their state failed")
        finally:
            self._forget(keys)
        log.warning("partitions lost", extra={"partitions": sorted(f"{t}[{p}]" for t, p in keys)})

    def _forget(self, keys: set[TopicPartitionKey]) -> None:
        self._assigned -= keys
        paused = keys & self._paused
        if paused:  # see _on_assign: a pause outlives the assignment
            with contextlib.suppress(KafkaException):
                self._consumer.resume([TopicPartition(t, p) for t, p in paused])
        self._paused -= keys
        self._ahead -= keys
        for topic, partition in keys:
            with contextlib.suppress(KeyError):
                CONSUMER_LAG.remove(topic, str(partition))

    # --- the loop --------------------------------------------------------------------------------------
    def start(self) -> None:
        self._subscribe()
        self.group.out_since = time.monotonic()
        self._thread.start()

    def _subscribe(self) -> None:
        self._consumer.subscribe(
            [*self._topics, self._retry_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _watch_group(self) -> None:
        """Out of the group too long: ask a fresh client whether the brokers answer; if they do, the
        consumer is stuck (not the brokers away) and is replaced, at most once per bound."""
        now = time.monotonic()
        if not self.group.overdue() or now < self._next_probe:
            return
        self._next_probe = now + max(self.group.stuck_after, 5.0)
        reachable = brokers_answer(self._config)
        self.group.reachable = reachable
        if not reachable:
            log.warning(
                "not a member of the consumer group; the brokers do not answer either (an outage)",
                extra={"out_of_group_seconds": round(self.group.out_for()), "group": self.group.state},
            )
            return
        log.error(
            "not a member of the consumer group while the brokers answer: replacing the consumer",
            extra={"out_of_group_seconds": round(self.group.out_for()), "group": self.group.state},
        )
        self._replace_consumer()

    def _replace_consumer(self) -> None:
        owned = set(self._assigned)
        if owned:  # not a member for this long: they are someone else's; nothing is committed
            try:
                self._handler.on_lost(owned)
            except Exception:
                log.exception("replacing the consumer: dropping the partitions' state failed")
            self._forget(owned)
        old = self._consumer
        self._consumer = self._new_consumer()
        self._subscribe()
        self.recreated += 1
        # The old one may wait on its coordinator while closing: not on this thread.
        threading.Thread(target=_close_quietly, args=(old,), name="source-close", daemon=True).start()

    def _run(self) -> None:
        last_commit = time.monotonic()
        try:
            while not self._stop.is_set():
                self.last_loop = time.monotonic()
                room = self._room()
                if room > 0:
                    # What is fetched already, at once; else wait for the next record (not for a whole
                    # batch: consume() waits until num_messages arrived or the timeout passed).
                    records = self._consumer.consume(num_messages=room, timeout=0)
                    if not records:
                        records = self._consumer.consume(num_messages=1, timeout=0.05)
                    self._take(records)
                else:
                    # The pipeline is full: wait for it to take more instead of pausing at once (a pause
                    # drops what librdkafka fetched ahead, and the fetch after resuming waits for the
                    # broker); _backpressure pauses when it stays full.
                    self._handler.wait_for_room(self._room_limit, 0.05)
                self._backpressure()
                self._watch_group()
                if time.monotonic() - last_commit >= self._commit_interval:
                    self._commit(None, asynchronous=True)
                    last_commit = time.monotonic()
        except Exception as exc:  # the thread must never die silently
            log.exception("source consumer failed")
            self._on_fatal(f"source consumer failed: {exc}")

    def _room(self) -> int:
        """How many records to take now: bounded by the event records the pipeline may still take,
        unless the event partitions are paused (then only retry records come, bounded by their pause)."""
        if self._events_held:
            return BATCH
        events, _ = self._handler.backlog()
        return max(0, min(BATCH, self._max_pending - events))

    def _take(self, records: list[Message]) -> None:
        good: list[Message] = []
        for msg in records:
            error = msg.error()
            if error is None:
                good.append(msg)
            elif error.fatal():
                self._on_fatal(f"fatal consumer error: {error.str()}")
            elif error.code() != KafkaError._PARTITION_EOF:
                KAFKA_ERRORS.labels(code=error.name()).inc()
                log.warning("consume error", extra={"kafka_error": error.str()})
        if good:
            self.broker_reachable = True
            self._handler.on_records(good)

    def _backpressure(self) -> None:
        events, retries = self._handler.backlog()
        full = events >= self._max_pending
        now = time.monotonic()
        if not full:
            self._full_since = None
        elif self._full_since is None:
            self._full_since = now
        if full and now - (self._full_since or now) >= FULL_GRACE_SECONDS:
            self._events_held = True
        elif events < self._max_pending // 2:
            self._events_held = False
        if retries >= self._max_retry_pending:
            self._retries_held = True
        elif retries < self._max_retry_pending // 2:
            self._retries_held = False
        limit = self._max_uncommitted
        for tp, span in self._handler.spans().items():
            if span >= limit:
                if tp not in self._ahead:
                    log.warning(
                        "partition paused: its uncommitted span passed the limit",
                        extra={"partition": f"{tp[0]}[{tp[1]}]", "span": span, "limit": limit},
                    )
                self._ahead.add(tp)
            elif span < max(1, limit // 2):
                self._ahead.discard(tp)
        self._ahead &= self._assigned
        wanted = set(self._ahead)
        if self._events_held:
            wanted |= {tp for tp in self._assigned if tp[0] != self._retry_topic}
        if self._retries_held:
            wanted |= {tp for tp in self._assigned if tp[0] == self._retry_topic}
        to_pause, to_resume = wanted - self._paused, self._paused - wanted
        if to_pause:
            self._consumer.pause([TopicPartition(t, p) for t, p in to_pause])
            self._paused |= to_pause
        if to_resume:
            self._consumer.resume([TopicPartition(t, p) for t, p in to_resume])
            self._paused -= to_resume
        PARTITIONS_PAUSED.set(len(self._paused))

    def _commit(
        self, keys: set[TopicPartitionKey] | None, asynchronous: bool, retry_for: float = 0.0
    ) -> None:
        scope = self._assigned if keys is None else keys & self._assigned
        offsets = self._handler.committable(scope, self._positions(scope))
        if not offsets:
            return
        listed = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        if asynchronous:
            try:
                self._consumer.commit(offsets=listed, asynchronous=True)
            except KafkaException as exc:
                self._commit_failed(exc)
            return
        deadline = time.monotonic() + retry_for
        pause = 0.1
        while True:
            try:
                self._consumer.commit(offsets=listed, asynchronous=False)
            except KafkaException as exc:
                if is_retriable(exc) and time.monotonic() + pause < deadline and not self._stop.is_set():
                    log.warning("commit failed; retrying", extra={"error": str(exc)[:300]})
                    self._stop.wait(pause)  # a pause between attempts, cut short by stop
                    pause = min(pause * 2, 2.0)
                    continue
                self._commit_failed(exc)
                return
            self._handler.mark_committed(offsets)
            return

    def _positions(self, scope: set[TopicPartitionKey]) -> dict[TopicPartitionKey, int] | None:
        """The consumer's positions (the offset after the last record or marker it passed)."""
        if not scope:
            return None
        try:
            listed = self._consumer.position([TopicPartition(t, p) for t, p in scope])
        except KafkaException:
            return None
        return {(p.topic, p.partition): p.offset for p in listed if p.offset >= 0}

    @staticmethod
    def _commit_failed(exc: KafkaException) -> None:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and error.code() == KafkaError._NO_OFFSET:
            return
        log.warning("commit failed; will retry", extra={"error": str(exc)})

    def stop(self, timeout: float) -> None:
        """Stop fetching; the owner drains, then calls :meth:`close`."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    def close(self, drain_timeout: float) -> None:
        """After the loop stopped: drain everything, commit synchronously, leave the group."""
        self._handler.drain(set(self._assigned), drain_timeout)
        self._commit(None, asynchronous=False, retry_for=REVOKE_COMMIT_RETRY_SECONDS)
        self._consumer.close()

    def alive(self, stale_after: float = 30.0) -> bool:
        """False only when the loop was started and died or is stuck; waiting to start is alive.

        Stuck: the loop has not come round for ``stale_after`` seconds, except inside a rebalance
        callback that is making progress (a drain, an outcome read-back), or a broker call has been
        retried on transient errors for ``stale_after`` seconds, or the consumer has been out of its
        group for its bound while the brokers answer (see :class:`GroupWatch`)."""
        now = time.monotonic()
        if self.group.stuck():
            return False
        retrying = self.calls.retrying
        for stuck in (None if retrying is None else retrying.since, self._handler.stuck_since()):
            if stuck is not None and now - stuck >= stale_after:
                return False
        if self._thread.ident is None:
            return not self._stop.is_set()
        if not self._thread.is_alive():
            return False
        since = self._callback_since
        if since is not None:
            return now - since < stale_after + self._drain_timeout + 120.0
        return now - self.last_loop < stale_after


def _close_quietly(consumer: Consumer) -> None:
    try:
        consumer.close()
    except Exception as exc:  # a replaced consumer: nothing depends on its close
        log.info("closing the replaced consumer failed", extra={"error": str(exc)[:300]})
