"""Why a rule does not match an event: the first condition that rejects it, in words.

:func:`rejection` walks the same conditions as :meth:`CompiledRule.matches` in the order an admin
reads a rule (enabled, platform, trigger, scope, then each filter) and names the first one that fails,
as ``filters.publishers.exclude contains pub-9`` or ``price 10.0 is not > 10``. It returns None exactly
when the rule matches (a property test holds the two together).
"""

from __future__ import annotations

from consumer.events.model import Event
from consumer.rules.matching import CompiledRule
from consumer.rules.model import ID_FILTER_FIELDS, Filters, PriceAboveZero, PriceCompare, PriceRange

_SYMBOLS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def rejection(rule: CompiledRule, event: Event) -> str | None:
    """The first condition of ``rule`` that ``event`` fails, or None when the rule matches."""
    if not rule.enabled:
        return "the rule is disabled (enabled: false)"
    if event.platform != rule.platform:
        return f"platform {event.platform.value} is not the rule's platform {rule.platform.value}"
    if event.trigger not in rule.triggers:
        return f"trigger {event.trigger} is not in triggers ({', '.join(sorted(rule.triggers))})"
    kind, scope_id = rule.scope
    field = f"{kind}_id"
    value = getattr(event, field)
    if value != scope_id:
        shown = "missing" if value is None else repr(value)
        return f"{field} {shown} is not the rule's {field} {scope_id!r}"
    return filter_rejection(rule.rule.filters, event)


def filter_rejection(filters: Filters, event: Event) -> str | None:
    """The first filter that ``event`` fails, or None when it passes them all."""
    if filters.method is not None and event.method != filters.method.value:
        return f"filters.method wants {filters.method.value}, the event's method is {event.method}"
    strategy = filters.tracking_strategy
    if strategy is not None and event.tracking_strategy != strategy.event_value:
        return (
            f"filters.tracking_strategy {strategy.value} wants tracking_strategy {strategy.event_value},"
            f" the event's is {event.tracking_strategy}"
        )
    for name, attribute in ID_FILTER_FIELDS.items():
        id_filter = getattr(filters, name)
        if id_filter is None:
            continue
        value = getattr(event, attribute)
        if id_filter.include and value not in id_filter.include:
            shown = f"{attribute} is missing" if value is None else f"does not contain {value}"
            return f"filters.{name}.include {shown}"
        if id_filter.exclude and value in id_filter.exclude:
            return f"filters.{name}.exclude contains {value}"
    pools = filters.call_tracking_pools
    if pools is not None and pools.include and event.call_tracking_pool_id not in pools.include:
        value = event.call_tracking_pool_id
        shown = "call_tracking_pool_id is missing" if value is None else f"does not contain {value}"
        return f"filters.call_tracking_pools.include {shown}"
    return _price_rejection(filters, event)


def _price_rejection(filters: Filters, event: Event) -> str | None:
    restriction = filters.price
    if restriction is None:
        return None
    price = event.price
    if price is None:
        return "filters.price: the event has no price"
    if isinstance(restriction, PriceRange):
        if not restriction.min <= price <= restriction.max:
            return f"price {price} is not in {restriction.min}..{restriction.max}"
        return None
    if isinstance(restriction, PriceAboveZero):
        return None if price > 0 else f"price {price} is not > 0"
    assert isinstance(restriction, PriceCompare)
    passed = {
        "gt": price > restriction.value,
        "gte": price >= restriction.value,
        "lt": price < restriction.value,
        "lte": price <= restriction.value,
    }[restriction.op]
    return None if passed else f"price {price} is not {_SYMBOLS[restriction.op]} {restriction.value:g}"
