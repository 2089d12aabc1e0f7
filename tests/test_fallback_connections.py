"""Fallback connections and idempotency keys against real SMTP servers: a primary that is down or
answers 421 fails over in order, one that answers 550 does not; the outcome names the connection
that sent the mail; a provider's idempotency header carries the delivery's stable key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from consumer.errors import RuleError, SettingsError
from consumer.mail.message import message_id_for
from consumer.outcomes.codec import decode_outcome
from consumer.pipeline.deliver import MailDeliverer
from consumer.pipeline.result import Verdict
from consumer.rules.checks import RuleContext
from consumer.rules.matching import compile_rule
from consumer.rules.validation import validate_rule
from consumer.settings import Settings, load_settings
from tests.clirun import run_cli
from tests.factories import make_event
from tests.support.kafka import TopicFactory, consume_all, produce
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory, SMTPTestServer
from tests.test_rules_model import rule_doc


def esp(server: SMTPTestServer | int, **extra: Any) -> dict[str, Any]:
    port = server if isinstance(server, int) else server.port
    return {"host": "127.0.0.1", "port": port, "encryption": "none", **extra}


def settings_with(connections: dict[str, dict[str, Any]]) -> Settings:
    return Settings(
        esp_connections=connections,
        smtp={"in_place_retries": 1, "retry_base_seconds": 0.01, "connect_timeout_seconds": 2},
    )


def rule_with(primary: str, fallbacks: list[str] | None = None, context: RuleContext | None = None) -> Any:
    doc = rule_doc(id="r-fo")
    doc["action"]["connection"] = {"type": "esp", "name": primary}
    if fallbacks:
        doc["action"]["fallbacks"] = [{"type": "esp", "name": name} for name in fallbacks]
    return compile_rule(validate_rule(doc, context or RuleContext()))


async def deliver(settings: Settings, rule: Any) -> Any:
    deliverer = MailDeliverer(settings)
    try:
        return await deliverer.deliver(make_event(product_id="p-1"), rule, 0)
    finally:
        await deliverer.close()


async def test_a_primary_that_is_down_fails_over_in_order(smtp_server_factory: SMTPServerFactory) -> None:
    second, third = smtp_server_factory("plain"), smtp_server_factory("plain")
    closed = smtp_server_factory("plain")
    closed.stop()  # nothing listens on its port now
    settings = settings_with({"primary": esp(closed), "second": esp(second), "third": esp(third)})
    result = await deliver(settings, rule_with("primary", ["second", "third"]))
    assert result.verdict is Verdict.SENT, result.error
    assert result.connection == "esp:second"
    assert len(second.messages) == 1
    assert third.messages == []
    assert result.attempts >= 2  # the primary's attempts count


async def test_421_fails_over_and_550_does_not(smtp_server_factory: SMTPServerFactory) -> None:
    busy = smtp_server_factory("flaky", fail_code=421, fail_times=None)
    backup = smtp_server_factory("plain")
    settings = settings_with({"busy": esp(busy), "backup": esp(backup)})
    result = await deliver(settings, rule_with("busy", ["backup"]))
    assert (result.verdict, result.connection) == (Verdict.SENT, "esp:backup")
    assert len(backup.messages) == 1

    refusing = smtp_server_factory("reject")
    settings = settings_with({"refusing": esp(refusing), "backup": esp(backup)})
    refused = await deliver(settings, rule_with("refusing", ["backup"]))
    assert (refused.verdict, refused.connection, refused.smtp_code) == (Verdict.FAILED, "esp:refusing", 550)
    assert len(backup.messages) == 1  # no failover on a permanent refusal


async def test_every_connection_transient_is_a_retry_through_the_last(
    smtp_server_factory: SMTPServerFactory,
) -> None:
    first = smtp_server_factory("flaky", fail_code=421, fail_times=None)
    second = smtp_server_factory("flaky", fail_code=451, fail_times=None)
    settings = settings_with({"first": esp(first), "second": esp(second)})
    result = await deliver(settings, rule_with("first", ["second"]))
    assert (result.verdict, result.connection, result.smtp_code) == (Verdict.TRANSIENT, "esp:second", 451)


async def test_deployment_fallbacks_and_the_idempotency_header(
    smtp_server_factory: SMTPServerFactory,
) -> None:
    closed = smtp_server_factory("plain")
    closed.stop()
    provider = smtp_server_factory("plain")
    settings = settings_with(
        {
            "primary": esp(closed, fallbacks=["provider"]),
            "provider": esp(provider, idempotency_header="Idempotency-Key"),
        }
    )
    result = await deliver(settings, rule_with("primary"))
    assert (result.verdict, result.connection) == (Verdict.SENT, "esp:provider")
    (received,) = provider.messages
    event_id = received.message["X-Eventmail-Event"]
    expected = message_id_for(event_id, "r-fo").strip("<>").split("@")[0]
    assert received.message["Idempotency-Key"] == expected


def test_fallbacks_are_validated_where_they_are_written() -> None:
    context = RuleContext(esp_connections=frozenset({"a", "b"}))
    with pytest.raises(RuleError, match=r"action\.fallbacks\.0\.name: no ESP connection named 'c'"):
        rule_with("a", ["c"], context)
    with pytest.raises(RuleError, match=r"action\.fallbacks\.0\.name: 'a' is already tried before"):
        rule_with("a", ["a"], context)
    with pytest.raises(SettingsError, match=r"a\.fallbacks: 'z' is not an ESP connection of this deployment"):
        load_settings(esp_connections={"a": {"host": "h", "fallbacks": ["z"]}})


def test_the_outcome_names_the_connection_that_sent(
    kafka_bootstrap: str, topic_factory: TopicFactory, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    closed = smtp_server_factory("plain")
    closed.stop()
    backup = smtp_server_factory("plain")
    deployment = Deployment.create(kafka_bootstrap, topic_factory, partitions=1).with_esp(
        {"primary": esp(closed), "backup": esp(backup)}
    )
    env = deployment.env(EVENTMAIL_SMTP__IN_PLACE_RETRIES="0", EVENTMAIL_SMTP__CONNECT_TIMEOUT_SECONDS="2")
    doc = rule_doc(id="r-fo", product_id="p-fo")
    doc["action"]["connection"] = {"type": "esp", "name": "primary"}
    doc["action"]["fallbacks"] = [{"type": "esp", "name": "backup"}]
    rule_file = tmp_path / "rule.json"
    rule_file.write_text(json.dumps(doc))
    assert run_cli(["rules", "apply", str(rule_file)], env).code == 0
    runner = ServiceProcess("run", env, tmp_path).start()
    try:
        runner.wait_ready(timeout=90)
        event = {
            "event_id": "ev-fo",
            "trigger": "lead_sold",
            "occurred_at": "2026-11-30T10:00:00Z",
            "product_id": "p-fo",
        }
        produce(kafka_bootstrap, deployment.topics["lms"], [(b"k", json.dumps(event).encode())])
        backup.wait_for(1, timeout=60)
        (record,) = consume_all(kafka_bootstrap, deployment.topics["outcomes"], expected=1)
        outcome = decode_outcome(record.value() or b"")
        assert (outcome.status.value, outcome.connection) == ("sent", "esp:backup")
        runner.wait_metric("eventmail_mails_sent_total", lambda v: v == 1, labels={"connection": "backup"})
    finally:
        runner.stop()
