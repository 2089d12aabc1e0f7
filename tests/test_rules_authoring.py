"""``eventmail rules preview`` and ``eventmail rules test`` as an admin uses them on rule files."""

from __future__ import annotations

import json
import shutil
import time
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer
from cryptography.fernet import Fernet

from consumer.events.codec import EventDecoder
from consumer.events.triggers import Platform
from consumer.mail.compose import compose
from consumer.rules.matching import compile_rule
from consumer.rules.preview import MailPreview, preview
from consumer.rules.validation import validate_rule
from tests.clirun import run_cli
from tests.support.kafka import TopicFactory
from tests.test_rules_cli import manual_rule
from tests.test_rules_model import CONTEXT, rule_doc

EXAMPLES = Path(__file__).resolve().parents[1] / "config" / "rules" / "examples"
ENV = {"EVENTMAIL_ESP_CONNECTIONS": json.dumps({"default": {"host": "smtp.example.com"}})}
SOLD = EXAMPLES / "product-lead-sold.yaml"
HIGH = EXAMPLES / "price-range.yaml"
EVENT: dict[str, Any] = {
    "event_id": "e1",
    "trigger": "lead_sold",
    "occurred_at": "2026-01-01T00:00:00Z",
    "product_id": "auto-insurance",
    "lead_id": "L1",
    "buyer_id": "b-1",
    "publisher_id": "pub-2",
    "channel_id": "ch-1",
    "campaign_id": "c-9",
    "method": "POST",
    "price": 150.5,
    "data": {"state": "CA"},
}


def event_file(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(EVENT | changes))
    return path


def test_preview_shows_envelope_headers_and_body(tmp_path: Path) -> None:
    result = run_cli(["rules", "preview", str(SOLD), "--event", str(event_file(tmp_path))], ENV)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert "envelope from: leads@example.com" in lines
    assert "envelope to:   sales@example.com, sales-lead@example.com" in lines
    assert "Subject: Lead L1 sold to b-1 for 150.5 USD" in lines
    assert "X-Eventmail-Rule: lms-auto-lead-sold" in lines
    assert "--- text/plain" in lines
    assert "State:     CA" in lines


def test_preview_json_is_the_mail_the_consumer_builds(tmp_path: Path) -> None:
    result = run_cli(["rules", "preview", str(SOLD), "--event", str(event_file(tmp_path)), "--json"], ENV)
    assert result.code == 0, result.err
    shown = json.loads(result.out)
    rule = validate_rule(yaml.safe_load(SOLD.read_text()), CONTEXT)
    event = EventDecoder().decode(Platform.LMS, json.dumps(EVENT).encode())
    _, built = compose(event, compile_rule(rule))
    sent = message_from_bytes(built.data, policy=default_policy)
    assert shown["matched"] is True
    assert shown["envelope"] == {"sender": built.sender, "recipients": list(built.recipients)}
    not_dated = [[k, str(v)] for k, v in sent.items() if k != "Date"]
    assert [h for h in shown["headers"] if h[0] != "Date"] == not_dated
    assert shown["parts"] == [{"content_type": "text/plain", "body": sent.get_content()}]


def test_preview_lists_bcc_in_the_envelope_only(tmp_path: Path) -> None:
    doc = yaml.safe_load(SOLD.read_text())
    doc["action"]["bcc"] = [{"email": "audit@example.com"}]
    rule_file = tmp_path / "rule.yaml"
    rule_file.write_text(yaml.safe_dump(doc))
    result = run_cli(
        ["rules", "preview", str(rule_file), "--event", str(event_file(tmp_path)), "--json"], ENV
    )
    shown = json.loads(result.out)
    assert shown["bcc"] == ["audit@example.com"]
    assert "audit@example.com" in shown["envelope"]["recipients"]
    assert all(name.lower() != "bcc" for name, _ in shown["headers"])


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"publisher_id": "pub-under-review"}, "filters.publishers.exclude contains pub-under-review"),
        ({"trigger": "campaign_rejected"}, "trigger campaign_rejected is not in triggers (lead_sold)"),
        ({"method": "FORM"}, "filters.method wants POST, the event's method is FORM"),
    ],
)
def test_preview_names_the_condition_that_rejects(
    tmp_path: Path, changes: dict[str, Any], reason: str
) -> None:
    result = run_cli(["rules", "preview", str(SOLD), "--event", str(event_file(tmp_path, **changes))], ENV)
    assert result.code == 1
    assert result.err.strip() == f"eventmail: rule lms-auto-lead-sold does not match: {reason}"
    as_json = run_cli(
        ["rules", "preview", str(SOLD), "--event", str(event_file(tmp_path, **changes)), "--json"], ENV
    )
    assert as_json.code == 1
    assert json.loads(as_json.out) == {"rule_id": "lms-auto-lead-sold", "matched": False, "reason": reason}


def test_preview_of_a_bad_event_names_the_field(tmp_path: Path) -> None:
    result = run_cli(["rules", "preview", str(SOLD), "--event", str(event_file(tmp_path, price="lots"))], ENV)
    assert result.code == 1
    assert "price" in result.err
    assert str(tmp_path / "event.json") in result.err


def test_preview_of_a_file_with_several_rules_needs_rule(tmp_path: Path) -> None:
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump([yaml.safe_load(SOLD.read_text()), yaml.safe_load(HIGH.read_text())]))
    result = run_cli(["rules", "preview", str(both), "--event", str(event_file(tmp_path))], ENV)
    assert result.code == 1
    assert "choose one with --rule (ids: lms-auto-lead-sold, lms-high-value-sales)" in result.err
    chosen = run_cli(
        ["rules", "preview", str(both), "--rule", "lms-auto-lead-sold", "--event", str(event_file(tmp_path))],
        ENV,
    )
    assert chosen.code == 0, chosen.err


def test_preview_agrees_with_the_library() -> None:
    rule = compile_rule(validate_rule(yaml.safe_load(SOLD.read_text()), CONTEXT))
    event = EventDecoder().decode(Platform.LMS, json.dumps(EVENT).encode())
    result = preview(rule, event)
    assert isinstance(result, MailPreview)
    assert result.subject == "Lead L1 sold to b-1 for 150.5 USD"
    assert result.to == ("sales@example.com",)
    assert result.cc == ("sales-lead@example.com",)


# --- rules test ------------------------------------------------------------------------------------------


def suite(tmp_path: Path, tests: list[dict[str, Any]]) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    shutil.copy(HIGH, rules / "high-value.yaml")
    shutil.copy(SOLD, rules / "sold.yaml")
    path = tmp_path / "tests.yaml"
    path.write_text(
        yaml.safe_dump({"rule_files": ["rules/high-value.yaml", "rules/sold.yaml"], "tests": tests})
    )
    return path


HIGH_EVENT = {
    "event_id": "e2",
    "trigger": "lead_sold",
    "occurred_at": "2026-01-01T00:00:00Z",
    "campaign_id": "c-mortgage-refi",
    "lead_id": "L1",
    "tracking_strategy": "direct_sold",
    "price": 150.5,
}


def test_rules_test_passes_on_the_truth(tmp_path: Path) -> None:
    path = suite(
        tmp_path,
        [
            {
                "name": "a high-value sale mails finance",
                "platform": "lms",
                "event": HIGH_EVENT,
                "expect": [
                    {
                        "rule": "lms-high-value-sales",
                        "subject": "High-value sale: 150.5 USD for lead L1",
                        "to": ["finance@example.com", "revenue-team@example.com"],
                        "body_contains": ["sold at 150.5 USD"],
                    }
                ],
            },
            {
                "name": "a cheap sale mails nobody",
                "platform": "lms",
                "event": HIGH_EVENT | {"price": 5},
                "expect": [],
            },
        ],
    )
    result = run_cli(["rules", "test", str(path)], ENV)
    assert result.code == 0, result.err
    assert result.out.strip() == "ok: 2 test case(s) in 1 file(s) passed"


