"""A model of the consumer's offsets and partition ownership (consumer/pipeline/partitions.py and
offsets.py, driven the way the pipeline and the source drive them), checked by hypothesis over
arbitrary sequences of fetch, start, send, finish, fail, retry, assign, revoke, lost and commit, with
another group member taking over whatever this one gives up.

Invariants: a committed offset never passes a record without a durable outcome; within an
assignment it never moves backwards (nor below the offset found at assignment); once every record
of an owned partition is fetched and done, the committable offset is the partition's end.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from consumer.pipeline.offsets import TopicPartitionKey
from consumer.pipeline.partitions import NO_OFFSET, Partition, PartitionTable, Phase

TPS: list[TopicPartitionKey] = [("lms", 0), ("lms", 1), ("retry", 0)]
tps = st.sampled_from(TPS)


@dataclass(eq=False)
class Fetched:
    """A record handed to the loop and not started yet."""

    offset: int
    part: Partition[int]


class OffsetsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table: PartitionTable[int] = PartitionTable()
        self.log_end = dict.fromkeys(TPS, 0)
        #: Offsets whose outcome is durable (written by this member or another one).
        self.durable: dict[TopicPartitionKey, set[int]] = {tp: set() for tp in TPS}
        self.markers: dict[TopicPartitionKey, set[int]] = {tp: set() for tp in TPS}
        #: The consumer's position per partition, kept by librdkafka across assignments.
        self.stale_positions: dict[TopicPartitionKey, int] = {}
        self.seen_record: dict[TopicPartitionKey, bool] = {}
        self.group_committed: dict[TopicPartitionKey, int | None] = dict.fromkeys(TPS)
        self.fetch_pos: dict[TopicPartitionKey, int] = {}
        #: The last offset this member committed in the current assignment of each partition.
        self.assignment_commits: dict[TopicPartitionKey, int | None] = {}
        self.fetched: list[Fetched] = []
        self.tasks: dict[int, tuple[Partition[int], int]] = {}
        #: Records whose processing failed in this assignment: never done here.
        self.failed: dict[TopicPartitionKey, set[int]] = {}
        self.next_task = 0

    # --- the log and the other member ------------------------------------------------------------
    @rule(tp=tps, n=st.integers(1, 20))
    def produce(self, tp: TopicPartitionKey, n: int) -> None:
        self.log_end[tp] += n

    @rule(tp=tps)
    def transaction_marker(self, tp: TopicPartitionKey) -> None:
        """An offset that holds no record (a transaction's commit marker): never handed over."""
        self.markers[tp].add(self.log_end[tp])
        self.durable[tp].add(self.log_end[tp])
        self.log_end[tp] += 1

    @rule(tp=tps)
    def other_member_advances(self, tp: TopicPartitionKey) -> None:
        """While this member does not own ``tp``, another one does everything up to the end."""
        if self.table.get(tp) is not None:
            return
        self.durable[tp].update(range(self.log_end[tp]))
        self.group_committed[tp] = self.log_end[tp]

    # --- ownership -------------------------------------------------------------------------------------
    @rule(tp=tps)
    def assign(self, tp: TopicPartitionKey) -> None:
        if self.table.get(tp) is not None:
            return
        committed = self.group_committed[tp]
        self.table.assign(tp, NO_OFFSET if committed is None else committed)
        self.fetch_pos[tp] = committed or 0
        self.seen_record[tp] = False
        self.assignment_commits[tp] = committed
        self.failed[tp] = set()

    def _cancel_waiting(self, part: Partition[int]) -> None:
        for task in part.waiting():
            assert part.tasks[task] is Phase.WAITING, "a mail being sent was cancelled"
            part.discard(task)
            del self.tasks[task]  # cancelled: its record stays pending, not durable

    @rule(tp=tps, drain_times_out=st.booleans())
    def revoke(self, tp: TopicPartitionKey, drain_times_out: bool) -> None:
        part = self.table.get(tp)
        if part is None:
            return
        part.closing = True
        self._cancel_waiting(part)
        if not drain_times_out:  # the mails being sent finish before the commit
            for task in list(part.tasks):
                self._finish(task)
        self._commit({tp})
        self.table.drop([tp])
        self.fetch_pos.pop(tp)

    @rule(tp=tps)
    def lost(self, tp: TopicPartitionKey) -> None:
        for part in self.table.drop([tp]):
            self._cancel_waiting(part)  # the ones sending go on (their mail may be on the wire)
            self.fetch_pos.pop(tp)

    # --- records ------------------------------------------------------------------------------------
    @rule(tp=tps, n=st.integers(1, 10))
    def fetch(self, tp: TopicPartitionKey, n: int) -> None:
        part = self.table.get(tp)
        if part is None or part.closing:
            return
        start = self.fetch_pos[tp]
        for offset in range(start, min(self.log_end[tp], start + n)):
            if offset not in self.markers[tp]:
                part.offsets.started(offset)
                self.fetched.append(Fetched(offset, part))
                self.seen_record[tp] = True
            self.fetch_pos[tp] = offset + 1
            self.stale_positions[tp] = offset + 1

    @precondition(lambda self: bool(self.fetched))
    @rule(index=st.integers(0, 1000), needs_mail=st.booleans())
    def start(self, index: int, needs_mail: bool) -> None:
        item = self.fetched.pop(index % len(self.fetched))
        if not self.table.owns(item.part) or item.part.closing:
            return  # revoked or lost since it was fetched: dropped, the next owner has it
        if not needs_mail:  # no rule matched: done at once
            self.durable[item.part.key].add(item.offset)
            item.part.offsets.done(item.offset)
            return
        task = self.next_task
        self.next_task += 1
        item.part.add(task)
        self.tasks[task] = (item.part, item.offset)

    def _pick(self, index: int, phase: Phase | None = None) -> int | None:
        candidates = sorted(t for t, (p, _) in self.tasks.items() if phase is None or p.tasks.get(t) is phase)
        return candidates[index % len(candidates)] if candidates else None

    @precondition(lambda self: bool(self.tasks))
    @rule(index=st.integers(0, 1000))
    def send(self, index: int) -> None:
        task = self._pick(index, Phase.WAITING)
        if task is not None:
            self.tasks[task][0].sending(task)

    def _finish(self, task: int) -> None:
        part, offset = self.tasks.pop(task)
        part.discard(task)
        self.durable[part.key].add(offset)
        part.offsets.done(offset)

    @precondition(lambda self: bool(self.tasks))
    @rule(index=st.integers(0, 1000))
    def finish(self, index: int) -> None:
        """The outcome (sent, failed, DLQ) is acknowledged: the record is done."""
        task = self._pick(index, Phase.SENDING)
        if task is not None:
            self._finish(task)

    @precondition(lambda self: bool(self.tasks))
    @rule(index=st.integers(0, 1000))
    def retry(self, index: int) -> None:
        """A transient failure handed to the retry topic with its ``retrying`` outcome (one
        transaction): durable, so the record is done."""
        task = self._pick(index)
        if task is not None:
            self._finish(task)

    @precondition(lambda self: bool(self.tasks))
    @rule(index=st.integers(0, 1000))
    def fail(self, index: int) -> None:
        """The outcome could not be written: the record is never done by this assignment."""
        task = self._pick(index)
        if task is None:
            return
        part, offset = self.tasks.pop(task)
        part.discard(task)
        if self.table.owns(part):
            self.failed[part.key].add(offset)

    def _positions(self) -> dict[TopicPartitionKey, int]:
        """The consumer's positions; a partition given back may report the position of its earlier
        assignment until a record of the new one is consumed."""
        positions = dict(self.stale_positions)
        for tp, pos in self.fetch_pos.items():
            if self.seen_record.get(tp):
                positions[tp] = pos
        return positions

    @rule()
    def commit(self) -> None:
        self._commit(None)

    def _commit(self, keys: set[TopicPartitionKey] | None) -> None:
        offsets = self.table.committable(keys, self._positions())
        for tp, offset in offsets.items():
            missing = set(range(offset)) - self.durable[tp]
            assert not missing, (
                f"{tp}: commit {offset} passes records without an outcome: {sorted(missing)[:5]}"
            )
            previous = self.assignment_commits[tp]
            assert previous is None or offset > previous, f"{tp}: commit {offset} after {previous}"
            self.assignment_commits[tp] = offset
            self.group_committed[tp] = offset
        self.table.mark_committed(offsets)

    # --- invariants --------------------------------------------------------------------------------
    @invariant()
    def committed_offsets_have_outcomes(self) -> None:
        for tp, committed in self.group_committed.items():
            if committed is not None:
                assert set(range(committed)) <= self.durable[tp], tp

    @invariant()
    def everything_done_is_committable_to_the_end(self) -> None:
        for part in self.table.select():
            tp = part.key
            floor = self.assignment_commits[tp]
            end = self.log_end[tp]
            everything_done = (
                self.fetch_pos[tp] == end
                and not part.tasks
                and not self.failed[tp]
                and not any(f.part is part for f in self.fetched)
            )
            if not everything_done:
                continue
            offset = self.table.committable({tp}, self._positions()).get(tp)
            if floor is not None and floor >= end:
                assert offset is None, f"{tp}: {offset} committable at the end {end}"
            elif end > (floor or 0) and self.seen_record[tp]:
                assert offset == end, f"{tp}: everything done, yet {offset} committable, not {end}"

    @invariant()
    def spans_are_bounded_by_what_was_fetched(self) -> None:
        for tp, span in self.table.spans().items():
            assert 0 <= span <= self.log_end[tp]


OffsetsModel.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_offsets_and_ownership = OffsetsModel.TestCase


@pytest.mark.slow
def test_offsets_and_ownership_long_run() -> None:
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        OffsetsModel,
        settings=settings(
            max_examples=3000, stateful_step_count=150, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )
