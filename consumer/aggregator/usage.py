"""Usage metering of warning notifications: billable events per rule per day, and their cost.

A **billable event** is a final delivery result (an outcome with status ``sent`` or ``failed``) of a
rule that had warning notifications enabled when it was delivered (the outcome's
``warnings_enabled``). Retries (``retrying``) are not billed, since the delivery they belong to is
billed once when it ends, and neither are ``config_error`` records, which deliver nothing. Days are
UTC days of the outcome's ``created``. Each billable event costs :data:`PRICE_PER_EVENT` dollars.

:class:`UsageMeter` is pure; :func:`read_usage` reads the outcome topic and never writes or commits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal

from consumer.aggregator.records import decode_observation
from consumer.aggregator.state import Observation
from consumer.errors import CodecError
from consumer.topic_reader import read_since

PRICE_PER_EVENT = Decimal("0.0001")


@dataclass
class RuleUsage:
    rule_id: str
    events: int
    cost: Decimal
    days: dict[date, int]


@dataclass
class UsageMeter:
    """Billable events per (rule, UTC day)."""

    counts: dict[str, dict[date, int]] = field(default_factory=lambda: defaultdict(dict))
    skipped: int = 0

    def add(self, obs: Observation) -> bool:
        """Count ``obs`` when it is billable; whether it was."""
        if not obs.is_billable:
            return False
        day = datetime.fromtimestamp(obs.created_ms / 1000, UTC).date()
        days = self.counts[obs.rule_id]
        days[day] = days.get(day, 0) + 1
        return True

    def add_all(self, observations: Iterable[Observation]) -> None:
        for obs in observations:
            self.add(obs)

    def rules(self) -> list[RuleUsage]:
        """Per rule, the rule with the most events first (ties by rule id)."""
        out = []
        for rule_id, days in self.counts.items():
            events = sum(days.values())
            out.append(RuleUsage(rule_id, events, events * PRICE_PER_EVENT, dict(sorted(days.items()))))
        return sorted(out, key=lambda usage: (-usage.events, usage.rule_id))

    @property
    def total_events(self) -> int:
        return sum(sum(days.values()) for days in self.counts.values())

    @property
    def total_cost(self) -> Decimal:
        return self.total_events * PRICE_PER_EVENT


def read_usage(
    config: dict[str, object],
    topic: str,
    since_ms: int,
    on_undecodable: Callable[[int, int, str], None] | None = None,
) -> UsageMeter:
    """Billable events of the outcomes created at or after ``since_ms``."""
    meter = UsageMeter()
    for msg in read_since(dict(config), topic, since_ms):
        try:
            obs = decode_observation(msg.value())
        except CodecError as exc:
            meter.skipped += 1
            if on_undecodable is not None:
                on_undecodable(msg.partition() or 0, msg.offset() or 0, str(exc))
            continue
        if obs.created_ms >= since_ms:
            meter.add(obs)
    return meter