def test_rules_test_reports_each_difference(tmp_path: Path) -> None:
    path = suite(
        tmp_path,
        [
            {
                "name": "wrong subject and recipient",
                "platform": "lms",
                "event": HIGH_EVENT,
                "expect": [
                    {
                        "rule": "lms-high-value-sales",
                        "subject": "Big sale",
                        "to": ["ceo@example.com"],
                        "body_contains": ["Buyer"],
                    }
                ],
            },
            {
                "name": "cheap sale expected to mail",
                "platform": "lms",
                "event": HIGH_EVENT | {"price": 5},
                "expect": [{"rule": "lms-high-value-sales"}],
            },
            {"name": "unexpected mail", "platform": "lms", "event": HIGH_EVENT, "expect": []},
        ],
    )
    result = run_cli(["rules", "test", str(path)], ENV)
    assert result.code == 1
    prefix = f"{path}: test"
    assert result.err.splitlines() == [
        f"{prefix} 'wrong subject and recipient': rule lms-high-value-sales: subject is"
        " 'High-value sale: 150.5 USD for lead L1', expected 'Big sale'",
        f"{prefix} 'wrong subject and recipient': rule lms-high-value-sales: to is"
        " ['finance@example.com', 'revenue-team@example.com'], expected ['ceo@example.com']",
        f"{prefix} 'wrong subject and recipient': rule lms-high-value-sales: body does not contain 'Buyer'",
        f"{prefix} 'cheap sale expected to mail': rule lms-high-value-sales: expected a mail, the rule does"
        " not match (price 5.0 is not in 100.0..500.0)",
        f"{prefix} 'unexpected mail': rule lms-high-value-sales: matched and would send a mail, not expected",
        "eventmail: 3 of 3 test case(s) failed",
    ]


def test_rules_test_json_and_bad_files(tmp_path: Path) -> None:
    path = suite(
        tmp_path, [{"name": "n", "platform": "lms", "event": HIGH_EVENT | {"price": "x"}, "expect": []}]
    )
    result = run_cli(["rules", "test", "--json", str(path)], ENV)
    assert result.code == 1
    report = json.loads(result.out)
    assert report["cases"] == 1
    assert report["failed"] == 1
    assert "event: " in report["failures"][0]
    assert "price" in report["failures"][0]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"rule_files": ["rules/none.yaml"], "tests": [{"name": "x"}]}))
    result = run_cli(["rules", "test", str(broken)], ENV)
    assert result.code == 1
    assert "tests.0.platform" in result.err
    missing = tmp_path / "missing.yaml"
    missing.write_text(
        yaml.safe_dump(
            {
                "rule_files": ["rules/none.yaml"],
                "tests": [{"name": "x", "platform": "lms", "event": {}, "expect": []}],
            }
        )
    )
    result = run_cli(["rules", "test", str(missing)], ENV)
    assert result.code == 1
    assert f"{missing}: rule_files: no such file: {tmp_path / 'rules' / 'none.yaml'}" in result.err
    assert "0 of 0 test case(s) failed, 1 test file(s) unusable" in result.err


# --- rules diff, apply --prune, history (real broker) ----------------------------------------------------


@pytest.fixture
def topic_env(kafka_bootstrap: str, topic_factory: TopicFactory) -> dict[str, str]:
    return {
        **ENV,
        "EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "EVENTMAIL_TOPICS__RULES": topic_factory("rules", compacted=True),
        "EVENTMAIL_SECRET_KEY": Fernet.generate_key().decode(),
    }


def rule_file(tmp_path: Path, name: str, docs: list[dict[str, Any]]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(docs, sort_keys=False))
    return path


