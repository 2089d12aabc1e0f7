"""Why a rule does not match: the first rejecting condition in words, and never a reason for a match."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.events.triggers import Platform
from consumer.rules.explain import rejection
from consumer.rules.matching import compile_rule
from consumer.rules.validation import validate_rule
from tests.factories import make_event
from tests.test_rules_matching import events, reference_matches, rule, rule_documents
from tests.test_rules_model import CONTEXT


@pytest.mark.parametrize(
    ("overrides", "event", "reason"),
    [
        ({"enabled": False}, {}, "the rule is disabled (enabled: false)"),
        (
            {},
            {"trigger": "lead_rejected"},
            "trigger lead_rejected is not in triggers (lead_sold)",
        ),
        ({}, {"product_id": "p-9"}, "product_id 'p-9' is not the rule's product_id 'p-1'"),
        ({}, {"product_id": None}, "product_id missing is not the rule's product_id 'p-1'"),
        (
            {"filters": {"publishers": {"exclude": ["pub-9"]}}},
            {"publisher_id": "pub-9"},
            "filters.publishers.exclude contains pub-9",
        ),
        (
            {"filters": {"buyers": {"include": ["b-1"]}}},
            {"buyer_id": "b-2"},
            "filters.buyers.include does not contain b-2",
        ),
        (
            {"filters": {"buyers": {"include": ["b-1"]}}},
            {"buyer_id": None},
            "filters.buyers.include buyer_id is missing",
        ),
        ({"filters": {"price": {"op": "gt", "value": 10}}}, {"price": 10.0}, "price 10.0 is not > 10"),
        ({"filters": {"price": {"op": "lte", "value": 2.5}}}, {"price": 3.0}, "price 3.0 is not <= 2.5"),
        ({"filters": {"price": {"op": "gt_zero"}}}, {"price": 0.0}, "price 0.0 is not > 0"),
        (
            {"filters": {"price": {"op": "range", "min": 10, "max": 50}}},
            {"price": 60.0},
            "price 60.0 is not in 10.0..50.0",
        ),
        ({"filters": {"price": {"op": "gt_zero"}}}, {"price": None}, "filters.price: the event has no price"),
        (
            {"filters": {"method": "POST"}},
            {"method": "FORM"},
            "filters.method wants POST, the event's method is FORM",
        ),
        (
            {"filters": {"tracking_strategy": "pingback_only"}},
            {"tracking_strategy": "direct_sold"},
            "filters.tracking_strategy pingback_only wants tracking_strategy pingback,"
            " the event's is direct_sold",
        ),
    ],
)
def test_names_the_rejecting_condition(overrides: dict[str, Any], event: dict[str, Any], reason: str) -> None:
    assert rejection(compile_rule(rule(**overrides)), make_event(**event)) == reason


def test_platform_and_call_tracking_pool() -> None:
    lms_rule = compile_rule(rule())
    assert rejection(lms_rule, make_event(Platform.CALL_LOGIC)) == (
        "platform call_logic is not the rule's platform lms"
    )
    pools_filter = {"call_tracking_pools": {"include": ["pool-1"]}}
    pools = compile_rule(rule(platform="call_logic", filters=pools_filter))
    assert rejection(pools, make_event(Platform.CALL_LOGIC, call_tracking_pool_id="pool-2")) == (
        "filters.call_tracking_pools.include does not contain pool-2"
    )
    assert rejection(pools, make_event(Platform.CALL_LOGIC, call_tracking_pool_id="pool-1")) is None


def test_the_first_failing_condition_is_named() -> None:
    both = compile_rule(rule(filters={"method": "POST", "price": {"op": "gt", "value": 10}}))
    assert rejection(both, make_event(method="FORM", price=1.0)) == (
        "filters.method wants POST, the event's method is FORM"
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_reason_exactly_when_the_reference_rejects(data: st.DataObject) -> None:
    rules = [validate_rule(data.draw(rule_documents(n)), CONTEXT) for n in range(3)]
    for event in data.draw(st.lists(events(rules), min_size=1, max_size=8)):
        for subject in rules:
            reason = rejection(compile_rule(subject), event)
            assert (reason is None) == reference_matches(subject, event), (subject.id, reason)
