"""``eventmail run``: wires the source thread, the record processor, the rule store, the outcome
producer and the health endpoint, and runs until SIGTERM/SIGINT.

Threads: the *source* thread owns the Kafka consumer; everything else (decode, match, render, send,
outcomes) runs on the asyncio loop. The two meet in :class:`Pipeline`, whose shared state (the
partitions owned now, see :mod:`consumer.pipeline.partitions`) is guarded by one lock. Data flows one
way: the source hands records over, the loop finishes them, the source reads what may be committed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Literal

from confluent_kafka import Message

from consumer.errors import CodecError
from consumer.kafka_retry import BrokerCalls
from consumer.observability.metrics import READY
from consumer.pipeline.dedup import ReadbackMemory, read_delivered
from consumer.pipeline.handoff import HandoffAbandonedError
from consumer.pipeline.offsets import TopicPartitionKey, position
from consumer.pipeline.partitions import Partition, PartitionTable
from consumer.pipeline.records import RecordProcessor
from consumer.pipeline.retry import RetryRecord
from consumer.settings import Settings

log = logging.getLogger(__name__)

#: Records done without a task are released (committable, no longer pending) in steps of this many.
RELEASE_EVERY = 64

Task = asyncio.Task[None]
Part = Partition[Task]
#: A record handed to the loop: the message, its position, and the partition state it belongs to.
Handed = tuple[Message, tuple[str, int, int], Part]


class _Work:
    """The record a task works on, seen by every task it starts (a delivery per rule runs in a task of
    its own): the context variable :data:`_WORK` holds it."""

    __slots__ = ("part", "task")

    def __init__(self, part: Part) -> None:
        self.part = part
        self.task: Task | None = None


_WORK: contextvars.ContextVar[_Work | None] = contextvars.ContextVar("eventmail_work", default=None)


class SendSlots(asyncio.Semaphore):
    """The processor's mail slots: taking one is where a record's work begins to send."""

    def __init__(self, value: int, on_sending: Callable[[_Work], None]) -> None:
        super().__init__(value)
        self._on_sending = on_sending

    async def acquire(self) -> Literal[True]:
        await super().acquire()
        work = _WORK.get()
        if work is not None:
            self._on_sending(work)
        return True


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
        #: Signalled (under the lock) when records finish: the source waits on it for room or a drain.
        self._room = threading.Condition(self._lock)
        #: The source thread waits for fewer pending event records than this (0: it does not wait);
        #: a finished record wakes it only then, not once per record while the pipeline stays full.
        self._room_wanted = 0
        #: Drains waiting for their partitions' records to finish: each finished record wakes them.
        self._drains_waiting = 0
        self._parts: PartitionTable[Task] = PartitionTable()
        #: The partition state of each running task (also of partitions dropped since).
        self._task_part: dict[Task, Part] = {}
        self._event_pending = 0
        self._retry_pending = 0
        self.fatal: str | None = None
        #: Retries of the start-up reads made in the rebalance callbacks (the source thread's).
        self.reads = BrokerCalls(give_up_after=300.0)
        #: What the outcome read-backs found: a partition assigned again reads only what came since.
        self.readback = ReadbackMemory()
        # The processor's deliveries take these slots: the pipeline sees which tasks are sending.
        processor.mail_slots = SendSlots(settings.pipeline.max_in_flight, self._sending)
        # A hand-off waiting for the broker is given up once its partition is no longer ours.
        processor.handoff.abandoned = self._work_lost

    # --- SourceHandler (source thread) -----------------------------------------------------------------
    def on_records(self, records: list[Message]) -> None:
        retry_topic = self.retry_topic
        handed: list[Handed] = []
        retries = 0
        with self._lock:
            get = self._parts.get
            for msg in records:
                pos = position(msg)
                part = get((pos[0], pos[1]))
                if part is None:  # not ours: the owner fetches it
                    continue
                part.offsets.started(pos[2])  # pending, so no commit of this assignment passes it
                if part.closing:  # being revoked: left for the next owner
                    continue
                handed.append((msg, pos, part))
                if pos[0] == retry_topic:
                    retries += 1
            self._retry_pending += retries
            self._event_pending += len(handed) - retries
        if handed:
            self.loop.call_soon_threadsafe(self._spawn, handed)

    def wait_for_room(self, limit: int, timeout: float) -> bool:
        """Block until fewer than ``limit`` event records are pending (or ``timeout`` passes)."""
        with self._room:
            self._room_wanted = limit
            try:
                return self._room.wait_for(lambda: self._event_pending < limit, timeout)
            finally:
                self._room_wanted = 0

    def on_assigned(self, partitions: dict[TopicPartitionKey, int]) -> None:
        """A fresh state per partition, then the outcome read-back of its uncommitted records
        (retried while the broker answers with transient errors)."""
        if not partitions:
            return
        with self._lock:
            created = {tp: self._parts.assign(tp, committed) for tp, committed in partitions.items()}
        delivered = self.reads.call(
            "outcome read-back",
            lambda: read_delivered(
                self.settings.kafka_config(),
                self.settings.topics.outcomes,
                partitions,
                self.settings.pipeline.dedup_lookback_seconds,
                memory=self.readback,
            ),
        )
        with self._lock:
            for tp, offsets in delivered.items():
                part = created.get(tp)
                if part is not None and self._parts.owns(part):
                    part.delivered = dict(offsets)

    def drain(self, partitions: set[TopicPartitionKey], timeout: float) -> None:
        """Stop taking records of these partitions; cancel their tasks that have not begun to send
        (their records stay uncommitted: the next owner does them) and wait, up to ``timeout``, for
        the ones sending. Never raises."""
        deadline = time.monotonic() + timeout
        with self._lock:
            parts = self._parts.select(partitions)
            for part in parts:
                part.closing = True
        if not parts:
            return
        # Also a barrier: records handed over before this call are spawned (or dropped) by now.
        barrier = asyncio.run_coroutine_threadsafe(self._cancel_waiting(parts), self.loop)
        try:
            barrier.result(timeout=max(0.1, deadline - time.monotonic()))
        except (TimeoutError, concurrent.futures.TimeoutError):
            log.warning("drain: the event loop did not answer in time", extra={"partitions": len(parts)})
        with self._room:
            self._drains_waiting += 1
            try:
                idle = self._room.wait_for(
                    lambda: not any(p.busy() for p in parts), max(0.0, deadline - time.monotonic())
                )
            finally:
                self._drains_waiting -= 1
        if not idle:
            with self._lock:
                sending = sum(len(p.tasks) for p in parts)
            log.warning(
                "drain timed out; unfinished records stay uncommitted",
                extra={"partitions": len(parts), "sending": sending},
            )

    def on_revoked(self, partitions: set[TopicPartitionKey]) -> None:
        """After the drain and the final commit: the partitions' state goes."""
        with self._lock:
            self._parts.drop(partitions)

    def on_lost(self, partitions: set[TopicPartitionKey]) -> None:
        """No longer ours (another member may have them already): drop the state at once and cancel
        every task that has not begun to send; nothing is committed."""
        with self._lock:
            dropped = self._parts.drop(partitions)
        if dropped:
            self.loop.call_soon_threadsafe(self._cancel_now, dropped)

    def committable(
        self,
        partitions: set[TopicPartitionKey] | None = None,
        positions: dict[TopicPartitionKey, int] | None = None,
    ) -> dict[TopicPartitionKey, int]:
        with self._lock:
            return self._parts.committable(partitions, positions)

    def mark_committed(self, offsets: dict[TopicPartitionKey, int]) -> None:
        with self._lock:
            self._parts.mark_committed(offsets)

    def backlog(self) -> tuple[int, int]:
        return self._event_pending, self._retry_pending

    def stuck_since(self) -> float | None:
        retrying = self.reads.retrying
        return None if retrying is None else retrying.since

    def spans(self) -> dict[TopicPartitionKey, int]:
        """Per partition owned, how many offsets are held uncommitted (see PartitionOffsets.span)."""
        with self._lock:
            return self._parts.spans()

    def already_delivered(self, tp: TopicPartitionKey, offset: int) -> set[str]:
        with self._lock:
            part = self._parts.get(tp)
            return part.delivered.pop(offset, set()) if part else set()

    # --- asyncio side ---------------------------------------------------------------------------------
    def _spawn(self, handed: list[Handed]) -> None:
        """Start the work of a batch: records whose decoding and matching is all they need are done
        here (no task), and released in steps so the source can fetch the next records meanwhile;
        the others get a task each."""
        retry_topic = self.retry_topic
        processor = self.processor
        ours: dict[int, bool] = {}
        finished: list[tuple[Part, int]] = []
        dropped_events = dropped_retries = 0
        for msg, (topic, _, offset), part in handed:
            is_retry = topic == retry_topic
            owned = ours.get(id(part))
            if owned is None:
                with self._lock:
                    owned = ours[id(part)] = self._parts.owns(part) and not part.closing
            if not owned:  # revoked or lost after the record was fetched: the next owner has it
                if is_retry:
                    dropped_retries += 1
                else:
                    dropped_events += 1
                continue
            coro: Coroutine[Any, Any, None] | None
            if is_retry:
                coro = self._retry_when_due(msg)
            else:
                try:
                    coro = processor.start_event(msg, topic)
                except Exception as exc:  # as a failed task: the record is not committed, the service stops
                    dropped_events += 1
                    self._failed(part.key, offset, exc)
                    continue
                if coro is None:
                    finished.append((part, offset))
                    if len(finished) >= RELEASE_EVERY:
                        self._release(finished, dropped_events, dropped_retries)
                        finished, dropped_events, dropped_retries = [], 0, 0
                    continue
            work = _Work(part)
            context = contextvars.copy_context()
            context.run(_WORK.set, work)
            task = work.task = self.loop.create_task(coro, context=context)
            with self._lock:
                part.add(task)
                self._task_part[task] = part
            task.add_done_callback(
                functools.partial(self._finished, part=part, offset=offset, is_retry=is_retry)
            )
        if finished or dropped_events or dropped_retries:
            self._release(finished, dropped_events, dropped_retries)

    async def _retry_when_due(self, msg: Message) -> None:
        """A retry record: wait (cancellable) until it is due, then deliver (sending, not cancelled)."""
        due = _due_at(msg)
        if due is not None:
            wait = (due - datetime.now(UTC)).total_seconds()
            if wait > 0:
                await asyncio.sleep(wait)
        work = _WORK.get()
        if work is not None:
            self._sending(work)
        await self.processor.process_retry(msg)

    def _work_lost(self) -> bool:
        """Whether the record the calling task works on belongs to a partition no longer ours."""
        work = _WORK.get()
        if work is None:
            return False
        with self._lock:
            return not self._parts.owns(work.part)

    def _sending(self, work: _Work) -> None:
        with self._lock:
            if work.task is not None:
                work.part.sending(work.task)

    def _release(self, done: list[tuple[Part, int]], dropped: int, dropped_retries: int) -> None:
        """Records finished without a task (``done``) or not taken (``dropped``) are no longer pending."""
        with self._lock:
            for part, offset in done:
                part.offsets.done(offset)
            self._event_pending -= len(done) + dropped
            self._retry_pending -= dropped_retries
            self._wake_waiters()

    def _wake_waiters(self) -> None:
        """Under the lock, after records finished: wake a drain, or the source once there is room."""
        if self._drains_waiting or self._event_pending < self._room_wanted:
            self._room.notify_all()

    def _finished(self, task: Task, part: Part, offset: int, is_retry: bool) -> None:
        with self._lock:
            part.discard(task)
            self._task_part.pop(task, None)
            if is_retry:
                self._retry_pending -= 1
            else:
                self._event_pending -= 1
            self._wake_waiters()
            if task.cancelled():
                return  # abandoned: stays uncommitted
            error = task.exception()
            if error is None:
                part.offsets.done(offset)
                return
            if isinstance(error, HandoffAbandonedError):
                return  # its partition went before the hand-off was written: the next owner does it
        self._failed(part.key, offset, error)

    def _failed(self, tp: TopicPartitionKey, offset: int, error: BaseException) -> None:
        # A record whose outcome could not be written must not be committed; the service stops.
        self.fatal = f"record {tp[0]}[{tp[1]}]@{offset} failed: {type(error).__name__}: {error}"
        log.error("record processing failed; stopping", extra={"error": self.fatal})

    async def _cancel_waiting(self, parts: list[Part]) -> None:
        self._cancel_now(parts)

    def _cancel_now(self, parts: list[Part]) -> None:
        with self._lock:
            tasks = [t for part in parts for t in part.waiting()]
        for task in tasks:
            task.cancel()

    def in_flight(self) -> int:
        with self._lock:
            return len(self._task_part)


def _due_at(msg: Message) -> datetime | None:
    """When a retry record is due (None when it does not decode: the processor sends it to the DLQ)."""
    try:
        return RetryRecord.decode(msg.value()).due_at
    except CodecError:
        return None


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
