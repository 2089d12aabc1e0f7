"""Thresholds and alert decisions fire exactly as the semantics say, checked against a reference."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.aggregator.config import StaticWarnings, WarningConfig
from consumer.aggregator.state import Observation, PartitionState
from consumer.aggregator.thresholds import Action, AlertState, Thresholds
from consumer.aggregator.windows import Timeframe
from consumer.outcomes.model import AlertKind

_PERCENT = st.one_of(st.none(), st.integers(0, 100).map(float), st.sampled_from([0.1, 2.5, 33.3, 12.25]))
_COUNT = st.one_of(st.none(), st.integers(0, 50))


@settings(max_examples=500, deadline=None)
@given(percent=_PERCENT, count=_COUNT, events=st.integers(0, 200), warnings=st.integers(0, 200))
def test_breach_is_strictly_greater_and_ignores_left_out_thresholds(
    percent: float | None, count: int | None, events: int, warnings: int
) -> None:
    by_percent = percent is not None and Fraction(warnings * 100) > Fraction(str(percent)) * events
    by_count = count is not None and warnings > count
    assert (Thresholds(percent, count).breach(events, warnings) is not None) == (by_percent or by_count)


def test_exactly_equal_does_not_fire() -> None:
    assert Thresholds(percent=10).breach(50, 5) is None  # 5 is exactly 10 % of 50
    assert Thresholds(percent=10).breach(50, 6) is not None
    assert Thresholds(count=100).breach(1000, 100) is None
    assert Thresholds(count=100).breach(1000, 101) is not None
    assert Thresholds(percent=0.1).breach(1000, 1) is None  # float 0.1 is taken as written
    assert Thresholds().breach(10, 10) is None  # nothing set, nothing fires


def test_either_threshold_alone_fires_and_the_reason_says_which() -> None:
    by_percent = Thresholds(percent=10, count=100).breach(20, 5)
    assert by_percent is not None
    assert "25.0% of 20 events" in by_percent
    assert "limit" not in by_percent
    by_count = Thresholds(percent=90, count=3).breach(100, 4)
    assert by_count == "4 warnings, over the limit of 3"
    assert "no delivered events" in (Thresholds(percent=50).breach(0, 2) or "")


@settings(max_examples=300, deadline=None)
@given(
    frequency=st.integers(1, 100),
    steps=st.lists(st.tuples(st.integers(0, 40), st.booleans()), min_size=1, max_size=80),
)
def test_alerts_respect_the_frequency_and_resolve_once(frequency: int, steps: list[tuple[int, bool]]) -> None:
    state = AlertState()
    now = 0
    fired: list[int] = []
    active = False
    for gap, breached in steps:
        now += gap
        action = state.step(breached, now, frequency)
        # Reference: fire when breached and no alert within the frequency; resolve an active alert.
        if breached and (not fired or now - fired[-1] >= frequency):
            expected = Action.FIRE
        elif not breached and active:
            expected = Action.RESOLVE
        else:
            expected = Action.NONE
        assert action is expected
        if action is Action.FIRE:
            fired.append(now)
            active = True
        elif action is Action.RESOLVE:
            active = False
    assert all(b - a >= frequency for a, b in itertools.pairwise(fired))


def test_decisions_already_taken_by_an_earlier_owner_are_not_taken_again() -> None:
    state = AlertState()
    state.remember(kind_fired=True, at_ms=1_000)
    assert state.step(True, 900, 10_000) is Action.NONE
    assert state.step(False, 1_000, 10_000) is Action.NONE  # that moment is decided
    assert state.step(True, 5_000, 10_000) is Action.NONE  # inside the frequency
    assert state.step(False, 6_000, 10_000) is Action.RESOLVE  # the earlier alert is still active
    assert state.step(True, 11_000, 10_000) is Action.FIRE


# --- the partition state against a brute-force reference ---------------------------------------------


def _config(
    rule: str, timeframe: Timeframe, percent: float | None, count: int | None, freq: int
) -> WarningConfig:
    return WarningConfig(rule, timeframe, Thresholds(percent, count), frequency_minutes=freq)


_EDGE = st.integers(0, 40).map(lambda tens: tens * 10_000)  # on bucket and tick edges (whole 10 s)
_OUTCOME = st.tuples(
    st.sampled_from(["r-a", "r-b"]),
    st.one_of(st.integers(0, 400_000), _EDGE),  # gap in ms before this outcome (mostly forward)
    st.one_of(st.integers(-20_000, 0), _EDGE.map(lambda ms: -min(ms, 20_000))),  # lateness
    st.sampled_from(["sent", "failed", "config_error", "retrying"]),
)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Span and bucket of each timeframe, as documented (not read from the code under test).
SIZES = {
    Timeframe.M5: (timedelta(minutes=5), timedelta(seconds=10)),
    Timeframe.H1: (timedelta(hours=1), timedelta(minutes=1)),
    Timeframe.H3: (timedelta(hours=3), timedelta(minutes=1)),
    Timeframe.H6: (timedelta(hours=6), timedelta(minutes=1)),
}
TICK = timedelta(seconds=10)


def _floor(moment: datetime, step: timedelta) -> datetime:
    return EPOCH + ((moment - EPOCH) // step) * step


def _breached(percent: float | None, count: int | None, events: int, warnings: int) -> bool:
    """Strictly greater than a threshold; percent compared exactly; a left-out threshold never breaches."""
    by_percent = percent is not None and Fraction(warnings * 100) > Fraction(str(percent)) * events
    return by_percent or (count is not None and warnings > count)


@dataclass
class _Alerting:
    last_fired: datetime | None = None
    active: bool = False


def _reference(
    configs: dict[str, WarningConfig], stream: list[Observation]
) -> list[tuple[str, str, int, int, int]]:
    """Recount every window from scratch at every evaluation point, with datetimes, and decide as the
    documented semantics say: fire on a breach unless fired within the frequency, resolve once when
    a breach that fired clears. Evaluation points: each outcome for its rule, and every rule when
    the partition clock (the newest outcome time) enters a new 10 s step."""
    seen: list[tuple[str, datetime, str]] = []
    alerting = {rule: _Alerting() for rule in configs}
    out: list[tuple[str, str, int, int, int]] = []
    clock: datetime | None = None

    def evaluate(rule: str) -> None:
        assert clock is not None
        config = configs[rule]
        span, bucket = SIZES[config.timeframe]
        end = _floor(clock, bucket) + bucket
        start = end - span
        inside = [status for r, t, status in seen if r == rule and start <= t < end]
        events = sum(status in ("sent", "failed") for status in inside)
        warnings = sum(status in ("failed", "config_error") for status in inside)
        state = alerting[rule]
        frequency = timedelta(minutes=max(config.frequency_minutes, 1))
        kind = None
        if _breached(config.thresholds.percent, config.thresholds.count, events, warnings):
            if state.last_fired is None or clock - state.last_fired >= frequency:
                state.last_fired, state.active, kind = clock, True, "fired"
        elif state.active:
            state.active, kind = False, "resolved"
        if kind is not None:
            out.append((kind, rule, (clock - EPOCH) // timedelta(milliseconds=1), events, warnings))

    for obs in stream:
        t = EPOCH + timedelta(milliseconds=obs.created_ms)
        previous = clock
        if clock is None or t > clock:
            clock = t
            if previous is not None and _floor(clock, TICK) > _floor(previous, TICK):
                for rule in sorted(configs):
                    if rule != obs.rule_id:
                        evaluate(rule)
        seen.append((obs.rule_id, t, obs.status))
        evaluate(obs.rule_id)
    return out


@settings(max_examples=200, deadline=None)
@given(
    timeframes=st.tuples(st.sampled_from(list(Timeframe)), st.sampled_from(list(Timeframe))),
    percent=_PERCENT,
    count=_COUNT,
    freq=st.integers(1, 30),
    raw=st.lists(_OUTCOME, min_size=1, max_size=150),
)
def test_partition_decisions_equal_a_brute_force_reference(
    timeframes: tuple[Timeframe, Timeframe],
    percent: float | None,
    count: int | None,
    freq: int,
    raw: list[tuple[str, int, int, str]],
) -> None:
    configs = {
        "r-a": _config("r-a", timeframes[0], percent, count, freq),
        "r-b": _config("r-b", timeframes[1], count and float(min(count, 100)), 2, freq + 3),
    }
    stream: list[Observation] = []
    t = 1_800_000_000_000
    for rule, gap, late, status in raw:
        t += gap
        stream.append(Observation(rule, t + late, status, error="boom" if status == "failed" else None))
    state = PartitionState(StaticWarnings(configs))
    got = [
        (d.kind.value, d.config.rule_id, d.at_ms, d.events, d.warnings)
        for obs in stream
        for d in state.apply(obs)
    ]
    assert got == _reference(configs, stream)


def test_a_breach_that_holds_fires_again_only_after_the_frequency() -> None:
    config = _config("r", Timeframe.H1, None, 2, freq=30)
    state = PartitionState(StaticWarnings({"r": config}))
    minute = 60_000
    kinds = []
    for i in range(0, 70):  # a failure every minute for 70 minutes
        kinds += [
            (d.kind.value, d.at_ms // minute) for d in state.apply(Observation("r", i * minute, "failed"))
        ]
    assert kinds == [("fired", 2), ("fired", 32), ("fired", 62)]


def test_an_alert_resolves_when_the_breach_clears_as_time_moves_on() -> None:
    config = _config("r", Timeframe.M5, None, 2, freq=30)
    other = _config("quiet", Timeframe.M5, None, 1000, freq=30)
    state = PartitionState(StaticWarnings({"r": config, "quiet": other}))
    fired = [d for i in range(3) for d in state.apply(Observation("r", i * 1000, "failed", error="550 no"))]
    assert [d.kind for d in fired] == [AlertKind.FIRED]
    assert fired[0].top_errors == (("550 no", 3),)
    # Only another rule's outcomes arrive; six minutes later r's failures left its window.
    resolved = state.apply(Observation("quiet", 6 * 60_000, "sent"))
    assert [(d.kind, d.config.rule_id, d.warnings) for d in resolved] == [(AlertKind.RESOLVED, "r", 0)]
    assert "r" not in state.hot


def test_no_decision_on_a_window_that_starts_before_the_data_read() -> None:
    config = _config("r", Timeframe.H1, None, 0, freq=30)
    state = PartitionState(StaticWarnings({"r": config}), complete_from_ms=3_600_000)
    assert state.apply(Observation("r", 1_000_000, "failed")) == []
    decisions = state.apply(Observation("r", 2 * 3_600_000, "failed"))
    assert [d.kind for d in decisions] == [AlertKind.FIRED]


def test_a_changed_timeframe_keeps_the_counts_that_fit() -> None:
    five = _config("r", Timeframe.M5, None, 100, freq=30)
    provider = StaticWarnings({"r": five})
    state = PartitionState(provider)
    for i in range(4):
        state.apply(Observation("r", i * 10_000, "failed", error="x"))
    provider.configs["r"] = _config("r", Timeframe.H1, None, 100, freq=30)
    state.apply(Observation("r", 50_000, "sent"))
    window = state.rules["r"].window
    assert window.spec == Timeframe.H1.spec
    assert (window.events, window.warnings) == (5, 4)
    provider.configs["r"] = five  # 1 min buckets cannot be split into 10 s ones: starts again
    state.apply(Observation("r", 60_000, "sent"))
    assert (state.rules["r"].window.events, state.rules["r"].window.warnings) == (1, 0)


def test_a_rule_without_warnings_is_not_windowed() -> None:
    state = PartitionState(StaticWarnings({}))
    assert state.apply(Observation("gone", 1, "failed")) == []
    assert state.rules == {}
