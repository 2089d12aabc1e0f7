"""The pipeline's state of the partitions this replica owns, one :class:`Partition` per assignment.

A partition's state is created when it is assigned and dropped when it is revoked (after the drain
and the final commit) or lost. Nothing of an earlier assignment survives into a later one: offsets,
read-back results and tasks belong to the :class:`Partition` object, and work that still refers to
a dropped object (a record fetched before a revoke, a task finishing late) is recognised by identity
and changes nothing.

Each task of a partition is in one of two phases:

- ``WAITING``: it has not begun to send (a retry sleeping until its due time, a delivery queued for
  a mail slot, a decode waiting for the Schema Registry). It may be cancelled on revoke and is
  cancelled when the partition is lost: its record stays uncommitted and the next owner does it.
- ``SENDING``: a mail may be on the wire. It is never cancelled; a revoke waits (up to the drain
  timeout) for its outcome before committing.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

from consumer.pipeline.offsets import PartitionOffsets, TopicPartitionKey

TaskT = TypeVar("TaskT", bound=Hashable)

#: The group has no committed offset (librdkafka's OFFSET_INVALID).
NO_OFFSET = -1001


class Phase(Enum):
    WAITING = "waiting"
    SENDING = "sending"


@dataclass(eq=False)
class Partition(Generic[TaskT]):
    key: TopicPartitionKey
    offsets: PartitionOffsets
    #: Results the outcome read-back found for uncommitted records: offset -> rule ids.
    delivered: dict[int, set[str]] = field(default_factory=dict)
    tasks: dict[TaskT, Phase] = field(default_factory=dict)
    #: Revoked, draining: records still to be started are not taken any more.
    closing: bool = False

    def add(self, task: TaskT) -> None:
        self.tasks[task] = Phase.WAITING

    def sending(self, task: TaskT) -> None:
        if task in self.tasks:
            self.tasks[task] = Phase.SENDING

    def discard(self, task: TaskT) -> None:
        self.tasks.pop(task, None)

    def waiting(self) -> list[TaskT]:
        return [t for t, phase in self.tasks.items() if phase is Phase.WAITING]

    def busy(self) -> bool:
        return bool(self.tasks)

    def mark_committed(self, offset: int) -> None:
        self.offsets.mark_committed(offset)
        for old in [o for o in self.delivered if o < offset]:
            del self.delivered[old]


class PartitionTable(Generic[TaskT]):
    """The partitions owned now. Not thread-safe: the pipeline guards it with its lock."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartitionKey, Partition[TaskT]] = {}

    def assign(self, key: TopicPartitionKey, committed: int) -> Partition[TaskT]:
        """A fresh state for ``key`` (whatever an earlier assignment left is gone)."""
        part: Partition[TaskT] = Partition(key, PartitionOffsets(committed if committed >= 0 else None))
        self._parts[key] = part
        return part

    def get(self, key: TopicPartitionKey) -> Partition[TaskT] | None:
        return self._parts.get(key)

    def owns(self, part: Partition[TaskT]) -> bool:
        """Whether ``part`` is the current state of its partition (not a dropped one)."""
        return self._parts.get(part.key) is part

    def drop(self, keys: Iterable[TopicPartitionKey]) -> list[Partition[TaskT]]:
        return [p for p in (self._parts.pop(k, None) for k in keys) if p is not None]

    def select(self, keys: Iterable[TopicPartitionKey] | None = None) -> list[Partition[TaskT]]:
        if keys is None:
            return list(self._parts.values())
        return [p for p in (self._parts.get(k) for k in keys) if p is not None]

    def committable(
        self,
        keys: Iterable[TopicPartitionKey] | None = None,
        positions: dict[TopicPartitionKey, int] | None = None,
    ) -> dict[TopicPartitionKey, int]:
        """What may be committed; ``positions`` (the consumer's, per partition) let a partition that is
        done pass the offsets that hold no record (see PartitionOffsets.passed)."""
        out: dict[TopicPartitionKey, int] = {}
        for part in self.select(keys):
            if positions is not None and part.key in positions:
                part.offsets.passed(positions[part.key])
            offset = part.offsets.committable()
            if offset is not None:
                out[part.key] = offset
        return out

    def mark_committed(self, offsets: dict[TopicPartitionKey, int]) -> None:
        for key, offset in offsets.items():
            part = self._parts.get(key)
            if part is not None:
                part.mark_committed(offset)

    def spans(self) -> dict[TopicPartitionKey, int]:
        return {key: part.offsets.span() for key, part in self._parts.items()}

    def keys(self) -> set[TopicPartitionKey]:
        return set(self._parts)

    def tasks(self) -> int:
        return sum(len(p.tasks) for p in self._parts.values())
