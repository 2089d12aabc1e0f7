"""Matching: every filter on its own, and the index against a brute-force reference over random rules."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.events.model import Event
from consumer.events.triggers import PRICE_RANGE_TRIGGERS, Platform, triggers_for
from consumer.rules.matching import RuleIndex, compile_rule
from consumer.rules.model import ID_FILTER_FIELDS, PriceAboveZero, PriceRange, Rule
from consumer.rules.validation import validate_rule
from tests.factories import make_event
from tests.test_rules_model import CONTEXT, rule_doc


def rule(**overrides: Any) -> Rule:
    return validate_rule(rule_doc(**overrides), CONTEXT)


def matched(rules: list[Rule], event: Event) -> list[str]:
    return [r.rule_id for r in RuleIndex(compile_rule(x) for x in rules).match(event)]


def test_scope_platform_and_trigger_select_the_rule() -> None:
    product = rule(id="product")
    campaign = rule(id="campaign", level="campaign", product_id=None, campaign_id="c-7")
    other_product = rule(id="other", product_id="p-2")
    other_trigger = rule(id="rejected", triggers=["lead_rejected"])
    both = [product, campaign, other_product, other_trigger]
    assert matched(both, make_event(product_id="p-1", campaign_id="c-7")) == ["product", "campaign"]
    assert matched(both, make_event(product_id="p-2", campaign_id=None)) == ["other"]
    assert matched(both, make_event(Platform.CALL_LOGIC, product_id="p-1", campaign_id="c-7")) == []
    assert matched(both, make_event(trigger="lead_rejected")) == ["rejected"]


def test_disabled_rules_never_match_but_stay_known() -> None:
    off = rule(enabled=False)
    index = RuleIndex([compile_rule(off)])
    assert index.match(make_event()) == []
    assert index.get("r-1") is None
    found = index.lookup("r-1")
    assert found is not None
    assert not found.enabled
    assert len(index) == 1
    assert index.enabled_count == 0


@pytest.mark.parametrize(("name", "attribute"), sorted(ID_FILTER_FIELDS.items()))
def test_include_and_exclude_lists(name: str, attribute: str) -> None:
    include = rule(id="inc", filters={name: {"include": ["a", "b"]}})
    exclude = rule(id="exc", filters={name: {"exclude": ["a"]}})
    rules = [include, exclude]

    def event(value: str | None) -> Event:
        fields: dict[str, Any] = {attribute: value}
        return make_event(**fields)

    assert matched(rules, event("a")) == ["inc"]
    assert matched(rules, event("b")) == ["exc", "inc"]
    assert matched(rules, event("z")) == ["exc"]
    # A null field is not in an include list, and is never excluded.
    assert matched(rules, event(None)) == ["exc"]


def test_call_tracking_pools_include_only() -> None:
    pools = rule(platform="call_logic", filters={"call_tracking_pools": {"include": ["pool-1"]}})
    assert matched([pools], make_event(Platform.CALL_LOGIC, call_tracking_pool_id="pool-1")) == ["r-1"]
    assert matched([pools], make_event(Platform.CALL_LOGIC, call_tracking_pool_id="pool-2")) == []
    assert matched([pools], make_event(Platform.CALL_LOGIC, call_tracking_pool_id=None)) == []


@pytest.mark.parametrize(
    ("filters", "field", "passing", "failing"),
    [
        ({"method": "POST"}, "method", ["POST"], ["FORM", None]),
        ({"method": "FORM"}, "method", ["FORM"], ["POST", None]),
        ({"tracking_strategy": "direct_sold_only"}, "tracking_strategy", ["direct_sold"], ["pingback", None]),
        ({"tracking_strategy": "pingback_only"}, "tracking_strategy", ["pingback"], ["direct_sold", None]),
        ({"price": {"op": "gt_zero"}}, "price", [0.01, 5], [0, -1, None]),
        ({"price": {"op": "gt", "value": 10}}, "price", [10.5, 11], [10, 9, None]),
        ({"price": {"op": "gte", "value": 10}}, "price", [10, 11], [9.99, None]),
        ({"price": {"op": "lt", "value": 10}}, "price", [9.99, 0, -3], [10, 11, None]),
        ({"price": {"op": "lte", "value": 10}}, "price", [10, 0], [10.01, None]),
        ({"price": {"op": "range", "min": 10, "max": 50}}, "price", [10, 30, 50], [9.99, 50.01, None]),
    ],
)
def test_value_filters(filters: dict[str, Any], field: str, passing: list[Any], failing: list[Any]) -> None:
    subject = rule(filters=filters)
    for value in passing:
        assert matched([subject], make_event(**{field: value})) == ["r-1"], value
    for value in failing:
        assert matched([subject], make_event(**{field: value})) == [], value


def test_all_filters_must_pass() -> None:
    subject = rule(
        filters={"method": "POST", "publishers": {"include": ["pub-1"]}, "price": {"op": "gt_zero"}}
    )
    assert matched([subject], make_event(method="POST", publisher_id="pub-1", price=1)) == ["r-1"]
    assert matched([subject], make_event(method="FORM", publisher_id="pub-1", price=1)) == []
    assert matched([subject], make_event(method="POST", publisher_id="pub-2", price=1)) == []
    assert matched([subject], make_event(method="POST", publisher_id="pub-1", price=None)) == []


def test_compiled_rule_carries_what_the_mail_step_needs() -> None:
    compiled = compile_rule(rule(warnings={"enabled": True, "count": 3, "users": ["u-1"]}))
    assert compiled.rule_id == "r-1"
    assert compiled.name == "Lead sold"
    assert compiled.warnings_enabled
    assert compiled.connection_label == "esp:default"
    assert compiled.action.subject == "Lead {{ lead_id }} sold"
    assert len(compiled.version) == 16
    assert compile_rule(rule()).version == compile_rule(rule()).version
    assert compile_rule(rule(name="other")).version != compile_rule(rule()).version
    assert "predicate" not in repr(compiled)


# --- against a brute-force reference --------------------------------------------------------------------

IDS = {attribute: [f"{attribute[:3]}-{i}" for i in range(3)] for attribute in ID_FILTER_FIELDS.values()}
PRODUCTS = ["p-0", "p-1"]
CAMPAIGNS = IDS["campaign_id"]
POOLS = ["pool-0", "pool-1", "pool-2"]
PRICES = [0.0, 5.0, 10.0, 10.5, 20.0]


def reference_matches(subject: Rule, event: Event) -> bool:
    """The contract's semantics, read straight off the rule document."""
    if not subject.enabled or subject.platform != event.platform or event.trigger not in subject.triggers:
        return False
    if subject.level == "product" and event.product_id != subject.product_id:
        return False
    if subject.level == "campaign" and event.campaign_id != subject.campaign_id:
        return False
    f = subject.filters
    if f.method is not None and event.method != f.method.value:
        return False
    if f.tracking_strategy is not None:
        wanted = "direct_sold" if f.tracking_strategy.value == "direct_sold_only" else "pingback"
        if event.tracking_strategy != wanted:
            return False
    for name, attribute in ID_FILTER_FIELDS.items():
        flt = getattr(f, name)
        value = getattr(event, attribute)
        if flt is None:
            continue
        if flt.include and value not in flt.include:
            return False
        if value is not None and value in flt.exclude:
            return False
    pools = f.call_tracking_pools
    if pools is not None and pools.include and event.call_tracking_pool_id not in pools.include:
        return False
    price = f.price
    if price is not None:
        if event.price is None:
            return False
        if isinstance(price, PriceRange):
            return price.min <= event.price <= price.max
        if isinstance(price, PriceAboveZero):
            return event.price > 0
        return {
            "gt": event.price > price.value,
            "gte": event.price >= price.value,
            "lt": event.price < price.value,
            "lte": event.price <= price.value,
        }[price.op]
    return True


