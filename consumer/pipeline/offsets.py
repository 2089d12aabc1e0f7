"""Which source offsets may be committed: per partition, up to the first record not yet done.

A record is done when every mail it caused has a durable outcome (or it went to the DLQ, or no rule
matched). Records finish out of order when mails are sent concurrently; the committable offset is
the lowest offset still pending, or one past the highest seen when nothing is pending. Pure state,
no I/O: the pipeline owns the Kafka calls.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
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


@dataclass
class _PartitionState:
    pending: set[int] = field(default_factory=set)
    heap: list[int] = field(default_factory=list)
    next_offset: int | None = None  # one past the highest offset seen
    committed: int | None = None  # the last offset handed to commit

    def low_water(self) -> int | None:
        while self.heap and self.heap[0] not in self.pending:
            heapq.heappop(self.heap)
        return self.heap[0] if self.heap else self.next_offset


class OffsetTracker:
    def __init__(self) -> None:
        self._partitions: dict[TopicPartitionKey, _PartitionState] = {}

    def started(self, tp: TopicPartitionKey, offset: int) -> None:
        state = self._partitions.get(tp)
        if state is None:
            state = self._partitions[tp] = _PartitionState()
        state.pending.add(offset)
        heapq.heappush(state.heap, offset)
        if state.next_offset is None or offset + 1 > state.next_offset:
            state.next_offset = offset + 1

    def done(self, tp: TopicPartitionKey, offset: int) -> None:
        state = self._partitions.get(tp)
        if state is not None:
            state.pending.discard(offset)

    def pending(self, tp: TopicPartitionKey | None = None) -> int:
        if tp is not None:
            state = self._partitions.get(tp)
            return len(state.pending) if state else 0
        return sum(len(s.pending) for s in self._partitions.values())

    def committable(self, tps: set[TopicPartitionKey] | None = None) -> dict[TopicPartitionKey, int]:
        """Offsets (the next record to read) that are safe to commit and not yet committed."""
        out: dict[TopicPartitionKey, int] = {}
        for tp, state in self._partitions.items():
            if tps is not None and tp not in tps:
                continue
            low = state.low_water()
            if low is not None and low != state.committed:
                out[tp] = low
        return out

    def mark_committed(self, offsets: dict[TopicPartitionKey, int]) -> None:
        for tp, offset in offsets.items():
            state = self._partitions.get(tp)
            if state is not None:
                state.committed = offset

    def forget(self, tps: set[TopicPartitionKey]) -> None:
        """Drop partitions that were revoked or lost."""
        for tp in tps:
            self._partitions.pop(tp, None)

    def partitions(self) -> set[TopicPartitionKey]:
        return set(self._partitions)
