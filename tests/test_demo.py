"""``eventmail demo`` end to end against the session's broker: the mail it leaves, the SMTP log, the
warning alert, the dead letters, and a clean stop (after the summary, and on Ctrl-C in follow mode).

Why exactly one alert: the demo's rule ``demo-partner-returns`` sends through a relay that refuses
every mail, so its first failed delivery already breaches ``percent: 10`` and the breach never clears
(no ``resolved`` alert); ``frequency_minutes: 30`` allows one alert per half hour, and every demo run
has an alerts topic of its own. Every other rule delivers all its mail, so none of them alerts.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from consumer.demo import rules as demo_rules
from consumer.demo.plan import SCENARIOS, build_plan
from consumer.demo.stack import Deployment
from consumer.errors import CodecError
from consumer.events.codec import EventDecoder
from consumer.events.model import Event
from consumer.events.triggers import Platform
from consumer.outcomes.codec import decode_alert, decode_outcome
from consumer.outcomes.model import AlertKind
from consumer.rules.checks import RuleContext
from consumer.rules.matching import RuleIndex, compile_rule
from consumer.rules.model import Rule
from consumer.rules.validation import validate_files
from tests.clirun import run_cli
from tests.support.kafka import consume_all, produce
from tests.test_rules_matching import reference_matches

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_RULES = {
    "cl-revenue-postback",
    "cl-warranty-buyer-response",
    "lms-auto-lead-sold",
    "lms-earnings-html",
    "lms-high-value-sales",
    "lms-rejected-partner-relay",
}
FAILING_RULE = "demo-partner-returns"


def _demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTMAIL_")}
    env.update(COLUMNS="160", PYTHONUNBUFFERED="1")
    return env


def _demo_command(bootstrap: str, output: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "consumer.cli.main",
        "demo",
        "--bootstrap",
        bootstrap,
        "--output",
        str(output),
        "--json",
        *extra,
    ]


def _env_file(path: Path) -> dict[str, str]:
    """The variables of demo.env (``export NAME=value`` lines, shell-quoted)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = shlex.split(value)[0]
    return env


def _refuses_connections(url_or_port: str | int) -> bool:
    port = int(str(url_or_port).rsplit(":", 1)[-1].split("/")[0])
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _applied_rules(output: Path) -> list[Rule]:
    """The rules the demo applied (the files it leaves in its output folder)."""
    deployment = Deployment("127.0.0.1:9", "unit", {"default": 2525, "failing": 2526, "alerts": 2527}, {})
    rules, problems = validate_files(
        sorted((output / "rules").glob("*.yaml")), RuleContext.for_files(deployment.settings())
    )
    assert problems == []
    return [rule for _, rule in rules]


def _published(bootstrap: str, topics: dict[str, str]) -> tuple[list[Event], int]:
    """(the events on the demo's event topics, how many records there are not events)."""
    decoder = EventDecoder()
    events: list[Event] = []
    malformed = 0
    for name, platform in (("lms", Platform.LMS), ("call_logic", Platform.CALL_LOGIC)):
        for record in consume_all(bootstrap, topics[name]):
            try:
                events.append(decoder.decode(platform, record.value(), list(record.headers() or [])))
            except CodecError:
                malformed += 1
    return events, malformed


def _sink_totals(log: Path) -> tuple[int, int]:
    """(accepted, failed) summed over the "smtp-sink: stopped; ..." lines of the sinks' log."""
    totals = [
        (int(m["accepted"]), int(m["failed"]))
        for m in re.finditer(
            r"smtp-sink: stopped; (?P<accepted>\d+) accepted, (?P<failed>\d+) failed", log.read_text()
        )
    ]
    assert len(totals) == 3, log.read_text()[-2000:]
    return sum(a for a, _ in totals), sum(f for _, f in totals)


def _publish_again(bootstrap: str, topics: dict[str, str], mail: Path) -> None:
    """Publish once more the event record a mail (an .eml of the sink) came from."""
    event_id = str(
        email.message_from_bytes(mail.read_bytes(), policy=email.policy.default)["X-Eventmail-Event"]
    )
    decoder = EventDecoder()
    for name, platform in (("lms", Platform.LMS), ("call_logic", Platform.CALL_LOGIC)):
        for record in consume_all(bootstrap, topics[name]):
            try:
                event = decoder.decode(platform, record.value(), list(record.headers() or []))
            except CodecError:
                continue
            if event.event_id == event_id:
                produce(bootstrap, topics[name], [(record.key(), record.value())], headers=record.headers())
                return
    raise AssertionError(f"no record of {event_id} on the event topics")


@pytest.fixture
def demo_topics(kafka_bootstrap: str) -> Iterator[list[str]]:
    """The names of the topics a demo run made; deleted after the test."""
    topics: list[str] = []
    yield topics
    if topics:
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        for future in admin.delete_topics(topics, operation_timeout=30).values():
            try:
                future.result(timeout=30)
            except Exception as exc:  # a missing topic is fine; anything else is worth seeing
                if "UNKNOWN_TOPIC" not in str(exc):
                    raise