def _id_filter(values: list[str]) -> st.SearchStrategy[dict[str, Any] | None]:
    some = st.lists(st.sampled_from(values), max_size=2, unique=True)
    pair = st.tuples(some, some).map(
        lambda lists: {"include": lists[0], "exclude": [v for v in lists[1] if v not in lists[0]]}
    )
    return st.one_of(st.none(), st.none(), st.none(), pair)  # mostly absent, so events can match


# Strategies built once: building them inside a composite on every draw dominates the run time.
ID_FILTERS = {name: _id_filter(IDS[attribute]) for name, attribute in ID_FILTER_FIELDS.items()}
TRIGGER_LISTS = {
    p: st.lists(st.sampled_from(triggers_for(p)[:4]), min_size=1, max_size=2, unique=True) for p in Platform
}
PLATFORMS = st.sampled_from(list(Platform))
METHODS = st.sampled_from([None, "POST", "FORM"])
STRATEGIES = st.sampled_from([None, "direct_sold_only", "pingback_only"])
POOL_FILTERS = st.none() | st.lists(st.sampled_from(POOLS), max_size=2).map(lambda v: {"include": v})
PRICE_VALUES = st.sampled_from(PRICES)
RANGE_OPS = st.sampled_from(["none", "none", "none", "gt_zero", "gt", "gte", "lt", "lte", "range"])
OTHER_OPS = st.sampled_from(["none", "none", "none", "gt_zero", "gt", "gte", "lt", "lte"])
SCOPES = st.one_of(
    st.sampled_from(PRODUCTS).map(lambda p: {"level": "product", "product_id": p}),
    st.sampled_from(CAMPAIGNS).map(lambda c: {"level": "campaign", "product_id": None, "campaign_id": c}),
)
EVENT_IDS = st.fixed_dictionaries(
    {attribute: st.sampled_from([None, *values]) for attribute, values in IDS.items()}
    | {"product_id": st.sampled_from([None, *PRODUCTS])}
)
EVENT_TRIGGERS = {p: st.sampled_from(triggers_for(p)[:4]) for p in Platform}
EVENT_POOLS = st.sampled_from([None, *POOLS])
EVENT_STRATEGIES = st.sampled_from([None, "direct_sold", "pingback"])
EVENT_PRICES = st.sampled_from([None, *PRICES])


