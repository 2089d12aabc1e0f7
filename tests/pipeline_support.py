"""Shared steps of the end-to-end tests of ``eventmail run``: rules in, events in, outcomes out."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from consumer.events.codec import encode_json
from consumer.events.model import Event
from consumer.events.triggers import Platform
from consumer.outcomes.codec import decode_outcome
from consumer.outcomes.model import Outcome
from tests.clirun import run_cli
from tests.support.kafka import consume_all, produce
from tests.support.service import Deployment
from tests.support.smtp import SMTPTestServer


def esp(server: SMTPTestServer, **extra: Any) -> dict[str, Any]:
    """An EVENTMAIL_ESP_CONNECTIONS entry for a test SMTP server."""
    return {"host": server.host, "port": server.port, "encryption": "none", **extra}


#: The right part of the Message-IDs of rule_doc's mail: its sender's domain.
SENDER_DOMAIN = "example.com"


def rule_doc(rule_id: str, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": rule_id,
        "name": f"Rule {rule_id}",
        "platform": "lms",
        "level": "product",
        "product_id": "p-1",
        "triggers": ["lead_sold"],
        "action": {
            "connection": {"type": "esp", "name": "default"},
            "sender": {"email": "sales@example.com", "name": "Sales"},
            "recipients": [{"email": "ops@example.com", "name": "Ops"}],
            "subject": "Lead {{ lead_id }} sold for {{ price }}",
            "body": "Lead {{ lead_id }} from {{ publisher_id }} ({{ data.first_name }}).",
        },
    }
    for key, value in overrides.items():
        if key == "action":
            doc["action"] = {**doc["action"], **value}
        else:
            doc[key] = value
    return doc


def apply_rules(deployment: Deployment, tmp_path: Path, *docs: dict[str, Any]) -> None:
    path = tmp_path / f"rules-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(list(docs)))
    result = run_cli(["rules", "apply", str(path)], deployment.env())
    assert result.code == 0, result.err


def publish(deployment: Deployment, events: list[Event]) -> None:
    for platform in Platform:
        batch = [e for e in events if e.platform is platform]
        if batch:
            topic = deployment.topics["lms" if platform is Platform.LMS else "call_logic"]
            produce(deployment.bootstrap, topic, [(e.event_id.encode(), encode_json(e)) for e in batch])


def outcomes(deployment: Deployment, expected: int | None = None, timeout: float = 60.0) -> list[Outcome]:
    records = consume_all(
        deployment.bootstrap, deployment.topics["outcomes"], expected=expected, timeout=timeout
    )
    return [decode_outcome(m.value() or b"") for m in records]


def wait_outcomes(deployment: Deployment, predicate: Any, timeout: float = 60.0) -> list[Outcome]:
    deadline = time.monotonic() + timeout
    got: list[Outcome] = []
    while time.monotonic() < deadline:
        got = outcomes(deployment, timeout=10)
        if predicate(got):
            return got
        time.sleep(0.5)
    raise TimeoutError(f"outcomes never satisfied the condition; last {len(got)}: {[o.status for o in got]}")


def esp_env(deployment: Deployment, servers: dict[str, SMTPTestServer], **extra: Any) -> dict[str, str]:
    return deployment.env(
        EVENTMAIL_ESP_CONNECTIONS=json.dumps({n: esp(s, **extra) for n, s in servers.items()})
    )