def manual(rule_id: str, password: str, **overrides: Any) -> dict[str, Any]:
    doc = manual_rule(rule_id) | overrides
    doc["action"]["connection"]["password"] = password
    return doc


def test_diff_then_apply_prune_then_history(topic_env: dict[str, str], tmp_path: Path) -> None:
    secret = "s3cret-pass-word"
    first = rule_file(
        tmp_path, "v1.yaml", [manual("r-manual", secret), rule_doc(id="r-old"), rule_doc(id="r-1")]
    )
    applied = run_cli(["rules", "apply", "--author", "ada@desk", str(first)], topic_env)
    assert applied.code == 0, applied.err

    # Same files: in sync, although the clear password would be sealed anew.
    same = run_cli(["rules", "diff", "--prune", "--exit-code", str(first)], topic_env)
    assert (same.code, same.out, same.err.strip()) == (0, "", "in sync: no differences")

    changed_doc = manual("r-manual", "another-pass-word", name="Renamed")
    second = rule_file(tmp_path, "v2.yaml", [changed_doc, rule_doc(id="r-1"), rule_doc(id="r-new")])
    diff = run_cli(["rules", "diff", "--prune", "--exit-code", str(second)], topic_env)
    assert diff.code == 3, diff.err
    assert diff.out.splitlines() == [
        "~ r-manual (changed)",
        "    name: 'Lead sold' -> 'Renamed'",
        "    action.connection.password: changed",
        "+ r-new (added)",
        "- r-old (removed)",
    ]
    without_prune = run_cli(["rules", "diff", "--json", str(second)], topic_env)
    assert [json.loads(line) for line in without_prune.out.splitlines()] == [
        {
            "rule_id": "r-manual",
            "change": "changed",
            "fields": [
                {"path": "name", "from": "Lead sold", "to": "Renamed"},
                {"path": "action.connection.password", "changed": True},
            ],
        },
        {"rule_id": "r-new", "change": "added", "fields": []},
    ]
    for output in (diff.out, diff.err, without_prune.out):
        assert secret not in output
        assert "another-pass-word" not in output

    refused = run_cli(["rules", "apply", "--prune", str(second)], topic_env)  # no terminal to say yes
    assert refused.code != 0
    assert "r-new" not in run_cli(["rules", "list", "--json"], topic_env).out
    pruned = run_cli(["rules", "apply", "--prune", "--yes", "--author", "bob@ci", str(second)], topic_env)
    assert pruned.code == 0, pruned.err
    assert "deleted r-old" in pruned.out.splitlines()
    listed = {
        json.loads(line)["id"] for line in run_cli(["rules", "list", "--json"], topic_env).out.splitlines()
    }
    assert listed == {"r-manual", "r-1", "r-new"}
    assert run_cli(["rules", "diff", "--prune", "--exit-code", str(second)], topic_env).code == 0

    history = run_cli(["rules", "history", "r-manual", "--json"], topic_env)
    assert history.code == 0, history.err
    versions = [json.loads(line) for line in history.out.splitlines()]
    assert [(v["author"], v["added"]) for v in versions] == [("ada@desk", True), ("bob@ci", False)]
    assert versions[1]["changes"] == [
        {"path": "name", "from": "Lead sold", "to": "Renamed"},
        {"path": "action.connection.password", "changed": True},
    ]
    assert versions[0]["offset"] < versions[1]["offset"]
    old = run_cli(["rules", "history", "r-old"], topic_env)
    lines = old.out.splitlines()
    assert lines[0].endswith("ada@desk  added")
    assert lines[1].endswith("bob@ci  deleted")
    assert "older ones may have been removed by compaction" in old.err
    text = run_cli(["rules", "history", "r-manual"], topic_env)
    assert "    action.connection.password: changed" in text.out.splitlines()
    assert secret not in text.out + history.out
    missing = run_cli(["rules", "history", "r-none"], topic_env)
    assert missing.code == 1
    assert f"no record of rule r-none on {topic_env['EVENTMAIL_TOPICS__RULES']}" in missing.err


