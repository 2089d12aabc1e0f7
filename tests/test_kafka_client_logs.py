"""librdkafka's own log lines (``%3|...|FAIL|...``) go through the service's logger: JSON lines with
mapped levels in a service, nothing in a CLI command (which reports a failure as one line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CLIENT = """
import sys, time
from confluent_kafka import Producer
from consumer.settings import load_settings
if sys.argv[1] == "service":
    from consumer.observability.logging import configure_logging
    configure_logging("INFO", "json")
producer = Producer(load_settings().kafka_config())
deadline = time.monotonic() + 3
while time.monotonic() < deadline:
    producer.poll(0.1)  # a broker that refuses: librdkafka logs FAIL lines
"""


def _run(mode: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTMAIL_")}
    env["EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS"] = "127.0.0.1:1"  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-c", _CLIENT, mode], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


def test_a_service_logs_librdkafka_lines_as_json_with_levels() -> None:
    lines = _run("service")
    assert lines, "librdkafka said nothing about a refused connection"
    records = [json.loads(line) for line in lines]  # every line JSON: none raw
    failures = [r for r in records if r["logger"] == "librdkafka" and r["msg"] == "librdkafka FAIL"]
    assert failures
    assert failures[0]["level"] == "error"
    assert "Connection refused" in failures[0]["kafka_log"]
    assert failures[0]["client"].startswith("rdkafka#producer-")
    assert len(failures) < 5  # repeats held back, not one line per reconnect


def test_a_cli_command_prints_no_librdkafka_lines() -> None:
    assert _run("cli") == []
