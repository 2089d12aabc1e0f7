"""Compiled rules hold a compact document: the rule materialised from it equals the validated rule."""

from __future__ import annotations

from typing import Any

from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, SecretStr

from consumer.rules import compact, matching
from consumer.rules.matching import RuleIndex, compile_rule
from consumer.rules.model import Rule
from consumer.rules.secrets import encrypt_password
from consumer.rules.validation import validate_rule
from tests.test_rules_matching import events, reference_matches, rule_documents
from tests.test_rules_model import CONTEXT, manual, rule_doc, with_action

KEY = SecretStr(Fernet.generate_key().decode())
SEALED = encrypt_password(SecretStr("relay-password"), KEY).get_secret_value()


def varied_documents() -> list[dict[str, Any]]:
    """Rules setting every kind of field, in different forms (defaults, explicit nulls, normalised values)."""
    every_filter = {
        "method": "FORM",
        "tracking_strategy": "pingback_only",
        "publishers": {"include": ["pub-1", 7], "exclude": ["pub-2"]},
        "channels": {"exclude": ["ch-1"]},
        "sources": {"include": ["s-1"]},
        "buyers": {"exclude": ["b-1", "b-2"]},
        "campaigns": {"include": ["c-1"]},
        "pingtrees": {"include": ["pt-1"], "exclude": []},
        "price": {"op": "range", "min": 0.1, "max": 99.999999999},
    }
    warnings = {
        "enabled": True,
        "timeframe": "6h",
        "percent": 12.5,
        "count": 3,
        "min_events": 10,
        "users": ["u-1", "u-2"],
        "emails": "a@example.com, B@Example.COM",
        "frequency_minutes": 90,
    }
    return [
        rule_doc(),
        rule_doc(id="minimal", name=None),
        rule_doc(id="numbers", product_id=12345, name="Ünïcode ✓ name"),
        rule_doc(id="off", enabled=False, warnings={"enabled": False}),
        rule_doc(id="nulls", name=None, warnings=None, filters={"method": None, "price": None}),
        rule_doc(id="campaign", level="campaign", product_id=None, campaign_id="c-9", triggers=["lead_sold"]),
        rule_doc(id="filters", triggers=["lead_sold", "campaign_sold"], filters=every_filter),
        rule_doc(id="gt-zero", filters={"price": {"op": "gt_zero"}}),
        rule_doc(id="compare", filters={"price": {"op": "lte", "value": 3}}),
        rule_doc(
            id="calls",
            platform="call_logic",
            triggers=["disposition_updated"],
            filters={"call_tracking_pools": {"include": ["pool-1"]}, "price": {"op": "gt", "value": 1.5}},
        ),
        rule_doc(id="warned", warnings=warnings),
        {
            **with_action(
                connection={"type": "esp"},
                fallbacks=[{"type": "esp", "name": "sendgrid"}],
                sender={"email": "From@EXAMPLE.com"},
                recipients=[{"email": "to@example.com", "name": 'Tö, "Q"'}],
                cc=[{"email": "cc@example.com"}],
                bcc=[{"email": "bcc@example.com", "name": "B"}],
                use_twig=True,
                content_type="all",
                body="<p>{{ price }}</p>\n" * 50,
            ),
            "id": "action",
        },
        {**manual(login="user", password=SEALED, ca_file="/etc/ca.pem"), "id": "sealed"},
        {**manual(login="user", password="secret:relay"), "id": "secret-ref"},
        {**manual(encryption="none", port=25), "id": "open-relay"},
    ]


def assert_same(materialised: BaseModel, validated: BaseModel) -> None:
    """Equal, of the same types, with the same fields set, at every level."""
    assert type(materialised) is type(validated)
    assert materialised == validated
    assert materialised.model_fields_set == validated.model_fields_set
    for name in type(validated).model_fields:
        ours, theirs = getattr(materialised, name), getattr(validated, name)
        assert type(ours) is type(theirs), name
        if isinstance(theirs, SecretStr):
            assert isinstance(ours, SecretStr)
            assert ours.get_secret_value() == theirs.get_secret_value()
        elif isinstance(theirs, BaseModel):
            assert isinstance(ours, BaseModel)
            assert_same(ours, theirs)
        elif isinstance(theirs, tuple):
            assert len(ours) == len(theirs)
            for mine, other in zip(ours, theirs, strict=True):
                assert type(mine) is type(other), name
                if isinstance(other, BaseModel):
                    assert_same(mine, other)
                else:
                    assert mine == other


def test_the_materialised_rule_equals_the_validated_one() -> None:
    for doc in varied_documents():
        validated = validate_rule(doc, CONTEXT)
        compiled = compile_rule(validated, version="v", record_offset=4)
        assert compiled.document is not None, doc["id"]
        assert compiled.pinned is None
        compact.cache_clear()
        assert_same(compiled.rule, validated)
        assert compiled.action == validated.action
        assert compiled.warnings == validated.warnings
        assert compiled.connection_label == validated.action.connection.label
        assert compiled.rule.model_dump(mode="json") == validated.model_dump(mode="json")
        assert compiled == compile_rule(validated, version="v")
        assert hash(compiled) == hash(compile_rule(validated, version="v"))
        assert compiled.record_offset == 4
        assert compile_rule(validated).version == compile_rule(validated).version


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=50).flatmap(rule_documents))
def test_random_rules_materialise_equal(doc: dict[str, Any]) -> None:
    validated = validate_rule(doc, CONTEXT)
    assert_same(compact.materialise(compile_rule(validated).document or b""), validated)


def test_a_rule_with_a_clear_password_is_kept_as_it_is() -> None:
    validated = validate_rule(manual(login="user", password="clear-text-pw"), CONTEXT)
    compiled = compile_rule(validated)
    assert compiled.document is None
    assert compiled.rule is validated
    assert compiled.action is validated.action


def test_the_cache_is_bounded_and_keeps_hot_rules() -> None:
    base = validate_rule(rule_doc(), CONTEXT)
    compiled = [
        compile_rule(base.model_copy(update={"id": f"r-{n}"})) for n in range(compact.CACHE_SIZE + 20)
    ]
    compact.cache_clear()
    hot = compiled[0].rule
    assert compiled[0].rule is hot  # not validated again
    for rule in compiled:
        assert rule.rule.id == rule.rule_id
        assert compact.cache_size() <= compact.CACHE_SIZE
    assert compact.cache_size() == compact.CACHE_SIZE
    assert compiled[-1].rule is compiled[-1].rule


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_matching_agrees_with_the_reference_and_materialises_nothing(data: st.DataObject) -> None:
    count = data.draw(st.integers(min_value=1, max_value=20))
    rules: list[Rule] = [validate_rule(data.draw(rule_documents(n)), CONTEXT) for n in range(count)]
    index = RuleIndex(compile_rule(r) for r in rules)
    compact.cache_clear()
    found = []
    for event in data.draw(st.lists(events(rules), min_size=1, max_size=15)):
        matched = index.match(event)
        assert {c.rule_id for c in matched} == {r.id for r in rules if reference_matches(r, event)}
        found.extend(matched)
    assert compact.cache_size() == 0  # matching reads the compiled predicates only
    by_id = {r.id: r for r in rules}
    for compiled in found:
        assert compiled.rule == by_id[compiled.rule_id]


def test_equal_filter_lists_share_one_set() -> None:
    first = matching._values(["pub-1", "pub-2"])
    assert matching._values(("pub-2", "pub-1", "pub-1")) is first
    assert first == frozenset({"pub-1", "pub-2"})
