"""Thresholds and alert decisions fire exactly as the semantics say, checked against a reference."""

from __future__ import annotations

import itertools
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


_OUTCOME = st.tuples(
    st.sampled_from(["r-a", "r-b"]),
    st.integers(0, 400_000),  # gap in ms before this outcome (mostly forward)
    st.integers(-20_000, 0),  # lateness
    st.sampled_from(["sent", "failed", "config_error", "retrying"]),
)


def _reference(
    configs: dict[str, WarningConfig], stream: list[Observation]
) -> list[tuple[str, str, int, int, int]]:
    """Recount every window from scratch at every evaluation point."""
    seen: list[Observation] = []
    alerts = {rule: AlertState() for rule in configs}
    out: list[tuple[str, str, int, int, int]] = []
    clock: int | None = None

    def evaluate(rule: str) -> None:
        assert clock is not None
        config = configs[rule]
        spec = config.timeframe.spec
        start, end = spec.bounds(clock)
        inside = [o for o in seen if o.rule_id == rule and start <= o.created_ms < end]
        events = sum(o.status in ("sent", "failed") for o in inside)
        warnings = sum(o.status in ("failed", "config_error") for o in inside)
        action = alerts[rule].step(
            config.thresholds.breach(events, warnings) is not None, clock, config.frequency_ms
        )
        if action is not Action.NONE:
            kind = AlertKind.FIRED if action is Action.FIRE else AlertKind.RESOLVED
            out.append((kind.value, rule, clock, events, warnings))

    for obs in stream:
        previous = clock
        if clock is None or obs.created_ms > clock:
            clock = obs.created_ms
            if previous is not None and clock // 10_000 > previous // 10_000:
                for rule in sorted(configs):
                    if rule != obs.rule_id:
                        evaluate(rule)
        seen.append(obs)
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
