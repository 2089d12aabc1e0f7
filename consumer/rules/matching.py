"""Which rules an event triggers: rules compiled once per version, looked up by (platform, trigger, scope).

A :class:`RuleIndex` is an immutable snapshot. Enabled rules sit in buckets of
``(platform, trigger, "product", product_id)`` or ``(platform, trigger, "campaign", campaign_id)``,
held as nested dicts (platform -> trigger -> product or campaign id), so an event looks at two buckets
only: the cost of a match does not grow with rules of other triggers or scopes. Each rule's filters
are compiled to frozensets and one flat closure (:func:`compile_rule`).

Filter semantics (contract "Rules"): an include list lets through only events whose field is in it
(a null field is not); an exclude list drops events whose field is in it (a null field passes);
``method``/``tracking_strategy`` need the event's value to equal the filter's (``direct_sold_only`` is
the event's ``direct_sold``, ``pingback_only`` its ``pingback``); an event without a price never passes
a price filter. Matching never mutates an index, never raises for a valid event, and does no I/O.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from consumer.events.model import Event
from consumer.events.triggers import Platform
from consumer.rules.codec import rule_version
from consumer.rules.compact import compact_document, materialise
from consumer.rules.model import (
    ID_FILTER_FIELDS,
    Action,
    Filters,
    PriceAboveZero,
    PriceRange,
    Rule,
    Warnings,
)

Predicate = Callable[[Event], bool]
BucketKey = tuple[str, str, str, str]


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class CompiledRule:
    """One version of a valid rule, ready to match and to send with.

    It holds what matching reads (ids, platform, triggers, scope, the compiled predicate) and the
    rule's compact document (:mod:`consumer.rules.compact`); :attr:`rule`, :attr:`action` and
    :attr:`warnings` materialise the validated rule from it on demand (cached).
    """

    rule_id: str
    name: str | None
    version: str
    platform: Platform
    triggers: frozenset[str]
    scope: tuple[str, str]
    enabled: bool
    warnings_enabled: bool
    #: None: no filters, every event of the triggers and scope matches.
    predicate: Predicate | None = None
    #: The offset of the rule's record on the rules topic (None for a rule read from a file): the
    #: ``rule_version`` of its outcomes and the ``X-Eventmail-Rule-Version`` header of its mails.
    record_offset: int | None = None
    #: The rule's compact document (None when the rule itself is kept in ``pinned``).
    document: bytes | None = None
    #: The rule itself, for a rule that has no compact document (a clear-text password).
    pinned: Rule | None = None

    @property
    def rule(self) -> Rule:
        """The validated rule (materialised from the compact document, cached)."""
        if self.pinned is not None:
            return self.pinned
        assert self.document is not None  # compile_rule sets one of the two
        return materialise(self.document)

    @property
    def action(self) -> Action:
        return self.rule.action

    @property
    def warnings(self) -> Warnings | None:
        return self.rule.warnings

    @property
    def connection_label(self) -> str:
        """``esp:NAME`` or ``manual:HOST:PORT`` (never credentials)."""
        return self.action.connection.label

    def _compared(self) -> tuple[object, ...]:
        return (
            self.rule_id,
            self.name,
            self.version,
            self.platform,
            self.triggers,
            self.scope,
            self.enabled,
            self.action,
            self.warnings,
            self.warnings_enabled,
        )

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, CompiledRule)
        return self._compared() == other._compared()

    def __hash__(self) -> int:
        return hash(self._compared())

    def __repr__(self) -> str:
        return (
            f"CompiledRule(rule_id={self.rule_id!r}, name={self.name!r}, version={self.version!r}, "
            f"platform={self.platform!r}, triggers={self.triggers!r}, scope={self.scope!r}, "
            f"enabled={self.enabled!r}, action={self.action!r}, warnings={self.warnings!r}, "
            f"warnings_enabled={self.warnings_enabled!r}, record_offset={self.record_offset!r})"
        )

    def matches(self, event: Event) -> bool:
        """The full test, including platform, trigger and scope (the index checks those by lookup)."""
        if not self.enabled or event.platform != self.platform or event.trigger not in self.triggers:
            return False
        kind, scope_id = self.scope
        if (event.product_id if kind == "product" else event.campaign_id) != scope_id:
            return False
        return self.predicate is None or self.predicate(event)


def compile_rule(rule: Rule, version: str | None = None, record_offset: int | None = None) -> CompiledRule:
    """The rule compiled for matching; it keeps the rule's compact document, not the rule."""
    document = compact_document(rule)
    kind, scope_id = rule.scope
    return CompiledRule(
        rule_id=rule.id,
        name=rule.name,
        version=version or rule_version(rule),
        platform=rule.platform,
        triggers=_shared(frozenset(rule.triggers)),
        scope=(sys.intern(kind), sys.intern(scope_id)),
        enabled=rule.enabled,
        warnings_enabled=rule.warnings_enabled,
        predicate=compile_filters(rule.filters),
        record_offset=record_offset,
        document=document,
        pinned=rule if document is None else None,
    )


