"""Provenance: every outcome names the rule version that produced it (the offset of the rule's record
on the rules topic), every mail carries it in X-Eventmail-Rule-Version, and eventmail logs shows it;
on the real broker and SMTP server."""

from __future__ import annotations

import json
import re
from pathlib import Path

from consumer.outcomes.codec import decode_outcome
from tests.chaos_support import wait_until
from tests.clirun import run_cli
from tests.support.kafka import TopicFactory, consume_all, produce
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPTestServer
from tests.test_rules_model import rule_doc


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
        wait_until(lambda: len(smtp_server.messages) == 1, 60, "the mail", every=0.1)
        assert smtp_server.messages[0].message["X-Eventmail-Rule-Version"] == str(offset)
        (record,) = consume_all(kafka_bootstrap, deployment.topics["outcomes"], expected=1)
        assert decode_outcome(record.value() or b"").rule_version == offset
        logs = run_cli(["logs", "--since", "1h", "--json"], env)
        assert json.loads(logs.out.splitlines()[0])["rule_version"] == offset
        table = run_cli(["logs", "--since", "1h"], {**env, "COLUMNS": "200"})
        assert f"v{offset}" in table.out
    finally:
        runner.stop()


def test_the_version_header_on_every_path_of_the_message_builder() -> None:
    """The plain shortcut and the general path (HTML, non-ASCII) both write the header, once."""
    from consumer.mail import MailAddress, Rendered, build_message

    cases = [
        Rendered("Plain subject", "plain body\n", None),
        Rendered("HTML subject", None, "<p>html</p>"),
        Rendered("Ünïcode subject", "körper\n", None),
        Rendered("Both", "text\n", "<p>html</p>"),
    ]
    for rendered in cases:
        built = build_message(
            rendered,
            sender=MailAddress("from@example.com"),
            to=[MailAddress("to@example.com")],
            event_id="e-1",
            rule_id="r-1",
            rule_version=42,
            extra_headers=[("Idempotency-Key", "abc123")],
        )
        assert built.message.get_all("X-Eventmail-Rule-Version") == ["42"], rendered.subject
        assert built.message.get_all("Idempotency-Key") == ["abc123"], rendered.subject
