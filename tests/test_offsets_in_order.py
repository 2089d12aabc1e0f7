"""PartitionOffsets takes records in offset order without sifting its heap (an offset past every one
seen is appended): checked against a plain reference (the lowest pending offset, else one past the
highest seen) over arbitrary sequences, in order or not, with runs of records finished at once (the
records that match no rule) around records that stay pending (the ones sending mail)."""

from __future__ import annotations

import heapq

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.pipeline.offsets import PartitionOffsets


class Reference:
    """What PartitionOffsets must answer, computed from scratch each time."""

    def __init__(self, committed: int | None) -> None:
        self.pending: set[int] = set()
        self.highest: int | None = None
        self.next_offset: int | None = None
        self.committed = committed

    def started(self, offset: int) -> None:
        self.pending.add(offset)
        self.highest = offset if self.highest is None else max(self.highest, offset)
        self.next_offset = max(self.next_offset or 0, offset + 1)

    def done(self, offset: int) -> None:
        self.pending.discard(offset)

    def low_water(self) -> int | None:
        return min(self.pending) if self.pending else self.next_offset

    def committable(self) -> int | None:
        low = self.low_water()
        if low is None or (self.committed is not None and low <= self.committed):
            return None
        return low


step = st.one_of(
    st.tuples(st.just("next"), st.integers(0, 3)),  # the next record(s), with a gap of up to 3 (markers)
    st.tuples(st.just("back"), st.integers(0, 30)),  # a record at or below the highest seen
    st.tuples(st.just("done"), st.integers(0, 40)),
    st.tuples(st.just("run"), st.integers(1, 70)),  # a run of records started and done in a row
    st.tuples(st.just("passed"), st.integers(0, 5)),
    st.tuples(st.just("commit"), st.integers(0, 3)),
)


@settings(max_examples=300, deadline=None)
@given(committed=st.one_of(st.none(), st.integers(0, 20)), steps=st.lists(step, max_size=80))
def test_offsets_agree_with_the_reference(committed: int | None, steps: list[tuple[str, int]]) -> None:
    got, ref = PartitionOffsets(committed), Reference(committed)
    start = committed or 0
    for kind, n in steps:
        highest = ref.highest
        if kind == "next":
            offset = start if highest is None else highest + 1 + n
            got.started(offset)
            ref.started(offset)
        elif kind == "back" and highest is not None:
            offset = max(start, highest - n)
            got.started(offset)
            ref.started(offset)
        elif kind == "done" and ref.pending:
            offset = sorted(ref.pending)[n % len(ref.pending)]
            got.done(offset)
            ref.done(offset)
        elif kind == "run":
            first = start if highest is None else highest + 1
            for offset in range(first, first + n):
                got.started(offset)
                ref.started(offset)
            for offset in range(first, first + n):
                got.done(offset)
                ref.done(offset)
        elif kind == "passed" and ref.next_offset is not None:
            position = ref.next_offset + n
            got.passed(position)
            if not ref.pending and (ref.committed is None or position > ref.committed):
                ref.next_offset = max(ref.next_offset, position)
        elif kind == "commit":
            offset = got.committable()
            if offset is not None:
                got.mark_committed(offset)
                ref.committed = offset if ref.committed is None else max(ref.committed, offset)
        assert got.low_water() == ref.low_water()
        assert got.committable() == ref.committable()
        assert got.pending == len(ref.pending)
        assert got.next_offset == ref.next_offset
        heap = got._heap  # the heap property holds after every step
        assert all(heap[(i - 1) // 2] <= heap[i] for i in range(1, len(heap)))
        assert heapq.nsmallest(1, heap) == heap[:1]


def test_a_run_of_finished_records_never_passes_a_pending_one() -> None:
    """Records that match nothing finish at once; one that sends mail stays pending: nothing at or
    past it is committable until it is done, however many finish behind it."""
    offsets = PartitionOffsets(100)
    for offset in range(100, 164):
        offsets.started(offset)
        offsets.done(offset)
    offsets.started(164)  # matched a rule: its mail is on the way
    for offset in range(165, 1000):
        offsets.started(offset)
        offsets.done(offset)
        assert offsets.committable() == 164
    offsets.mark_committed(164)
    assert offsets.committable() is None
    assert offsets.span() == 1000 - 164
    offsets.done(164)
    assert offsets.committable() == 1000
    assert offsets.span() == 0


def test_a_record_below_the_highest_seen_still_holds_the_commit() -> None:
    """Out of order (a fetch that went back): the lower record is pending and holds the commit."""
    offsets = PartitionOffsets(None)
    for offset in range(10, 20):
        offsets.started(offset)
        offsets.done(offset)
    offsets.started(12)
    assert offsets.committable() == 12
    offsets.started(20)
    offsets.done(20)
    assert offsets.committable() == 12
    offsets.done(12)
    assert offsets.committable() == 21