def compile_filters(filters: Filters) -> Predicate | None:
    """One function testing every filter, or None when there are none.

    The filters become one expression (``event.method == v0 and event.buyer_id in v1 and ...``),
    compiled once per shape of filters (which checks, in which order) and bound to each rule's values
    (:func:`_predicate`): one call per rule and event, no call per check. Only fixed field names and
    operators go into the expression; a rule's values are bound, never written into it."""
    terms: list[str] = []
    values: list[Any] = []

    def term(template: str, *bound: Any) -> None:
        names = [f"v{len(values) + n}" for n in range(len(bound))]
        terms.append(template.format(*names))
        values.extend(bound)

    if filters.method is not None:
        term("event.method == {}", filters.method.value)
    if filters.tracking_strategy is not None:
        term("event.tracking_strategy == {}", filters.tracking_strategy.event_value)
    for name, attribute in ID_FILTER_FIELDS.items():
        id_filter = getattr(filters, name)
        if id_filter is None:
            continue
        if id_filter.include:  # None is never in the set
            term(f"event.{_field(attribute)} in {{}}", _values(id_filter.include))
        if id_filter.exclude:  # None is never excluded
            term(f"event.{_field(attribute)} not in {{}}", _values(id_filter.exclude))
    if filters.call_tracking_pools is not None and filters.call_tracking_pools.include:
        term("event.call_tracking_pool_id in {}", _values(filters.call_tracking_pools.include))
    if filters.price is not None:
        restriction = filters.price
        if isinstance(restriction, PriceRange):
            term("(event.price is not None and {} <= event.price <= {})", restriction.min, restriction.max)
        elif isinstance(restriction, PriceAboveZero):
            term("(event.price is not None and event.price > 0)")
        else:
            term(
                f"(event.price is not None and event.price {_COMPARE[restriction.op]} {{}})",
                restriction.value,
            )
    if not terms:
        return None
    return _predicate(tuple(terms), len(values))(*values)


_COMPARE = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_EVENT_FIELDS = frozenset(Event.model_fields)


def _field(attribute: str) -> str:
    if attribute not in _EVENT_FIELDS:  # only the model's own field names are written into code
        raise ValueError(f"not an event field: {attribute!r}")
    return attribute


@functools.cache
def _predicate(terms: tuple[str, ...], count: int) -> Callable[..., Predicate]:
    """A factory of predicates of one shape: called with the ``count`` values ``v0, v1, ...`` the
    terms use, it gives ``lambda event: term0 and term1 and ...`` (each a bool, so is the result)."""
    names = ", ".join(f"v{n}" for n in range(count))
    source = f"def factory({names}):\n    return lambda event: {' and '.join(terms)}\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, "<eventmail filters>", "exec"), {}, namespace)  # noqa: S102 - fixed names only
    factory: Callable[..., Predicate] = namespace["factory"]
    return factory


#: Trigger sets are few (combinations of a platform's triggers): one object each, not one per rule.
_TRIGGER_SETS: dict[frozenset[str], frozenset[str]] = {}


def _shared(triggers: frozenset[str]) -> frozenset[str]:
    return _TRIGGER_SETS.setdefault(triggers, triggers)


#: Equal filter lists share one set; the table starts over when full (sets already shared stay so).
_VALUE_SETS: dict[frozenset[str], frozenset[str]] = {}
_VALUE_SETS_MAX = 65_536


def _values(values: Iterable[str]) -> frozenset[str]:
    """A filter's list as a set (a tuple would take less memory but is searched 2-3x slower)."""
    found = frozenset(sys.intern(value) for value in values)
    if len(_VALUE_SETS) >= _VALUE_SETS_MAX:
        _VALUE_SETS.clear()
    return _VALUE_SETS.setdefault(found, found)


