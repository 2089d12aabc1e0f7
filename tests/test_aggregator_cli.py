"""``eventmail usage`` against the events produced, and ``eventmail aggregate`` as a real process
with rules from the rules topic."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from consumer.aggregator.config import from_rule
from consumer.aggregator.windows import Timeframe
from consumer.outcomes.codec import encode_outcome
from consumer.outcomes.model import Outcome, OutcomeStatus
from consumer.rules.codec import encode_rule
from consumer.rules.matching import compile_rule
from consumer.rules.model import Rule
from tests.clirun import run_cli
from tests.support.kafka import TopicFactory, produce
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPTestServer
from tests.test_aggregator_service import record

S = OutcomeStatus


def _outcome(rule: str, status: OutcomeStatus, enabled: bool, age: timedelta) -> tuple[bytes, bytes]:
    outcome = Outcome(created=datetime.now(UTC) - age, rule_id=rule, status=status, warnings_enabled=enabled)
    return rule.encode(), encode_outcome(outcome)


def test_usage_counts_final_results_of_rules_with_warnings(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory("outcomes", partitions=2)
    hour = timedelta(hours=1)
    records = [_outcome("r-a", S.SENT, True, hour) for _ in range(3)]
    records += [_outcome("r-a", S.FAILED, True, 26 * hour) for _ in range(2)]
    records += [_outcome("r-a", S.RETRYING, True, hour), _outcome("r-a", S.CONFIG_ERROR, True, hour)]
    records += [_outcome("r-b", S.SENT, False, hour) for _ in range(2)]  # warnings off: not billed
    records += [_outcome("r-c", S.SENT, True, hour)]
    records += [_outcome("r-c", S.SENT, True, 40 * 24 * hour)]  # created before the period
    produce(kafka_bootstrap, topic, records)
    env = {"EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap, "EVENTMAIL_TOPICS__OUTCOMES": topic}

    result = run_cli(["usage", "--json", "--by-day"], env)
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert [(r["rule_id"], r["events"]) for r in doc["rules"]] == [("r-a", 5), ("r-c", 1)]
    assert doc["rules"][0]["cost"] == 0.0005
    assert sum(doc["rules"][0]["days"].values()) == 5
    assert doc["total"] == {"events": 6, "cost": 0.0006}
    assert doc["price_per_event"] == 0.0001

    table = run_cli(["usage", "--since", "2h"], {**env, "COLUMNS": "160"})
    assert table.code == 0, table.err
    lines = table.out.splitlines()
    assert any("r-a" in line and " 3 " in line and "$0.0003" in line for line in lines)
    assert any("Total" in line and " 4 " in line and "$0.0004" in line for line in lines)

    assert run_cli(["usage", "--since", "soon"], env).code == 2
    missing = run_cli(["usage"], {**env, "EVENTMAIL_TOPICS__OUTCOMES": "no-such-outcomes-topic"})
    assert missing.code == 1
    assert missing.err.strip() == "eventmail: topic no-such-outcomes-topic does not exist"


def test_warning_settings_are_read_from_the_rule_model() -> None:
    rule = Rule.model_validate(_rule_document("r-model"))
    config = from_rule(compile_rule(rule))
    assert config is not None
    assert (config.timeframe, config.thresholds.count, config.thresholds.percent) == (Timeframe.M5, 1, None)
    assert config.emails == ("a@example.com", "b@example.com")
    assert config.recipients({"u-1": "owner@example.com"}) == [
        "a@example.com",
        "b@example.com",
        "owner@example.com",
    ]
    off = Rule.model_validate({**_rule_document("r-off"), "warnings": {"enabled": False}})
    assert from_rule(compile_rule(off)) is None


def _rule_document(rule_id: str) -> dict[str, object]:
    return {
        "id": rule_id,
        "name": "End to end",
        "platform": "lms",
        "level": "campaign",
        "campaign_id": "c-7",
        "triggers": ["lead_sold"],
        "action": {
            "connection": {"type": "esp", "name": "default"},
            "sender": {"email": "sales@example.com"},
            "recipients": [{"email": "ops@example.com"}],
            "subject": "Lead sold",
            "body": "Sold.",
        },
        "warnings": {
            "enabled": True,
            "timeframe": "5m",
            "count": 1,
            "users": ["u-1"],
            "emails": "a@example.com, b@example.com",
            "frequency_minutes": 30,
        },
    }


def test_aggregate_process_alerts_from_topic_rules_and_stops_cleanly(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    smtp_server: SMTPTestServer,
    tmp_path: Path,
) -> None:
    recorder, port = smtp_server, smtp_server.port
    deployment = Deployment.create(kafka_bootstrap, topic_factory, partitions=2)
    deployment.with_esp({"default": {"host": "127.0.0.1", "port": port, "encryption": "none"}})
    rule = Rule.model_validate(_rule_document("r-e2e"))
    produce(kafka_bootstrap, deployment.topics["rules"], [(b"r-e2e", encode_rule(rule))])
    env = deployment.env(
        EVENTMAIL_USERS=json.dumps({"u-1": "owner@example.com"}),
        EVENTMAIL_ALERTS__SENDER="alerts@eventmail.test",
    )
    service = ServiceProcess("aggregate", env, tmp_path).start()
    try:
        service.wait_ready()
        assert service.get("/healthz")[0] == 200
        t0 = datetime.now(UTC) - timedelta(minutes=1)
        produce(
            kafka_bootstrap,
            deployment.topics["outcomes"],
            [record("r-e2e", S.FAILED, t0 + timedelta(seconds=i)) for i in range(2)],
        )
        deadline = time.monotonic() + 30
        while not recorder.messages and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(recorder.messages) == 1, service.tail()
        assert sorted(recorder.messages[0].rcpt_tos) == [
            "a@example.com",
            "b@example.com",
            "owner@example.com",
        ]
        assert "End to end (r-e2e)" in recorder.messages[0].message["Subject"]
        while service.metric("eventmail_alerts_fired_total", {"kind": "fired"}) < 1:
            assert time.monotonic() < deadline, service.tail()
            time.sleep(0.1)
        assert service.metric("eventmail_outcomes_aggregated_total", {"status": "failed"}) == 2
        assert service.metric("eventmail_ready", {"service": "aggregate"}) == 1
        assert service.terminate() == 0
    finally:
        service.stop()
