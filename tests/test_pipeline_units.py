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
from consumer.pipeline.offsets import OffsetTracker
from consumer.pipeline.retry import RetryRecord, next_delay, schedule
from tests.factories import make_event

TP = ("lms.events", 0)


def test_commit_stops_at_the_first_unfinished_record() -> None:
    tracker = OffsetTracker()
    for offset in range(10, 15):
        tracker.started(TP, offset)
    for offset in (10, 11, 13, 14):
        tracker.done(TP, offset)
    assert tracker.committable() == {TP: 12}
    tracker.done(TP, 12)
    assert tracker.committable() == {TP: 15}
    tracker.mark_committed({TP: 15})
    assert tracker.committable() == {}


def test_nothing_to_commit_before_anything_is_done() -> None:
    tracker = OffsetTracker()
    tracker.started(TP, 0)
    assert tracker.committable() == {TP: 0}
    tracker.mark_committed({TP: 0})
    assert tracker.committable() == {}


def test_forget_drops_lost_partitions() -> None:
    tracker = OffsetTracker()
    tracker.started(TP, 3)
    tracker.started(("calllogic.events", 1), 7)
    tracker.forget({TP})
    assert set(tracker.committable()) == {("calllogic.events", 1)}
    assert tracker.pending() == 1


@settings(max_examples=300)
@given(st.integers(1, 60), st.randoms(use_true_random=False), st.integers(0, 1000))
def test_committable_is_always_the_first_gap(count: int, rnd: random.Random, base: int) -> None:
    """Whatever order records finish in, the committed offset never passes an unfinished record."""
    tracker = OffsetTracker()
    offsets = list(range(base, base + count))
    for offset in offsets:
        tracker.started(TP, offset)
    order = offsets[:]
    rnd.shuffle(order)
    finished: set[int] = set()
    for offset in order[: rnd.randint(0, count)]:
        tracker.done(TP, offset)
        finished.add(offset)
        expected = next((o for o in offsets if o not in finished), base + count)
        assert tracker.committable() == {TP: expected}


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