def test_diff_of_invalid_files_exits_1(topic_env: dict[str, str], tmp_path: Path) -> None:
    bad = rule_file(tmp_path, "bad.yaml", [rule_doc(id="bad", product_id=None)])
    result = run_cli(["rules", "diff", "--exit-code", str(bad)], topic_env)
    assert result.code == 1
    assert "rule bad: product_id: required when level is product" in result.err


# --- rules backtest (real broker) ------------------------------------------------------------------------


def produce_at(bootstrap: str, topic: str, records: list[tuple[bytes, int]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    errors: list[Any] = []
    for value, timestamp_ms in records:
        producer.produce(
            topic, value=value, timestamp=timestamp_ms, on_delivery=lambda e, _m: errors.append(e)
        )
    assert producer.flush(30) == 0
    assert errors == [None] * len(records)


def test_backtest_replays_the_event_topic_without_sending(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    lms = topic_factory("lms", partitions=2)
    env = {
        **ENV,
        "EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "EVENTMAIL_TOPICS__LMS": lms,
        "EVENTMAIL_TOPICS__CALL_LOGIC": topic_factory("cl"),
    }
    sold = yaml.safe_load(SOLD.read_text())
    failing = rule_doc(id="r-twig", product_id="auto-insurance", triggers=["lead_sold"])
    failing["action"] |= {"use_twig": True, "body": "{{ 1 // ((price * 2) | int - 300) }}"}
    rules = rule_file(tmp_path, "rules.yaml", [sold, failing])
    now_ms = int(time.time() * 1000)
    day = 86_400_000

    def event(n: int, **changes: Any) -> bytes:
        return json.dumps(EVENT | {"event_id": f"e{n}", "lead_id": f"L{n}"} | changes).encode()

    produce_at(
        kafka_bootstrap,
        lms,
        [
            (event(0), now_ms - 3 * day),  # before --since
            (event(1), now_ms - 1000),
            (event(2, price=150), now_ms - 900),  # r-twig fails to render (1 // 0)
            (event(3, publisher_id="pub-under-review"), now_ms - 800),  # excluded by the sold rule only
            (b"{not json", now_ms - 700),
            (event(4, trigger="lead_rejected"), now_ms - 600),
        ],
    )
    result = run_cli(["rules", "backtest", str(rules), "--since", "1d", "--json"], env)
    assert result.code == 0, result.err
    by_rule = {r["rule_id"]: r for r in map(json.loads, result.out.splitlines())}
    assert by_rule["lms-auto-lead-sold"] | {"subjects": None} == {
        "rule_id": "lms-auto-lead-sold",
        "platform": "lms",
        "events_read": 4,
        "matched": 2,
        "mails": 2,
        "failures": 0,
        "subjects": None,
        "failure_samples": [],
    }
    assert sorted(by_rule["lms-auto-lead-sold"]["subjects"]) == [
        "Lead L1 sold to b-1 for 150.5 USD",
        "Lead L2 sold to b-1 for 150 USD",
    ]
    twig = by_rule["r-twig"]
    assert (twig["events_read"], twig["matched"], twig["mails"], twig["failures"]) == (4, 3, 2, 1)
    assert twig["failure_samples"][0].startswith("event e2: ")

    text = run_cli(["rules", "backtest", str(rules), "--since", "4d"], env)
    assert text.code == 0, text.err
    assert "lms: 6 record(s) read, 1 not valid events" in text.out.splitlines()
    assert "lms-auto-lead-sold: 5 event(s), 3 matched, 3 mail(s), 0 failure(s)" in text.out.splitlines()
    until = run_cli(["rules", "backtest", str(rules), "--since", "4d", "--until", "1d", "--json"], env)
    assert json.loads(until.out.splitlines()[0])["events_read"] == 1
