"""The shipped JSON Schema is current, and every example rule is valid and shows its feature."""

from __future__ import annotations

import json
from pathlib import Path

from consumer.mail.render import render
from consumer.rules import schema
from consumer.rules.checks import RuleContext
from consumer.rules.matching import RuleIndex, compile_rule
from consumer.rules.model import ManualConnection, PriceRange
from consumer.rules.validation import validate_files
from consumer.settings import EspConnection, Settings
from tests.factories import make_event

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "config" / "rules" / "examples").glob("*.yaml"))


def test_schema_file_is_current() -> None:
    current = schema.SCHEMA_PATH.read_text(encoding="utf-8")
    assert current == schema.rendered(), (
        "schemas/rule.schema.json is stale: run python -m consumer.rules.schema"
    )
    assert schema.main(["--check"]) == 0
    document = json.loads(current)
    assert document["title"] == "eventmail rule"
    assert set(document["required"]) == {"id", "platform", "level", "triggers", "action"}


def test_examples_validate_against_a_deployment_with_a_default_esp() -> None:
    settings = Settings(esp_connections={"default": EspConnection(host="smtp.example.com")})
    rules, errors = validate_files(EXAMPLES, RuleContext.for_files(settings))
    assert errors == []
    by_id = {rule.id: rule for _, rule in rules}
    assert len(by_id) == len(EXAMPLES)

    features = {
        "product-level LMS lead sold": any(
            r.level == "product" and r.platform == "lms" and "lead_sold" in r.triggers for r in by_id.values()
        ),
        "campaign-level Call Logic with call tracking pools": any(
            r.level == "campaign" and r.platform == "call_logic" and r.filters.call_tracking_pools
            for r in by_id.values()
        ),
        "price range": any(isinstance(r.filters.price, PriceRange) for r in by_id.values()),
        "manual STARTTLS with a secret": any(
            isinstance(c := r.action.connection, ManualConnection)
            and c.encryption == "tls"
            and c.password is not None
            and c.password.get_secret_value().startswith("secret:")
            for r in by_id.values()
        ),
        "Twig HTML body": any(r.action.use_twig and r.action.content_type != "text" for r in by_id.values()),
        "warnings enabled": any(r.warnings_enabled for r in by_id.values()),
    }
    assert [name for name, shown in features.items() if not shown] == []


def test_examples_render_for_an_event_they_match() -> None:
    settings = Settings(esp_connections={"default": EspConnection(host="smtp.example.com")})
    rules, _ = validate_files(EXAMPLES, RuleContext.for_files(settings))
    for _, rule in rules:
        kind, scope_id = rule.scope
        event = make_event(
            rule.platform,
            rule.triggers[0],
            **{f"{kind}_id": scope_id},
            publisher_id="pub-7",
            source_id="src-partner-web",
            buyer_id="buyer-acme",
            price=120.0,
            **({"call_tracking_pool_id": "pool-radio"} if rule.platform == "call_logic" else {}),
        )
        assert [r.rule_id for r in RuleIndex([compile_rule(rule)]).match(event)] == [rule.id]
        mail = render(
            event,
            subject=rule.action.subject,
            body=rule.action.body,
            use_twig=rule.action.use_twig,
            content_type=rule.action.content_type.value,
            rule_id=rule.id,
            rule_name=rule.name,
        )
        assert mail.subject
        assert "{{" not in mail.subject
        assert (mail.html or mail.text or "").strip()
