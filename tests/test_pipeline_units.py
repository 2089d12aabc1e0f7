"""Pure parts of the pipeline: commit up to the first gap, retry scheduling, retry records."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.errors import CodecError
from consumer.events.triggers import Platform
from consumer.outcomes.model import SourcePosition
from consumer.pipeline.offsets import PartitionOffsets
from consumer.pipeline.retry import RetryRecord, next_delay, schedule
from tests.factories import make_event


def test_commit_stops_at_the_first_unfinished_record() -> None:
    offsets = PartitionOffsets()
    for offset in range(10, 15):
        offsets.started(offset)
    for offset in (10, 11, 13, 14):
        offsets.done(offset)
    assert offsets.committable() == 12
    offsets.done(12)
    assert offsets.committable() == 15
    offsets.mark_committed(15)
    assert offsets.committable() is None


def test_nothing_to_commit_before_anything_is_done() -> None:
    offsets = PartitionOffsets()
    offsets.started(0)
    assert offsets.committable() == 0
    offsets.mark_committed(0)
    assert offsets.committable() is None


def test_committable_never_goes_below_the_offset_found_at_assignment() -> None:
    offsets = PartitionOffsets(committed=5000)
    assert offsets.committable() is None
    offsets.started(5000)
    assert offsets.committable() is None  # 5000 is what the group has already
    offsets.done(5000)
    assert offsets.committable() == 5001
    offsets.mark_committed(5001)
    offsets.mark_committed(4000)  # a late acknowledgement of an older commit changes nothing
    assert offsets.committed == 5001


def test_span_counts_what_waits_behind_the_first_unfinished_record() -> None:
    offsets = PartitionOffsets()
    assert offsets.span() == 0
    for offset in range(100, 110):
        offsets.started(offset)
    for offset in range(101, 110):
        offsets.done(offset)
    assert offsets.span() == 10
    offsets.done(100)
    assert offsets.span() == 0


@settings(max_examples=300)
@given(st.integers(1, 60), st.randoms(use_true_random=False), st.integers(0, 1000))
def test_committable_is_always_the_first_gap(count: int, rnd: random.Random, base: int) -> None:
    """Whatever order records finish in, the committed offset never passes an unfinished record."""
    tracked = PartitionOffsets()
    offsets = list(range(base, base + count))
    for offset in offsets:
        tracked.started(offset)
    order = offsets[:]
    rnd.shuffle(order)
    finished: set[int] = set()
    for offset in order[: rnd.randint(0, count)]:
        tracked.done(offset)
        finished.add(offset)
        expected = next((o for o in offsets if o not in finished), base + count)
        assert tracked.committable() == expected


def test_delays_grow_and_are_capped() -> None:
    random.seed(1)
    assert 2.5 <= next_delay(1, base=5) <= 5
    assert 10 <= next_delay(3, base=5) <= 20
    assert next_delay(30, base=5, cap=600) <= 600


def test_schedule_gives_up_after_the_deadline() -> None:
    event = make_event()
    origin = SourcePosition(topic="lms.events", partition=0, offset=1)
    now = datetime(2026, 11, 1, tzinfo=UTC)
    first = now - timedelta(seconds=3590)
    assert schedule(event, "r", 1, origin, "451", first, 3600, now=now, base_delay=60) is None
    retry = schedule(event, "r", 1, origin, "451", None, 3600, now=now, base_delay=60)
    assert retry is not None
    assert retry.first_failed_at == now
    assert now + timedelta(seconds=30) <= retry.due_at <= now + timedelta(seconds=60)


def test_retry_record_round_trip() -> None:
    event = make_event(Platform.CALL_LOGIC, "amd")
    record = RetryRecord(
        event=event,
        rule_id="r-1",
        attempts=3,
        due_at=datetime(2026, 11, 1, 0, 1, tzinfo=UTC),
        first_failed_at=datetime(2026, 11, 1, tzinfo=UTC),
        origin=SourcePosition(topic="calllogic.events", partition=2, offset=9),
        last_error="451 try later",
    )
    assert RetryRecord.decode(record.encode()) == record


@pytest.mark.parametrize(
    "value",
    [None, b"", b"{}", b'{"platform": "lms"}', b"\xff", b"[1]", b"7", b"[" * 100_000 + b"]" * 100_000],
    ids=["none", "empty", "empty-object", "partial", "not-utf8", "array", "number", "nesting-bomb"],
)
def test_bad_retry_records_are_codec_errors(value: bytes | None) -> None:
    with pytest.raises(CodecError):
        RetryRecord.decode(value)
