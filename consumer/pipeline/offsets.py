"""Which source offsets of one partition may be committed: up to the first record not yet done.

A record is done when every mail it caused has a durable outcome (or it went to the DLQ, or no rule
matched). Records finish out of order when mails are sent concurrently; the committable offset is
the lowest offset still pending, or one past the highest seen when nothing is pending. It never goes
below the offset committed when the partition was assigned, nor below one committed since: within an
assignment the committed offset only moves forward. Pure state, no I/O: the pipeline owns the Kafka
calls, and :mod:`consumer.pipeline.partitions` creates one of these per assignment.
"""

from __future__ import annotations

import heapq
from typing import Protocol

TopicPartitionKey = tuple[str, int]


class _Positioned(Protocol):
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...


def position(msg: _Positioned) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed record (always set on records without an error)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("record without a position")
    return topic, partition, offset


class PartitionOffsets:
    """The offsets of one partition in one assignment.

    ``committed`` is the group's committed offset when the partition was assigned (None: the group
    has none); it is the floor of everything :meth:`committable` returns.
    """

    __slots__ = ("_heap", "_pending", "committed", "next_offset")

    def __init__(self, committed: int | None = None) -> None:
        self._pending: set[int] = set()
        self._heap: list[int] = []
        #: One past the highest offset seen.
        self.next_offset: int | None = None
        #: The last offset handed to a commit (or the one found at assignment).
        self.committed = committed

    def started(self, offset: int) -> None:
        self._pending.add(offset)
        following = self.next_offset
        if following is None or offset >= following:
            # Records come in offset order: one past every offset seen is larger than each offset
            # in the heap, so appending it keeps the heap ordered without a sift.
            self._heap.append(offset)
            self.next_offset = offset + 1
        else:
            heapq.heappush(self._heap, offset)

    def done(self, offset: int) -> None:
        self._pending.discard(offset)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def low_water(self) -> int | None:
        """The first offset not done (or one past the highest seen); None before any record."""
        heap, pending = self._heap, self._pending
        while heap and heap[0] not in pending:
            heapq.heappop(heap)
        return heap[0] if heap else self.next_offset

    def committable(self) -> int | None:
        """The offset (the next record to read) that is safe to commit now, when it is past the
        committed one."""
        low = self.low_water()
        if low is None or (self.committed is not None and low <= self.committed):
            return None
        return low

    def passed(self, position: int) -> None:
        """The consumer's position is ``position``: what lies below it and was never handed over is
        no record (a transaction's commit marker, an aborted transaction's records), so once nothing
        is pending the partition is done up to there. Only once a record of this assignment was
        seen: before it, the position may still be one of an earlier assignment of the partition."""
        if self._pending or self.next_offset is None or position <= self.next_offset:
            return
        if self.committed is None or position > self.committed:
            self.next_offset = position

    def mark_committed(self, offset: int) -> None:
        if self.committed is None or offset > self.committed:
            self.committed = offset

    def span(self) -> int:
        """How many offsets are held uncommitted: from the first record not done to the highest seen
        (finished records behind a stuck one count, as their commit waits for it)."""
        low = self.low_water()
        if low is None or self.next_offset is None:
            return 0
        return self.next_offset - low
