"""The part of a rule the aggregator needs (its ``warnings`` block), and where it comes from.

The aggregator asks a :class:`WarningsProvider` for a rule's warning settings each time it
evaluates that rule, so a rule applied or deleted on the rules topic takes effect at once. The
service uses the rules topic (:func:`rule_store_provider`); tests use :class:`StaticWarnings`.
Nothing here sends anything or keeps secrets: a warnings block holds addresses and numbers only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from consumer.aggregator.thresholds import Thresholds
from consumer.aggregator.windows import Timeframe

#: Used when a rule's warnings block leaves the frequency out.
DEFAULT_FREQUENCY_MINUTES = 60
#: Frequencies below this are raised to it: an alert per outcome would be a flood, not an alert.
MIN_FREQUENCY_MINUTES = 1


@dataclass(frozen=True)
class WarningConfig:
    """A rule's warning notifications, as the aggregator uses them."""

    rule_id: str
    timeframe: Timeframe
    thresholds: Thresholds
    frequency_minutes: int = DEFAULT_FREQUENCY_MINUTES
    users: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    rule_name: str | None = None

    @property
    def frequency_ms(self) -> int:
        return max(self.frequency_minutes, MIN_FREQUENCY_MINUTES) * 60_000

    def recipients(self, users: Mapping[str, str]) -> list[str]:
        """The rule's emails, then its users' addresses; unknown users are left out, no duplicates."""
        out: list[str] = []
        seen: set[str] = set()
        for address in [*self.emails, *(users[u] for u in self.users if u in users)]:
            address = address.strip()
            if address and address.lower() not in seen:
                seen.add(address.lower())
                out.append(address)
        return out

    def unknown_users(self, users: Mapping[str, str]) -> list[str]:
        return [u for u in self.users if u not in users]


class WarningsProvider(Protocol):
    """Current warning settings of a rule; None when the rule is unknown or has warnings off."""

    def warnings_for(self, rule_id: str) -> WarningConfig | None: ...


@dataclass
class StaticWarnings:
    """A fixed set of rules' warning settings (tests, benchmarks)."""

    configs: dict[str, WarningConfig] = field(default_factory=dict)

    def warnings_for(self, rule_id: str) -> WarningConfig | None:
        return self.configs.get(rule_id)


def split_emails(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"a@x, b@y"`` or ``["a@x", "b@y"]`` -> ``("a@x", "b@y")``."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(item.strip() for item in items if item and item.strip())


def from_rule(rule: Any) -> WarningConfig | None:
    """The warning settings of a rule object (or mapping) of the rules package; None when off.

    Reads attributes by name (``rule_id``/``id``, ``name``, ``warnings.enabled``, ``timeframe``,
    ``percent``, ``count``, ``min_events``, ``users``, ``emails``, ``frequency_minutes``), so it
    accepts the rule model as well as its JSON form.
    """
    warnings = _get(rule, "warnings")
    if warnings is None or not _get(warnings, "enabled", False):
        return None
    rule_id = _get(rule, "rule_id") or _get(rule, "id")
    if not rule_id:
        return None
    timeframe = _get(warnings, "timeframe", Timeframe.H1)
    percent = _get(warnings, "percent")
    count = _get(warnings, "count")
    min_events = _get(warnings, "min_events")
    frequency = _get(warnings, "frequency_minutes")
    return WarningConfig(
        rule_id=str(rule_id),
        timeframe=Timeframe(getattr(timeframe, "value", timeframe)),
        thresholds=Thresholds(
            percent=float(percent) if percent is not None else None,
            count=int(count) if count is not None else None,
            min_events=int(min_events) if min_events is not None else None,
        ),
        frequency_minutes=int(frequency) if frequency is not None else DEFAULT_FREQUENCY_MINUTES,
        users=tuple(str(u) for u in _get(warnings, "users", None) or ()),
        emails=split_emails(_get(warnings, "emails")),
        rule_name=_get(rule, "name"),
    )


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


@dataclass
class CallableWarnings:
    """Warning settings looked up through a function returning the rule (or None)."""

    lookup: Callable[[str], Any]

    def warnings_for(self, rule_id: str) -> WarningConfig | None:
        rule = self.lookup(rule_id)
        return from_rule(rule) if rule is not None else None


def rule_store_provider(store: Any) -> CallableWarnings:
    """Warning settings from a live ``consumer.rules.store.RuleStore`` (enabled rules only)."""
    return CallableWarnings(lambda rule_id: store.index.get(rule_id))
