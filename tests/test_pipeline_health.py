"""Health, readiness and start-up errors of ``eventmail run``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.factories import make_event
from tests.pipeline_support import apply_rules, esp_env, publish, rule_doc
from tests.support.kafka import TopicFactory
from tests.support.service import ROOT, Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory


def test_not_ready_until_the_rules_topic_can_be_read(
    kafka_bootstrap: str, topic_factory: TopicFactory, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    deployment = Deployment.create(kafka_bootstrap, topic_factory)
    server = smtp_server_factory("plain")
    env = esp_env(deployment, {"default": server}) | {"EVENTMAIL_TOPICS__RULES": "missing-rules-topic-x"}
    service = ServiceProcess("run", env, tmp_path).start()
    try:
        deadline = time.monotonic() + 60
        status, body = 0, ""
        while time.monotonic() < deadline:
            try:
                status, body = service.get("/readyz")
                break
            except OSError:
                time.sleep(0.2)
        assert status == 503
        assert json.loads(body)["rules_loaded"] is False
        health, _ = service.get("/healthz")
        assert health == 200
        assert service.metric("eventmail_ready", {"service": "run"}) == 0
        assert service.terminate() == 0
    finally:
        service.stop()


def test_ready_service_reports_lag_and_json_logs_with_event_and_rule_ids(
    kafka_bootstrap: str, topic_factory: TopicFactory, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    deployment = Deployment.create(kafka_bootstrap, topic_factory)
    server = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(deployment, tmp_path, rule_doc("r-1", action={"subject": "{{ lead_id }}"}))
    service = ServiceProcess(
        "run",
        deployment.env(
            EVENTMAIL_ESP_CONNECTIONS=json.dumps(
                {
                    "default": {
                        "host": server.host,
                        "port": server.port,
                        "encryption": "none",
                        "password": "esp-secret-value",
                    }
                }
            )
        ),
        tmp_path,
    ).start()
    try:
        service.wait_ready()
        _, body = service.get("/readyz")
        details = json.loads(body)
        assert details == {
            "ok": True,
            "rules_loaded": True,
            "assignment_received": True,
            "broker_reachable": True,
        }
        event = make_event(lead_id="L1")
        publish(deployment, [event])
        server.wait_for(1, timeout=60)
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline
            and "eventmail_consumer_lag_messages{" not in service.get("/metrics")[1]
        ):
            time.sleep(0.5)
        metrics = service.get("/metrics")[1]
        assert "eventmail_consumer_lag_messages{" in metrics
        assert service.metric("eventmail_rules_loaded") == 1
        assert service.terminate() == 0
    finally:
        service.stop()
    lines = [json.loads(line) for line in service.log_path.read_text().splitlines() if line.startswith("{")]
    assert any(line["msg"] == "eventmail run stopped cleanly" for line in lines)
    # the normal send path names the event and the rule (what an SRE greps for), and the Message-ID
    sent = [line for line in lines if line["msg"] == "mail sent"]
    assert [(line["event_id"], line["rule_id"], line["attempts"]) for line in sent] == [
        (event.event_id, "r-1", 1)
    ]
    assert [line["message_id"] for line in sent] == server.message_ids
    assert sent[0]["level"] == "info"
    assert "esp-secret-value" not in service.log_path.read_text()
    assert "esp-secret-value" not in metrics


def test_a_bad_setting_fails_at_start_with_one_line() -> None:
    env = {"EVENTMAIL_PIPELINE__MAX_IN_FLIGHT": "lots", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "consumer.cli.main", "run"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "eventmail: EVENTMAIL_PIPELINE__MAX_IN_FLIGHT: Input should be a valid integer, "
        "unable to parse string as an integer"
    ]
