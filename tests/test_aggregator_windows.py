"""Window arithmetic: bucketed counts equal a brute-force recount of the same stream.

The recount is written independently of the code under test, with plain datetime arithmetic, from
the documented semantics: a window at clock ``now`` ends at the end of the bucket holding ``now``
(buckets are aligned to the epoch) and starts ``span`` before that end; an observation is dropped
when, on arrival, it is older than the window's start at the clock of that moment.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.aggregator.windows import (
    MAX_ERRORS_PER_BUCKET,
    OTHER_ERRORS,
    SlidingWindow,
    Timeframe,
    WindowSpec,
    percent,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: (span, bucket) in ms, as documented: 5m in 10 s buckets, 1h/3h/6h in 1 min buckets, and a small one.
SIZES = [(300_000, 10_000), (3_600_000, 60_000), (10_800_000, 60_000), (21_600_000, 60_000), (1000, 250)]
SPECS = [WindowSpec(span_ms=span, bucket_ms=bucket) for span, bucket in SIZES]


def at(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def reference_bounds(now_ms: int, spec: WindowSpec) -> tuple[datetime, datetime]:
    """``[start, end)`` of the window at ``now_ms``, from datetimes (not from the code under test)."""
    bucket = timedelta(milliseconds=spec.bucket_ms)
    now = at(now_ms)
    bucket_start = EPOCH + ((now - EPOCH) // bucket) * bucket
    end = bucket_start + bucket
    return end - timedelta(milliseconds=spec.span_ms), end


def as_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


# One step of a stream: ("add", t_ms, status, error) or ("clock", t_ms).
_STATUS = st.sampled_from(["sent", "failed", "retrying", "config_error"])
_ADD = st.tuples(
    st.just("add"), st.integers(0, 8 * 3600 * 1000), _STATUS, st.sampled_from(["e1", "e2", "e3", None])
)
_CLOCK = st.tuples(st.just("clock"), st.integers(0, 8 * 3600 * 1000))


def _brute(steps: list[tuple[object, ...]], spec: WindowSpec) -> tuple[int, int, Counter[str], int]:
    """Recount from scratch: every observation whose bucket is inside the window at the final clock
    and that was not already older than the window when it arrived."""
    clock = -1
    kept: list[tuple[datetime, str, str | None]] = []
    for step in steps:
        t = int(step[1])  # type: ignore[call-overload]
        clock = max(clock, t)
        if step[0] == "add":
            status, error = str(step[2]), step[3]
            if at(t) >= reference_bounds(clock, spec)[0]:
                kept.append((at(t), status, error if isinstance(error, str) else None))
    start, end = reference_bounds(clock, spec)
    inside = [k for k in kept if start <= k[0] < end]
    events = sum(1 for _, s, _ in inside if s in ("sent", "failed"))
    warnings = sum(1 for _, s, _ in inside if s in ("failed", "config_error"))
    errors = Counter(e or "none" for _, s, e in inside if s in ("failed", "config_error"))
    return events, warnings, errors, clock


def _run(steps: list[tuple[object, ...]], spec: WindowSpec) -> SlidingWindow:
    window = SlidingWindow(spec)
    for step in steps:
        if step[0] == "clock":
            window.advance(int(step[1]))  # type: ignore[call-overload]
        else:
            status = str(step[2])
            window.add(
                int(step[1]),  # type: ignore[call-overload]
                event=status in ("sent", "failed"),
                warning=status in ("failed", "config_error"),
                error=(step[3] if isinstance(step[3], str) else "none")
                if status in ("failed", "config_error")
                else None,
            )
    return window


@settings(max_examples=300, deadline=None)
@given(
    spec=st.sampled_from(SPECS),
    steps=st.lists(st.one_of(_ADD, _CLOCK), min_size=1, max_size=120),
)
def test_counts_equal_a_brute_force_recount(spec: WindowSpec, steps: list[tuple[object, ...]]) -> None:
    window = _run(steps, spec)
    events, warnings, errors, clock = _brute(steps, spec)
    assert (window.events, window.warnings) == (events, warnings)
    assert dict(window.top_errors(limit=100)) == dict(errors)
    start, end = reference_bounds(clock, spec)
    assert window.bounds() == (as_ms(start), as_ms(end))
    assert len(window) <= spec.span_ms // spec.bucket_ms


@settings(max_examples=200, deadline=None)
@given(
    spec=st.sampled_from(SPECS),
    start=st.integers(0, 10**9),
    gaps=st.lists(st.integers(0, 90_000), min_size=1, max_size=200),
)
def test_an_in_order_stream_with_clock_steps_matches(spec: WindowSpec, start: int, gaps: list[int]) -> None:
    """Mostly increasing times (the live case), a clock step between observations."""
    steps: list[tuple[object, ...]] = []
    t = start
    for i, gap in enumerate(gaps):
        t += gap
        steps.append(("add", t, "failed" if i % 3 == 0 else "sent", "boom"))
        steps.append(("clock", t + gap // 2))
    window = _run(steps, spec)
    events, warnings, _, _ = _brute(steps, spec)
    assert (window.events, window.warnings) == (events, warnings)


def test_the_timeframes_have_the_documented_sizes() -> None:
    assert [(tf.spec.span_ms, tf.spec.bucket_ms) for tf in Timeframe] == SIZES[:4]


def test_bucket_sizes_and_bounds() -> None:
    assert (Timeframe.M5.bucket_seconds, Timeframe.M5.spec.buckets) == (10, 30)
    assert (Timeframe.H1.bucket_seconds, Timeframe.H1.spec.buckets) == (60, 60)
    assert Timeframe.H6.spec.buckets == 360
    spec = Timeframe.M5.spec
    # 12:00:07 is in bucket [12:00:00, 12:00:10); the window is the 30 buckets ending with it.
    now = 12 * 3600_000 + 7_000
    assert spec.bounds(now) == (now - 7_000 - 290_000, now + 3_000)
    assert spec.contains(now - 297_000, now)
    assert not spec.contains(now - 297_001, now)


def test_an_observation_older_than_the_window_is_dropped() -> None:
    window = SlidingWindow(Timeframe.M5.spec)
    assert window.add(1_000_000, event=True, warning=False)
    assert not window.add(1_000_000 - 300_000, event=True, warning=True, error="late")
    assert (window.events, window.warnings) == (1, 0)


def test_the_clock_never_goes_back_and_expiry_empties_the_window() -> None:
    window = SlidingWindow(Timeframe.M5.spec)
    window.add(0, event=True, warning=True, error="x")
    assert window.advance(-50_000) == 0
    assert window.events == 1
    assert window.advance(300_000) == 1
    assert (window.events, window.warnings, len(window)) == (0, 0, 0)
    assert window.top_errors() == []


def test_distinct_errors_per_bucket_are_capped() -> None:
    window = SlidingWindow(Timeframe.H1.spec)
    for i in range(MAX_ERRORS_PER_BUCKET + 5):
        window.add(1_000, event=True, warning=True, error=f"error {i}" + "x" * 500)
    top = dict(window.top_errors(limit=100))
    assert top[OTHER_ERRORS] == 5
    assert len(top) == MAX_ERRORS_PER_BUCKET + 1
    assert all(len(text) <= 200 for text in top)


def test_percent_is_zero_without_events() -> None:
    assert percent(0, 3) == 0.0
    assert percent(40, 10) == 25.0


def test_a_bucket_size_must_divide_the_span() -> None:
    with pytest.raises(ValueError, match="divide"):
        WindowSpec(span_ms=1000, bucket_ms=300)
