"""Provenance: every outcome names the rule version that produced it (the offset of the rule's record
on the rules topic), every mail carries it in X-Eventmail-Rule-Version, and eventmail logs shows it;
on the real broker and SMTP server."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from consumer.outcomes.codec import decode_outcome
from tests.clirun import run_cli
from tests.support.kafka import TopicFactory, consume_all, produce
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPTestServer
from tests.test_rules_model import rule_doc


def wait_for(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_outcomes_mails_and_logs_carry_the_rule_version(
    kafka_bootstrap: str, topic_factory: TopicFactory, smtp_server: SMTPTestServer, tmp_path: Path
) -> None:
    deployment = Deployment.create(kafka_bootstrap, topic_factory, partitions=1).with_esp(
        {"default": {"host": "127.0.0.1", "port": smtp_server.port, "encryption": "none"}}
    )
    env = deployment.env()
    rule_file = tmp_path / "rule.json"
    rule_file.write_text(json.dumps(rule_doc(id="r-prov", product_id="p-prov")))
    run_cli(["rules", "apply", str(rule_file)], env)  # version 1
    rule_file.write_text(json.dumps(rule_doc(id="r-prov", product_id="p-prov", name="second")))
    applied = run_cli(["rules", "apply", str(rule_file)], env)
    assert applied.code == 0, applied.err
    found = re.search(r"offset (\d+)\)", applied.out)
    assert found is not None, applied.out
    offset = int(found.group(1))
    assert offset > 0

    runner = ServiceProcess("run", env, tmp_path).start()
    try:
        runner.wait_ready(timeout=90)
        event = {
            "event_id": "ev-prov-1",
            "trigger": "lead_sold",
            "occurred_at": "2026-11-30T10:00:00Z",
            "product_id": "p-prov",
            "lead_id": "L-1",
        }
        produce(kafka_bootstrap, deployment.topics["lms"], [(b"k", json.dumps(event).encode())])
        wait_for(lambda: len(smtp_server.messages) == 1, "the mail")
        assert smtp_server.messages[0].message["X-Eventmail-Rule-Version"] == str(offset)
        (record,) = consume_all(kafka_bootstrap, deployment.topics["outcomes"], expected=1)
        assert decode_outcome(record.value() or b"").rule_version == offset
        logs = run_cli(["logs", "--since", "1h", "--json"], env)
        assert json.loads(logs.out.splitlines()[0])["rule_version"] == offset
        table = run_cli(["logs", "--since", "1h"], {**env, "COLUMNS": "200"})
        assert f"v{offset}" in table.out
    finally:
        runner.stop()
