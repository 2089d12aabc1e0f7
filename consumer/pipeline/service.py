"""``eventmail run``: wires the source thread, the record processor, the rule store, the outcome
producer and the health endpoint, and runs until SIGTERM/SIGINT.

Threads: the *source* thread owns the Kafka consumer; everything else (decode, match, render, send,
outcomes) runs on the asyncio loop. The two meet in :class:`Pipeline`, whose shared state (the
offset tracker and the per-partition task sets) is guarded by one lock.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Coroutine
from typing import Any

from confluent_kafka import Message

from consumer.observability.metrics import READY
from consumer.pipeline.dedup import Delivered, read_delivered
from consumer.pipeline.offsets import OffsetTracker, TopicPartitionKey, position
from consumer.pipeline.records import RecordProcessor
from consumer.settings import Settings

log = logging.getLogger(__name__)

#: Records done without a task are released (committable, no longer pending) in steps of this many.
RELEASE_EVERY = 64


class Pipeline:
    """The asyncio side of the consumer; its SourceHandler methods are called from the source thread."""

    def __init__(
        self, settings: Settings, loop: asyncio.AbstractEventLoop, processor: RecordProcessor
    ) -> None:
        self.settings = settings
        self.loop = loop
        self.processor = processor
        self.retry_topic = settings.topics.retry
        self._lock = threading.Lock()
        #: Signalled (under the lock) when pending event records finish: the source waits on it.
        self._room = threading.Condition(self._lock)
        self._tracker = OffsetTracker()
        self._tasks: dict[TopicPartitionKey, set[asyncio.Task[None]]] = defaultdict(set)
        self._delivered: Delivered = {}
        self._owned: set[TopicPartitionKey] = set()
        self._event_pending = 0
        self._retry_pending = 0
        self.fatal: str | None = None

    # --- SourceHandler (source thread) -----------------------------------------------------------------
    def on_records(self, records: list[Message]) -> None:
        retry_topic = self.retry_topic
        positions = [position(msg) for msg in records]
        with self._lock:
            started = self._tracker.started
            retries = 0
            for topic, partition, offset in positions:
                started((topic, partition), offset)
                if topic == retry_topic:
                    retries += 1
            self._retry_pending += retries
            self._event_pending += len(records) - retries
        self.loop.call_soon_threadsafe(self._spawn, records, positions)

    def wait_for_room(self, limit: int, timeout: float) -> bool:
        """Block until fewer than ``limit`` event records are pending (or ``timeout`` passes)."""
        with self._room:
            return self._room.wait_for(lambda: self._event_pending < limit, timeout)

    def on_assigned(self, partitions: dict[TopicPartitionKey, int]) -> None:
        if not partitions:
            return
        with self._lock:
            self._owned |= set(partitions)
        delivered = read_delivered(
            self.settings.kafka_config(),
            self.settings.topics.outcomes,
            partitions,
            self.settings.pipeline.dedup_lookback_seconds,
        )
        with self._lock:
            for tp, offsets in delivered.items():
                self._delivered[tp] = dict(offsets)

    def drain(self, partitions: set[TopicPartitionKey], timeout: float) -> None:
        """Stop taking records of these partitions and wait for their in-flight work; retries still
        waiting for their due time are abandoned (left uncommitted, so the next owner takes them)."""
        if not partitions:
            return
        with self._lock:
            self._owned -= partitions
        # Also a barrier: records handed over before this call are spawned (or dropped) by now.
        retry_tps = {tp for tp in partitions if tp[0] == self.retry_topic}
        asyncio.run_coroutine_threadsafe(self._cancel_waiting(retry_tps), self.loop).result(timeout=10)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                busy = any(self._tasks.get(tp) for tp in partitions)
            if not busy:
                return
            time.sleep(0.01)
        log.warning(
            "drain timed out; unfinished records stay uncommitted", extra={"partitions": len(partitions)}
        )

    def on_lost(self, partitions: set[TopicPartitionKey]) -> None:
        with self._lock:
            self._owned -= partitions
            self._tracker.forget(partitions)
            for tp in partitions:
                self._delivered.pop(tp, None)

    def committable(self, partitions: set[TopicPartitionKey] | None = None) -> dict[TopicPartitionKey, int]:
        with self._lock:
            return self._tracker.committable(partitions)

    def mark_committed(self, offsets: dict[TopicPartitionKey, int]) -> None:
        with self._lock:
            self._tracker.mark_committed(offsets)
            for tp, offset in offsets.items():
                seen = self._delivered.get(tp)
                if seen:
                    for old in [o for o in seen if o < offset]:
                        del seen[old]

    def backlog(self) -> tuple[int, int]:
        return self._event_pending, self._retry_pending

    def already_delivered(self, tp: TopicPartitionKey, offset: int) -> set[str]:
        with self._lock:
            seen = self._delivered.get(tp)
            return seen.pop(offset, set()) if seen else set()

    # --- asyncio side ---------------------------------------------------------------------------------
    def _spawn(self, records: list[Message], positions: list[tuple[str, int, int]]) -> None:
        """Start the work of a batch: records whose decoding and matching is all they need are done
        here (no task), and released in steps so the source can fetch the next records meanwhile;
        the others get a task each."""
        retry_topic = self.retry_topic
        processor = self.processor
        owned: dict[TopicPartitionKey, bool] = {}
        finished: list[tuple[TopicPartitionKey, int]] = []
        dropped_events = dropped_retries = 0
        for msg, (topic, partition, offset) in zip(records, positions, strict=True):
            tp = (topic, partition)
            is_retry = topic == retry_topic
            ours = owned.get(tp)
            if ours is None:
                with self._lock:
                    ours = owned[tp] = tp in self._owned
            if not ours:  # revoked or lost after the record was fetched: the next owner has it
                if is_retry:
                    dropped_retries += 1
                else:
                    dropped_events += 1
                continue
            coro: Coroutine[Any, Any, None] | None
            if is_retry:
                coro = processor.process_retry(msg)
            else:
                try:
                    coro = processor.start_event(msg, topic)
                except Exception as exc:  # as a failed task: the record is not committed, the service stops
                    dropped_events += 1
                    self._failed(tp, offset, exc)
                    continue
                if coro is None:
                    finished.append((tp, offset))
                    if len(finished) >= RELEASE_EVERY:
                        self._release(finished, dropped_events, dropped_retries)
                        finished, dropped_events, dropped_retries = [], 0, 0
                    continue
            task = self.loop.create_task(coro)
            with self._lock:
                self._tasks[tp].add(task)
            task.add_done_callback(functools.partial(self._finished, tp=tp, offset=offset, is_retry=is_retry))
        if finished or dropped_events or dropped_retries:
            self._release(finished, dropped_events, dropped_retries)

    def _release(self, done: list[tuple[TopicPartitionKey, int]], dropped: int, dropped_retries: int) -> None:
        """Records finished without a task (``done``) or not taken (``dropped``) are no longer pending."""
        with self._lock:
            for tp, offset in done:
                self._tracker.done(tp, offset)
            self._event_pending -= len(done) + dropped
            self._retry_pending -= dropped_retries
            self._room.notify_all()

    def _finished(self, task: asyncio.Task[None], tp: TopicPartitionKey, offset: int, is_retry: bool) -> None:
        with self._lock:
            self._tasks[tp].discard(task)
            if is_retry:
                self._retry_pending -= 1
            else:
                self._event_pending -= 1
                self._room.notify_all()
            if task.cancelled():
                return  # abandoned: stays uncommitted
            error = task.exception()
            if error is None:
                self._tracker.done(tp, offset)
                return
        self._failed(tp, offset, error)

    def _failed(self, tp: TopicPartitionKey, offset: int, error: BaseException) -> None:
        # A record whose outcome could not be written must not be committed; the service stops.
        self.fatal = f"record {tp[0]}[{tp[1]}]@{offset} failed: {type(error).__name__}: {error}"
        log.error("record processing failed; stopping", extra={"error": self.fatal})

    async def _cancel_waiting(self, partitions: set[TopicPartitionKey]) -> None:
        with self._lock:
            tasks = [t for tp in partitions for t in self._tasks.get(tp, ())]
        for task in tasks:
            task.cancel()

    def in_flight(self) -> int:
        with self._lock:
            return sum(len(t) for t in self._tasks.values())


async def _heartbeat(state: dict[str, float]) -> None:
    while True:
        state["loop"] = time.monotonic()
        await asyncio.sleep(1.0)


def install_signal_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def set_ready(service: str, ok: bool) -> None:
    READY.labels(service=service).set(1 if ok else 0)


def describe(details: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in details.items())