@st.composite
def rule_documents(draw: st.DrawFn, n: int) -> dict[str, Any]:
    platform = draw(PLATFORMS)
    triggers = draw(TRIGGER_LISTS[platform])
    filters: dict[str, Any] = {}
    for name, strategy in ID_FILTERS.items():
        flt = draw(strategy)
        if flt is not None:
            filters[name] = flt
    method, tracking = draw(METHODS), draw(STRATEGIES)
    if method is not None:
        filters["method"] = method
    if tracking is not None:
        filters["tracking_strategy"] = tracking
    pools = draw(POOL_FILTERS) if platform is Platform.CALL_LOGIC else None
    if pools is not None:
        filters["call_tracking_pools"] = pools
    op = draw(RANGE_OPS if set(triggers) <= PRICE_RANGE_TRIGGERS else OTHER_OPS)
    if op == "range":
        low, high = sorted((draw(PRICE_VALUES), draw(PRICE_VALUES)))
        filters["price"] = {"op": "range", "min": low, "max": high}
    elif op == "gt_zero":
        filters["price"] = {"op": op}
    elif op != "none":
        filters["price"] = {"op": op, "value": draw(PRICE_VALUES)}
    return rule_doc(
        id=f"r-{n}",
        platform=platform.value,
        triggers=triggers,
        filters=filters,
        enabled=draw(st.booleans()) or draw(st.booleans()),
        **draw(SCOPES),
    )


@st.composite
def events(draw: st.DrawFn, like: list[Rule]) -> Event:
    """A random event; often one aimed at a rule's platform, trigger and scope, so filters decide."""
    platform = draw(PLATFORMS)
    trigger = draw(EVENT_TRIGGERS[platform])
    fields: dict[str, Any] = draw(EVENT_IDS)
    target = draw(st.sampled_from([None, *like]))
    if target is not None:
        platform, trigger = target.platform, draw(st.sampled_from(target.triggers))
        fields["product_id" if target.level == "product" else "campaign_id"] = target.scope[1]
    if platform is Platform.CALL_LOGIC:
        fields["call_tracking_pool_id"] = draw(EVENT_POOLS)
    return make_event(
        platform,
        trigger,
        method=draw(METHODS),
        tracking_strategy=draw(EVENT_STRATEGIES),
        price=draw(EVENT_PRICES),
        **fields,
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_index_agrees_with_the_reference(data: st.DataObject) -> None:
    count = data.draw(st.integers(min_value=0, max_value=25))
    rules = [validate_rule(data.draw(rule_documents(n)), CONTEXT) for n in range(count)]
    index = RuleIndex(compile_rule(r) for r in rules)
    for event in data.draw(st.lists(events(rules), min_size=1, max_size=15)):
        expected = {r.id for r in rules if reference_matches(r, event)}
        found = [c.rule_id for c in index.match(event)]
        assert len(found) == len(set(found))
        assert set(found) == expected
        assert {c.rule_id for c in index if c.matches(event)} == expected
        # in_scope: exactly whether an enabled rule has the event's platform, trigger and scope (so a
        # false one means no match, whatever the filters)
        scoped = {
            r.id
            for r in rules
            if r.enabled
            and r.platform == event.platform
            and event.trigger in r.triggers
            and (event.product_id if r.level == "product" else event.campaign_id) == r.scope[1]
        }
        assert index.in_scope(event.platform, event.trigger, event.product_id, event.campaign_id) == bool(
            scoped
        )
        assert expected <= scoped
