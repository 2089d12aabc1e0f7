"""Pure alert decisions: when counts breach a rule's thresholds, and when that becomes an alert.

* A threshold is breached when warnings are **strictly greater** than it: ``count`` compares with
  the number of warnings, ``percent`` with ``percent``% of the events (``warnings * 100 >
  percent * events``, computed exactly, so 10 % of 50 events is 5 and 5 warnings do not fire). With
  no events at all, any warning breaches the percent threshold. A threshold left out is not checked;
  with both left out nothing ever fires. With ``min_events``, the percent threshold is not decided
  while the window holds fewer events (one refused mail of one event is 100 %); ``count`` still is.
* An alert fires when the thresholds are breached and the rule has not fired within the last
  ``frequency`` (so a breach that holds fires again every ``frequency``, never more often).
* When the breach clears after an alert, the alert is resolved (once). A resolution does not restart
  the frequency period.
* Decisions at event times up to ``decided_until_ms`` were already taken by an earlier owner of
  the rule (read back from the alerts topic): they are not taken again.

This module never reads a clock, sends mail or touches Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction


@dataclass(frozen=True)
class Thresholds:
    percent: float | None = None
    count: int | None = None
    min_events: int | None = None

    def breach(self, events: int, warnings: int) -> str | None:
        """Which thresholds are exceeded, in words; None when none is."""
        reasons: list[str] = []
        decided = self.min_events is None or events >= self.min_events
        if self.percent is not None and decided and warnings * 100 > Fraction(str(self.percent)) * events:
            if events:
                share = warnings * 100 / events
                reasons.append(
                    f"{warnings} warnings are {share:.1f}% of {events} events, over {self.percent:g}%"
                )
            else:
                reasons.append(f"{warnings} warnings and no delivered events, over {self.percent:g}%")
        if self.count is not None and warnings > self.count:
            reasons.append(f"{warnings} warnings, over the limit of {self.count}")
        return "; ".join(reasons) or None


class Action(StrEnum):
    NONE = "none"
    FIRE = "fire"
    RESOLVE = "resolve"


@dataclass
class AlertState:
    """What one rule's alerting remembers."""

    last_fired_ms: int | None = None
    active: bool = False
    decided_until_ms: int | None = None

    def step(self, breached: bool, now_ms: int, frequency_ms: int) -> Action:
        """The decision at event time ``now_ms``; updates the state."""
        if self.decided_until_ms is not None and now_ms <= self.decided_until_ms:
            return Action.NONE
        if breached:
            if self.last_fired_ms is None or now_ms - self.last_fired_ms >= frequency_ms:
                self.last_fired_ms = now_ms
                self.active = True
                return Action.FIRE
            return Action.NONE
        if self.active:
            self.active = False
            return Action.RESOLVE
        return Action.NONE

    def remember(self, kind_fired: bool, at_ms: int) -> None:
        """Take in one decision read back from the alerts topic (any order)."""
        if kind_fired and (self.last_fired_ms is None or at_ms > self.last_fired_ms):
            self.last_fired_ms = at_ms
        if self.decided_until_ms is None or at_ms >= self.decided_until_ms:
            self.decided_until_ms = at_ms
            self.active = kind_fired