def test_demo_no_follow_leaves_mail_log_alert_and_dead_letters(
    kafka_bootstrap: str, tmp_path: Path, demo_topics: list[str]
) -> None:
    output = tmp_path / "demo-output"
    result = subprocess.run(
        _demo_command(kafka_bootstrap, output, "--events", "200", "--no-follow"),
        cwd=tmp_path,
        env=_demo_env(),
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert result.stdout.strip(), result.stderr[-4000:]
    summary: dict[str, Any] = json.loads(result.stdout)
    demo_topics.extend(summary["topics"].values())
    assert result.returncode == 0, result.stderr[-4000:]
    assert summary["ok"] is True, summary["problems"]
    assert summary["problems"] == []
    # The console ran (--local: 127.0.0.1, no login) and was ready before any event was published.
    assert summary["console_url"].startswith("http://127.0.0.1:")
    assert "Uvicorn running on http://127.0.0.1:" in (output / "logs" / "console.log").read_text()

    # What is on the topics and at the SMTP sinks, against what a hand-written reference of the
    # contract's matching (tests/test_rules_matching.py) expects of the events really published.
    rules = _applied_rules(output)
    assert {r.id for r in rules} == EXAMPLE_RULES | {FAILING_RULE}
    events, malformed = _published(kafka_bootstrap, summary["topics"])
    assert len(events) + malformed == 200
    assert malformed == 10
    wanted = {(e.event_id, r.id) for e in events for r in rules if reference_matches(r, e)}
    unmatched = {e.event_id for e in events} - {event_id for event_id, _ in wanted}
    assert 0 < len(unmatched) < len(events)
    to_send = {p for p in wanted if p[1] != FAILING_RULE}
    to_fail = wanted - to_send
    assert to_send
    assert to_fail
    written = [
        decode_outcome(m.value() or b"") for m in consume_all(kafka_bootstrap, summary["topics"]["outcomes"])
    ]
    by_status = Counter((o.status.value, o.event_id, o.rule_id) for o in written)
    assert by_status == Counter({("sent", *p): 1 for p in to_send} | {("failed", *p): 1 for p in to_fail})

    # The mail sink: one .eml per sent outcome (the same Message-ID), none from the refused rule;
    # the refusing relay refused exactly the failed deliveries (each once: a 550 is not retried).
    mails = sorted((output / "mail").glob("*.eml"))
    parsed = [email.message_from_bytes(path.read_bytes(), policy=email.policy.default) for path in mails]
    at_sink = Counter((str(m["X-Eventmail-Event"]), str(m["X-Eventmail-Rule"])) for m in parsed)
    assert at_sink == Counter(dict.fromkeys(to_send, 1))
    sent_ids = {o.message_id for o in written if o.status.value == "sent"}
    assert {str(m["Message-ID"]) for m in parsed} == sent_ids
    logged_ids = [
        json.loads(line)["message_id"] for line in (output / "logs" / "mail.jsonl").read_text().splitlines()
    ]
    assert sorted(logged_ids) == sorted(sent_ids)
    assert all(m["Subject"] and m["To"] for m in parsed)
    accepted, refused = _sink_totals(output / "logs" / "smtp-sinks.log")
    assert refused == len(to_fail)
    assert accepted == len(to_send) + 1  # and the alert mail
    # The summary says what the sinks and topics say.
    assert summary["published"] == 200
    assert summary["malformed"] == malformed
    assert summary["unmatched"] == len(unmatched)
    assert summary["outcomes"]["sent"] == summary["mail_files"] == len(to_send)
    assert summary["outcomes"]["failed"] == len(to_fail)
    assert summary["dead_letters"] == malformed
    per_rule = Counter(rule for _, rule in to_send)
    assert {r: c["sent"] for r, c in summary["per_rule"].items() if c["sent"]} == per_rule
    expected = {"sent": len(to_send), "failed": len(to_fail)}

    # The SMTP log, read as an admin would after the demo: `. demo-output/demo.env && eventmail logs`.
    env = _env_file(output / "demo.env")
    assert env["EVENTMAIL_TOPICS__OUTCOMES"] == summary["topics"]["outcomes"]
    logged = run_cli(["logs", "--json", "--since", "1h"], env)
    assert logged.code == 0, logged.err
    outcomes = [json.loads(line) for line in logged.out.splitlines()]
    statuses = Counter(o["status"] for o in outcomes)
    assert statuses == Counter({"sent": expected["sent"], "failed": expected["failed"]})
    failed = [o for o in outcomes if o["status"] == "failed"]
    assert {o["rule_id"] for o in failed} == {FAILING_RULE}
    assert {o["smtp_code"] for o in failed} == {550}
    assert all("550" in o["error"] for o in failed)
    assert {o["rule_id"] for o in outcomes if o["status"] == "sent"} == EXAMPLE_RULES
    table = run_cli(["logs", "--status", "failed", "--since", "1h"], {**env, "COLUMNS": "200"})
    assert table.code == 0, table.err
    assert f"SMTP log: {expected['failed']} outcomes" in table.out
    assert "returns@partner.example.net" in table.out

    # Exactly one warning alert (see the module docstring), emailed and recorded.
    alerts = [decode_alert(m.value()) for m in consume_all(kafka_bootstrap, summary["topics"]["alerts"])]
    assert len(alerts) == 1
    alert = alerts[0]
    assert (alert.rule_id, alert.kind) == (FAILING_RULE, AlertKind.FIRED)
    assert alert.email_sent is True
    assert set(alert.recipients) == {"demo-oncall@example.com", "ops-lead@example.com"}
    assert [a["rule_id"] for a in summary["alerts"]] == [FAILING_RULE]
    alert_mails = list((output / "alerts").glob("*.eml"))
    assert len(alert_mails) == 1
    alert_mail = email.message_from_bytes(alert_mails[0].read_bytes(), policy=email.policy.default)
    assert alert_mail["X-Eventmail-Rule"] == FAILING_RULE

    # Dead letters: every malformed record, with the reason and where it came from.
    dead = consume_all(kafka_bootstrap, summary["topics"]["dlq"])
    assert len(dead) == malformed
    for record in dead:
        headers = dict(record.headers() or [])
        assert headers["eventmail.error"]
        source = headers["eventmail.source"].decode()
        assert source.startswith((summary["topics"]["lms"], summary["topics"]["call_logic"]))

    # Everything the demo started is stopped; what it leaves for the user is there.
    for url in summary["metrics"].values():
        assert _refuses_connections(url), f"{url} still answers"
    connections = json.loads(env["EVENTMAIL_ESP_CONNECTIONS"])
    for connection in connections.values():
        assert _refuses_connections(connection["port"])
    assert (output / "logs" / "run.log").stat().st_size > 0
    assert len(list((output / "rules").glob("*.yaml"))) == 7
    assert "eventmail demo: summary" in result.stderr


def test_demo_follows_until_ctrl_c_then_stops_everything(
    kafka_bootstrap: str, tmp_path: Path, demo_topics: list[str]
) -> None:
    output = tmp_path / "demo-output"
    process = subprocess.Popen(
        _demo_command(kafka_bootstrap, output, "--events", "20", "--rate", "0"),
        cwd=tmp_path,
        env=_demo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        for line in process.stdout:  # the summary is printed, then the demo keeps running
            lines.append(line)
            if line.rstrip() == "}":
                break
        summary: dict[str, Any] = json.loads("".join(lines))
        demo_topics.extend(summary["topics"].values())
        assert summary["ok"] is True, summary["problems"]
        for url in summary["metrics"].values():  # still serving after the summary
            assert not _refuses_connections(url)
        # Still following: a record published again after the summary is mailed while the demo runs.
        mail_dir = output / "mail"
        before = len(list(mail_dir.glob("*.eml")))
        _publish_again(kafka_bootstrap, summary["topics"], next(iter(sorted(mail_dir.glob("*.eml")))))
        deadline = time.monotonic() + 60
        while len(list(mail_dir.glob("*.eml"))) <= before and process.poll() is None:
            assert time.monotonic() < deadline, "a record published after the summary was never mailed"
            time.sleep(0.1)
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err[-3000:]
    assert "stopped eventmail run (exit 0)" in err
    assert "stopped eventmail aggregate (exit 0)" in err
    assert "stopped 3 SMTP sinks" in err
    for url in summary["metrics"].values():
        assert _refuses_connections(url)
    assert len(list((output / "mail").glob("*.eml"))) == summary["outcomes"]["sent"] + 1 > 1


def test_the_sample_stream_exercises_every_rule_and_every_kind_of_miss() -> None:
    deployment = Deployment("127.0.0.1:9", "unit", {"default": 2525, "failing": 2526, "alerts": 2527}, {})
    settings = deployment.settings()
    rules, problems = validate_files(demo_rules.rule_files(), RuleContext.for_files(settings))
    assert problems == []
    index = RuleIndex(compile_rule(rule) for _, rule in rules)
    plan = build_plan(200, index, frozenset({"esp:failing"}), run_id="unit", seed=7)
    again = build_plan(200, index, frozenset({"esp:failing"}), run_id="unit", seed=7)
    assert [r.label for r in plan.records] == [r.label for r in again.records]

    assert len(plan.records) == 200
    assert plan.malformed == 10
    assert plan.records[0].event is not None
    assert set(plan.per_rule()) == EXAMPLE_RULES | {FAILING_RULE}
    assert {rule for rule, counts in plan.per_rule().items() if counts["failed"]} == {FAILING_RULE}
    assert plan.alerting_rules == {FAILING_RULE}
    assert set(plan.by_scenario) == {s.name for s in SCENARIOS} | {"malformed"}
    # The near misses and the triggers nobody listens to really match nothing.
    matched = {event_id for event_id, _ in plan.deliveries}
    for record in plan.records:
        if record.event is None:
            continue
        misses = ("by FORM", "under review", "out of range", "ping back", "own site", "of 0", "untracked",
                  "small", "progress", "offers")  # fmt: skip
        if any(word in record.label for word in misses):
            assert record.event.event_id not in matched, record.label
    assert plan.unmatched == sum(
        1 for r in plan.records if r.event is not None and r.event.event_id not in matched
    )