def _bucket_keys(rule: CompiledRule) -> Iterator[BucketKey]:
    kind, scope_id = rule.scope
    for trigger in rule.triggers:
        yield (rule.platform.value, trigger, kind, scope_id)


#: The rules of one (platform, trigger): by product id and by campaign id.
Scopes = tuple[dict[str, tuple[CompiledRule, ...]], dict[str, tuple[CompiledRule, ...]]]
_NO_SCOPES: Scopes = ({}, {})


class RuleIndex:
    """An immutable snapshot of the valid rules (enabled and disabled), indexed for matching."""

    __slots__ = ("_enabled", "_rules", "_tree", "generation")

    def __init__(self, rules: Iterable[CompiledRule] = (), generation: int = 0) -> None:
        by_id = {rule.rule_id: rule for rule in rules}
        buckets: dict[BucketKey, list[CompiledRule]] = {}
        enabled = 0
        for rule in sorted(by_id.values(), key=lambda r: r.rule_id):
            if not rule.enabled:
                continue
            enabled += 1
            for key in _bucket_keys(rule):
                buckets.setdefault(key, []).append(rule)
        # platform -> trigger -> (product id -> rules, campaign id -> rules): lookups by str keys only
        # (their hashes are cached), no key tuple built and hashed per event.
        tree: dict[Platform, dict[str, Scopes]] = {}
        for (platform, trigger, kind, scope_id), bucket in buckets.items():
            # Keyed by the Platform member itself: the event's platform is found by identity.
            scopes = tree.setdefault(Platform(platform), {}).setdefault(trigger, ({}, {}))
            scopes[0 if kind == "product" else 1][scope_id] = tuple(bucket)
        self._rules: Mapping[str, CompiledRule] = MappingProxyType(by_id)
        self._tree = tree
        self._enabled = enabled
        #: Increases with every snapshot a store publishes.
        self.generation = generation

    def match(self, event: Event) -> list[CompiledRule]:
        """Every enabled rule the event triggers, ordered by rule id within each scope."""
        by_trigger = self._tree.get(event.platform)
        products, campaigns = by_trigger.get(event.trigger, _NO_SCOPES) if by_trigger else _NO_SCOPES
        out: list[CompiledRule] = []
        product_id = event.product_id
        if product_id is not None and products:
            for rule in products.get(product_id, ()):
                predicate = rule.predicate
                if predicate is None or predicate(event):
                    out.append(rule)
        campaign_id = event.campaign_id
        if campaign_id is not None and campaigns:
            for rule in campaigns.get(campaign_id, ()):
                predicate = rule.predicate
                if predicate is None or predicate(event):
                    out.append(rule)
        return out

    def in_scope(
        self, platform: Platform, trigger: str, product_id: str | None, campaign_id: str | None
    ) -> bool:
        """Whether an enabled rule of this platform and trigger has the product or the campaign as its
        scope. When not, :meth:`match` of every such event is empty, whatever its other fields: the
        pipeline then does not build the event (``EventDecoder.decode_scoped``)."""
        by_trigger = self._tree.get(platform)
        if not by_trigger:
            return False
        products, campaigns = by_trigger.get(trigger, _NO_SCOPES)
        return (product_id is not None and product_id in products) or (
            campaign_id is not None and campaign_id in campaigns
        )

    def get(self, rule_id: str) -> CompiledRule | None:
        """The enabled rule with this id (None when absent or disabled)."""
        rule = self._rules.get(rule_id)
        return rule if rule is not None and rule.enabled else None

    def lookup(self, rule_id: str) -> CompiledRule | None:
        """The valid rule with this id, enabled or not."""
        return self._rules.get(rule_id)

    @property
    def rules(self) -> Mapping[str, CompiledRule]:
        """Every valid rule by id (read-only)."""
        return self._rules

    @property
    def enabled_count(self) -> int:
        return self._enabled

    def __len__(self) -> int:
        return len(self._rules)

    def __contains__(self, rule_id: object) -> bool:
        return rule_id in self._rules

    def __iter__(self) -> Iterator[CompiledRule]:
        return iter(sorted(self._rules.values(), key=lambda r: r.rule_id))

    def __repr__(self) -> str:
        return f"RuleIndex(rules={len(self._rules)}, enabled={self._enabled}, generation={self.generation})"
