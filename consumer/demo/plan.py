"""The demo's event stream: realistic LMS and Call Logic events, and what each should cause.

Each event comes from a *scenario*: a kind of event a platform sends (an auto-insurance lead sold
through a POST, a call answered through a tracked pool, a lead returned ...). Some scenarios are
what an example rule waits for, some are near misses its filters drop (a FORM submission, a price
out of range, a publisher under review), some are triggers no rule listens to. A few records are
malformed on purpose (not JSON, cut-off JSON, an unknown trigger ...) and must land in the DLQ.

What each valid event should trigger is not written down here: :func:`build_plan` asks the rules
themselves (:class:`consumer.rules.matching.RuleIndex`), so the expectations follow the rules that
were applied. The stream is the same for the same seed, apart from ids and times.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from consumer.aggregator.config import from_rule
from consumer.events.codec import encode_json
from consumer.events.model import Event
from consumer.events.triggers import Platform
from consumer.rules.matching import RuleIndex

Fields = dict[str, Any]
Choices = dict[str, tuple[str, ...]]
PriceRanges = tuple[tuple[float, float], ...]

LMS = Platform.LMS
CALL_LOGIC = Platform.CALL_LOGIC
JSON_HEADERS = (("content-type", b"application/json"),)
#: Share of malformed records in the stream (at least one).
MALFORMED_SHARE = 0.05

_FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Linus", "Radia", "Donald")
_STATES = ("CA", "TX", "FL", "NY", "WA", "IL", "AZ", "CO", "GA", "OH")
#: What every event of a platform varies in, unless its scenario fixes the field.
_COMMON: Choices = {
    "publisher_id": tuple(f"pub-{n}" for n in range(1, 13)),
    "channel_id": ("ch-1", "ch-2", "ch-3", "ch-4"),
    "source_id": ("src-web", "src-mobile", "src-affiliate"),
    "buyer_id": ("buyer-acme", "buyer-globex", "buyer-initech", "buyer-umbrella"),
    "pingtree_id": ("pt-1", "pt-2", "pt-3"),
}
_LMS: Choices = {**_COMMON, "method": ("POST",), "tracking_strategy": ("direct_sold",)}
_CALLS: Choices = {**_COMMON, "call_tracking_pool_id": ("pool-tv-spot", "pool-radio")}


@dataclass(frozen=True)
class Scenario:
    """One kind of event a platform sends; ``weight`` is its share of the stream.

    ``fields`` are fixed, ``choices`` drawn per event (over the platform's defaults), ``price`` drawn
    from one of the ranges (no ranges: no price), ``data`` entries drawn per event.
    """

    name: str
    platform: Platform
    triggers: tuple[str, ...]
    weight: int
    fields: Fields
    choices: Choices = field(default_factory=dict)
    price: PriceRanges = ()
    data: Choices = field(default_factory=dict)

    def build(self, rng: random.Random) -> Fields:
        defaults = _LMS if self.platform is LMS else _CALLS
        out: Fields = {name: rng.choice(options) for name, options in {**defaults, **self.choices}.items()}
        out.update(self.fields)
        if self.price:
            low, high = rng.choice(self.price)
            out["price"] = round(rng.uniform(low, high), 2)
        data = {"first_name": rng.choice(_FIRST_NAMES), "state": rng.choice(_STATES)}
        data.update({name: rng.choice(options) for name, options in self.data.items()})
        out["data"] = data
        return out


_AUTO = {"product_id": "auto-insurance"}
_REFI = {"product_id": "mortgage", "campaign_id": "c-mortgage-refi"}
_SOLAR = {"product_id": "solar-quotes", "campaign_id": "c-solar-1"}
_HEALTH = {"product_id": "health", "campaign_id": "c-health-plans"}
_WARRANTY = {"product_id": "home-warranty", "campaign_id": "home-warranty-calls"}
_FINAL_EXPENSE = {"product_id": "final-expense-calls", "campaign_id": "c-fe-1"}
_MEDICARE = {"product_id": "medicare-calls", "campaign_id": "c-medicare-1"}
_REJECTED = ("lead_rejected", "campaign_rejected")

SCENARIOS: tuple[Scenario, ...] = (
    # lms-auto-lead-sold: product auto-insurance, lead_sold, POST, not from pub-under-review
    Scenario("auto lead sold", LMS, ("lead_sold",), 14, _AUTO,
             {"campaign_id": ("c-auto-1", "c-auto-2", "c-auto-3")}, ((18, 95),)),
    Scenario("auto lead sold by FORM", LMS, ("lead_sold",), 4, {**_AUTO, "campaign_id": "c-auto-1",
             "method": "FORM"}, price=((18, 95),)),
    Scenario("auto lead sold, publisher under review", LMS, ("lead_sold",), 3, {**_AUTO,
             "campaign_id": "c-auto-2", "publisher_id": "pub-under-review"}, price=((18, 95),)),
    # lms-high-value-sales: campaign c-mortgage-refi, direct sold, 100 to 500
    Scenario("mortgage sale 100-500", LMS, ("lead_sold", "campaign_sold"), 8, _REFI, price=((100, 500),)),
    Scenario("mortgage sale out of range", LMS, ("lead_sold", "campaign_sold"), 4, _REFI,
             price=((20, 95), (520, 900))),
    Scenario("mortgage sale by ping back", LMS, ("lead_sold",), 2, {**_REFI, "tracking_strategy": "pingback"},
             price=((100, 500),)),
    # lms-rejected-partner-relay: product solar-quotes, rejected, from src-partner-web
    Scenario("solar lead rejected (partner)", LMS, _REJECTED, 6, {**_SOLAR, "source_id": "src-partner-web"},
             data={"reject_reason": ("duplicate", "out of area", "invalid phone")}),
    Scenario("solar lead rejected (own site)", LMS, _REJECTED, 3, {**_SOLAR, "source_id": "src-web"},
             data={"reject_reason": ("duplicate", "out of area")}),
    # lms-earnings-html: campaign c-health-plans, publisher earnings above 0
    Scenario("health plan earning", LMS, ("publisher_earning_received",), 6, _HEALTH, price=((4, 180),)),
    Scenario("health plan earning of 0", LMS, ("publisher_earning_received",), 2, _HEALTH, price=((0, 0),)),
    # no rule listens
    Scenario("lead offers and ping backs", LMS, ("lead_offer_received", "revenue_ping_back"), 8,
             {"campaign_id": "c-misc"}, {"product_id": ("auto-insurance", "mortgage", "health")}, ((1, 40),)),
    # cl-warranty-buyer-response: campaign home-warranty-calls, tracked pools, two buyers
    Scenario("warranty call answered", CALL_LOGIC, ("buyer_response", "disposition_updated"), 8, _WARRANTY,
             {"buyer_id": ("buyer-acme", "buyer-globex")}, ((15, 60),),
             {"disposition": ("answered", "qualified", "callback")}),
    Scenario("warranty call from an untracked pool", CALL_LOGIC, ("buyer_response",), 3,
             {**_WARRANTY, "call_tracking_pool_id": "pool-web", "buyer_id": "buyer-acme"}, price=((15, 60),)),
    # cl-revenue-postback: product final-expense-calls, from pub-7 or pub-12, at least 25
    Scenario("revenue postback", CALL_LOGIC, ("revenue_postback",), 6, _FINAL_EXPENSE,
             {"publisher_id": ("pub-7", "pub-12")}, ((25, 120),)),
    Scenario("small revenue postback", CALL_LOGIC, ("revenue_postback",), 2,
             {**_FINAL_EXPENSE, "publisher_id": "pub-7"}, price=((2, 20),)),
    # demo-partner-returns: product medicare-calls, returns, to a relay that refuses every mail
    Scenario("medicare lead returned", CALL_LOGIC, ("lead_return", "lead_partial_return"), 5, _MEDICARE,
             price=((10, 45),), data={"return_reason": ("wrong number", "not interested", "duplicate call")}),
    # no rule listens
    Scenario("call progress", CALL_LOGIC, ("amd", "duration_to_sell_reached", "campaign_accepted"), 6,
             {"product_id": "home-warranty", "campaign_id": "c-warranty-2"}),
)  # fmt: skip


def _malformed(rng: random.Random, serial: int, event_id: str) -> tuple[str, bytes]:
    """(what is wrong, the bytes) of the ``serial``-th malformed record."""
    now = datetime.now(UTC).isoformat()
    good = {"event_id": event_id, "trigger": "lead_sold", "occurred_at": now, "product_id": "auto-insurance"}
    kinds: list[tuple[str, bytes]] = [
        ("not JSON", f"lead sold: L-{rng.randint(100000, 999999)} price=45.00".encode()),
        ("cut-off JSON", json.dumps(good).encode()[:40]),
        ("unknown trigger", json.dumps({**good, "trigger": "lead_teleported"}).encode()),
        ("no event_id", json.dumps({k: v for k, v in good.items() if k != "event_id"}).encode()),
        ("bad occurred_at", json.dumps({**good, "occurred_at": "yesterday"}).encode()),
        ("a price that is text", json.dumps({**good, "price": "forty-five"}).encode()),
    ]
    return kinds[serial % len(kinds)]


@dataclass(frozen=True)
class Record:
    """One record to publish; ``event`` is None for a malformed one."""

    platform: Platform
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    label: str
    event: Event | None = None


@dataclass
class Plan:
    """The records to publish and what they should cause."""

    records: list[Record]
    #: (event id, rule id) -> ``sent`` or ``failed``.
    deliveries: dict[tuple[str, str], str]
    #: Rules expected to raise a warning alert.
    alerting_rules: set[str]
    by_scenario: Counter[str] = field(default_factory=Counter)

    @property
    def malformed(self) -> int:
        return sum(1 for r in self.records if r.event is None)

    @property
    def valid(self) -> int:
        return len(self.records) - self.malformed

    @property
    def unmatched(self) -> int:
        matched = {event_id for event_id, _ in self.deliveries}
        return sum(1 for r in self.records if r.event is not None and r.event.event_id not in matched)

    def expected(self, status: str) -> int:
        return sum(1 for s in self.deliveries.values() if s == status)

    def per_rule(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {}
        for (_, rule_id), status in sorted(self.deliveries.items()):
            out.setdefault(rule_id, Counter())[status] += 1
        return out


def build_plan(
    count: int,
    index: RuleIndex,
    failing_connections: frozenset[str],
    *,
    run_id: str,
    seed: int = 7,
    now: datetime | None = None,
) -> Plan:
    """``count`` records: every scenario at least once when there is room (first those that trigger a
    rule, so even a short stream sends mail through every rule), the rest by weight.

    ``failing_connections`` are connection labels (``esp:NAME``) whose server refuses every mail:
    deliveries through them are expected ``failed``, all others ``sent``.
    """
    rng = random.Random(seed)  # not for security: a reproducible sample stream
    malformed = max(1, round(count * MALFORMED_SHARE)) if count > 1 else 0
    valid = count - malformed
    probe = random.Random(0)  # not for security: one sample event per scenario
    triggering = [s for s in SCENARIOS if index.match(_sample(s, probe))]
    chosen: list[Scenario] = [*triggering, *(s for s in SCENARIOS if s not in triggering)][:valid]
    weights = [s.weight for s in SCENARIOS]
    chosen += rng.choices(SCENARIOS, weights=weights, k=max(0, valid - len(chosen)))
    rng.shuffle(chosen)
    slots: list[Scenario | None] = list(chosen)
    for _ in range(malformed):  # spread over the stream, never first: the table starts with real mail
        slots.insert(rng.randint(1, len(slots)) if slots else 0, None)
    start = now or datetime.now(UTC)
    records: list[Record] = []
    deliveries: dict[tuple[str, str], str] = {}
    by_scenario: Counter[str] = Counter()
    broken = 0
    for n, scenario in enumerate(slots, start=1):
        event_id = f"demo-{run_id}-{n:05d}"
        if scenario is None:
            platform = LMS if broken % 2 == 0 else CALL_LOGIC
            label, value = _malformed(rng, broken, event_id)
            broken += 1
            records.append(Record(platform, event_id.encode(), value, (), f"malformed: {label}"))
            by_scenario["malformed"] += 1
            continue
        fields = scenario.build(rng)
        event = Event(
            platform=scenario.platform,
            event_id=event_id,
            trigger=rng.choice(scenario.triggers),
            occurred_at=start + timedelta(milliseconds=n),
            lead_id=f"L-{rng.randint(100000, 999999)}",
            **fields,
        )
        for rule in index.match(event):
            failing = rule.connection_label in failing_connections
            deliveries[(event_id, rule.rule_id)] = "failed" if failing else "sent"
        headers = JSON_HEADERS if n % 2 else ()
        key = (event.lead_id or event.event_id).encode()
        records.append(Record(event.platform, key, encode_json(event), headers, scenario.name, event))
        by_scenario[scenario.name] += 1
    plan = Plan(records, deliveries, set(), by_scenario)
    plan.alerting_rules = _alerting(plan, index)
    return plan


def _sample(scenario: Scenario, rng: random.Random) -> Event:
    return Event(
        platform=scenario.platform,
        event_id="probe",
        trigger=scenario.triggers[0],
        occurred_at=datetime.now(UTC),
        **scenario.build(rng),
    )


def _alerting(plan: Plan, index: RuleIndex) -> set[str]:
    """Rules with warnings on whose failures (all of them final) breach their thresholds."""
    out: set[str] = set()
    for rule_id, counts in plan.per_rule().items():
        rule = index.lookup(rule_id)
        config = from_rule(rule) if rule is not None else None
        if config is None:
            continue
        events = counts["sent"] + counts["failed"]
        if counts["failed"] and config.thresholds.breach(events, counts["failed"]) is not None:
            out.add(rule_id)
    return out
