"""The aggregator state of one outcome partition: a sliding window and an alert state per rule.

:meth:`PartitionState.apply` takes one outcome (as an :class:`Observation`) and returns the alert
decisions it causes. The partition's clock is the newest ``created`` seen on it (event time, capped
by the service at the record's timestamp so a wrong clock cannot blind the partition); when the
clock moves, rules that are breached or alerting are evaluated again, so a reminder is due or a
breach clears even when the rule itself has no new outcome.

Pure: no Kafka, no mail, no wall clock. Rules come from a :class:`WarningsProvider`, earlier
decisions from ``earlier`` (the alerts topic read back), so the same outcomes in the same order
give the same decisions, whichever replica and however often they are replayed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from consumer.aggregator.config import WarningConfig, WarningsProvider
from consumer.aggregator.thresholds import Action, AlertState
from consumer.aggregator.windows import SlidingWindow, Timeframe, WindowSpec, percent
from consumer.outcomes.model import Alert, AlertKind, ErrorCount

#: The partition clock granularity at which breached or alerting rules are evaluated again.
TICK_MS = 10_000

_EVENT = frozenset({"sent", "failed"})
_WARNING = frozenset({"failed", "config_error"})


@dataclass(frozen=True, slots=True)
class Observation:
    """What the aggregator needs of one outcome."""

    rule_id: str
    created_ms: int
    status: str
    error: str | None = None
    smtp_code: int | None = None
    warnings_enabled: bool = False
    #: For a ``config_error``: the rules-topic record reported (topic, partition, offset).
    source: tuple[str, int, int] | None = None

    @property
    def is_event(self) -> bool:
        """A final delivery result (``sent`` or ``failed``)."""
        return self.status in _EVENT

    @property
    def is_warning(self) -> bool:
        return self.status in _WARNING

    @property
    def is_billable(self) -> bool:
        """A final delivery result of a rule with warning notifications on (see ``usage``)."""
        return self.warnings_enabled and self.status in _EVENT

    def error_text(self) -> str:
        if self.error:
            return self.error
        if self.smtp_code is not None:
            return f"SMTP {self.smtp_code}"
        return "rule configuration error" if self.status == "config_error" else "unknown error"


@dataclass(frozen=True)
class AlertDecision:
    """An alert to raise (fired) or a notice that one is over (resolved)."""

    kind: AlertKind
    config: WarningConfig
    at_ms: int
    window_start_ms: int
    window_end_ms: int
    events: int
    warnings: int
    reason: str
    top_errors: tuple[tuple[str, int], ...] = ()

    @property
    def percent(self) -> float:
        return percent(self.events, self.warnings)

    def to_alert(self, recipients: list[str], email_sent: bool) -> Alert:
        th = self.config.thresholds
        return Alert(
            created=_dt(self.at_ms),
            rule_id=self.config.rule_id,
            rule_name=self.config.rule_name,
            kind=self.kind,
            timeframe=self.config.timeframe.value,
            window_start=_dt(self.window_start_ms),
            window_end=_dt(self.window_end_ms),
            events=self.events,
            warnings=self.warnings,
            percent=round(self.percent, 4),
            threshold_percent=th.percent,
            threshold_count=th.count,
            reason=self.reason,
            top_errors=[ErrorCount(error=e, count=c) for e, c in self.top_errors],
            recipients=recipients,
            email_sent=email_sent,
        )


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass
class RuleState:
    timeframe: Timeframe
    window: SlidingWindow


@dataclass
class PartitionState:
    """Windows and alert states of the rules on one outcome partition."""

    provider: WarningsProvider
    #: Earlier decisions per rule (from the alerts topic); called once per rule, on first sight.
    earlier: Callable[[str], AlertState] = field(default=lambda _rule: AlertState())
    #: Windows starting before this time lack data (the partition was read from there): no decisions
    #: are taken on them. None: the partition was read from its beginning.
    complete_from_ms: int | None = None
    #: Windows are complete from the first outcome applied (read from a committed offset).
    complete_from_first: bool = False
    clock_ms: int | None = None
    rules: dict[str, RuleState] = field(default_factory=dict)
    alerts: dict[str, AlertState] = field(default_factory=dict)
    hot: set[str] = field(default_factory=set)
    dropped: int = 0
    #: Invalid rule records already counted: each ``run`` replica reports every invalid record at
    #: every start, and one bad record is one warning, not one per replica and restart.
    config_errors: set[tuple[str, tuple[str, int, int]]] = field(default_factory=set)
    repeated_config_errors: int = 0

    def apply(self, obs: Observation) -> list[AlertDecision]:
        decisions: list[AlertDecision] = []
        if self.complete_from_first and self.complete_from_ms is None:
            self.complete_from_ms = obs.created_ms
        previous = self.clock_ms
        if previous is None or obs.created_ms > previous:
            self.clock_ms = obs.created_ms
            if previous is not None and obs.created_ms // TICK_MS > previous // TICK_MS:
                decisions.extend(self.tick(skip=obs.rule_id))
        config = self.provider.warnings_for(obs.rule_id)
        if config is None:
            self._forget(obs.rule_id)
            return decisions
        if obs.status == "config_error" and obs.source is not None:
            key = (obs.rule_id, obs.source)
            if key in self.config_errors:
                self.repeated_config_errors += 1
                return decisions
            self.config_errors.add(key)
        state = self._rule(config)
        if not state.window.add(
            obs.created_ms,
            event=obs.is_event,
            warning=obs.is_warning,
            error=obs.error_text() if obs.is_warning else None,
        ):
            self.dropped += 1
        decision = self._evaluate(config, state)
        if decision is not None:
            decisions.append(decision)
        return decisions

    def tick(self, skip: str | None = None) -> list[AlertDecision]:
        """Evaluate the breached or alerting rules at the current clock."""
        out: list[AlertDecision] = []
        for rule_id in sorted(self.hot):
            if rule_id == skip:
                continue
            config = self.provider.warnings_for(rule_id)
            if config is None:
                self._forget(rule_id)
                continue
            decision = self._evaluate(config, self._rule(config))
            if decision is not None:
                out.append(decision)
        return out

    def buckets(self) -> int:
        return sum(len(state.window) for state in self.rules.values())

    def _rule(self, config: WarningConfig) -> RuleState:
        state = self.rules.get(config.rule_id)
        if state is None:
            state = RuleState(config.timeframe, SlidingWindow(config.timeframe.spec))
            self.rules[config.rule_id] = state
        elif state.timeframe is not config.timeframe:
            state.window = rebucket(state.window, config.timeframe.spec)
            state.timeframe = config.timeframe
        return state

    def _forget(self, rule_id: str) -> None:
        self.rules.pop(rule_id, None)
        self.hot.discard(rule_id)

    def _evaluate(self, config: WarningConfig, state: RuleState) -> AlertDecision | None:
        assert self.clock_ms is not None
        now = self.clock_ms
        window = state.window
        window.advance(now)
        start, end = window.spec.bounds(now)
        reason = config.thresholds.breach(window.events, window.warnings)
        if reason is not None:
            self.hot.add(config.rule_id)
        if self.complete_from_ms is not None and start < self.complete_from_ms:
            return None
        alert = self.alerts.get(config.rule_id)
        if alert is None:
            alert = self.alerts[config.rule_id] = self.earlier(config.rule_id)
        action = alert.step(reason is not None, now, config.frequency_ms)
        if reason is None and not alert.active:
            self.hot.discard(config.rule_id)
        if action is Action.NONE:
            return None
        if action is Action.FIRE:
            kind, text = AlertKind.FIRED, reason or ""
        else:
            kind, text = AlertKind.RESOLVED, "back under the thresholds"
        return AlertDecision(
            kind=kind,
            config=config,
            at_ms=now,
            window_start_ms=start,
            window_end_ms=end,
            events=window.events,
            warnings=window.warnings,
            reason=text,
            top_errors=tuple(window.top_errors()),
        )


def rebucket(window: SlidingWindow, spec: WindowSpec) -> SlidingWindow:
    """A window for a changed timeframe, keeping what the old one holds when its buckets fit.

    Old buckets carry over when the new bucket size is a multiple of the old one (the window then
    holds at most the old timeframe's history until it fills); otherwise the new window starts empty.
    """
    fresh = SlidingWindow(spec)
    old = window.spec
    if spec.bucket_ms % old.bucket_ms or window.clock_bucket is None:
        return fresh
    fresh.advance(window.clock_bucket * old.bucket_ms)
    for index, bucket in window.items():
        fresh.merge(index * old.bucket_ms, bucket)
    return fresh
