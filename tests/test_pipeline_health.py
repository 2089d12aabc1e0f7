"""Health, readiness and start-up errors of ``eventmail run``."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from consumer.devtools.process import free_port
from consumer.pipeline.runner import run_service
from consumer.rules import store as store_module
from consumer.settings import load_settings
from tests.factories import make_event
from tests.pipeline_support import apply_rules, esp_env, publish, rule_doc
from tests.support.kafka import TopicFactory
from tests.support.service import ROOT, Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory
from tests.test_aggregator_service import http_get, rules_consumer


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


def test_a_rule_store_that_stopped_fails_healthz(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    smtp_server_factory: SMTPServerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replica whose rule store stopped goes on mailing with the rules it had and never sees a
    change: not healthy, so that it is restarted, and /healthz says why."""
    metadata_error, consume_error = threading.Event(), threading.Event()
    monkeypatch.setattr(
        store_module, "Consumer", rules_consumer(metadata_error=metadata_error, consume_error=consume_error)
    )
    deployment = Deployment.create(kafka_bootstrap, topic_factory, partitions=1)
    port = free_port()
    env = esp_env(deployment, {"default": smtp_server_factory("plain")})
    for name, value in {**env, "EVENTMAIL_HTTP__PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    stop = asyncio.Event()
    answers: list[tuple[int, dict[str, Any]]] = []
    problems: list[BaseException] = []

    def until(status: int, what: str) -> None:
        deadline = time.monotonic() + 60
        while not answers or answers[-1][0] != status:
            assert time.monotonic() < deadline, f"timed out waiting for {what}: last {answers[-1:]}"
            time.sleep(0.1)
            answers.append(http_get(port, "/healthz"))

    def probe(loop: asyncio.AbstractEventLoop) -> None:
        try:
            until(200, "the service to be healthy")
            consume_error.set()
            until(503, "/healthz to fail")
        except BaseException as exc:  # raised by the test below
            problems.append(exc)
        finally:
            loop.call_soon_threadsafe(stop.set)

    async def service() -> int:  # the service owns its loop (it cancels what is left at its stop)
        threading.Thread(target=probe, args=(asyncio.get_running_loop(),), daemon=True).start()
        return await run_service(load_settings(), stop)

    threshold = gc.get_threshold()
    try:
        asyncio.run(service())
    finally:  # the service tunes the collector of its process, here the test session's
        gc.unfreeze()
        gc.set_threshold(*threshold)
    if problems:
        raise problems[0]
    assert answers[-1][1]["rules"] is False, answers[-1]
