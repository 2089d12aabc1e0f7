"""``eventmail rules`` and ``eventmail placeholders`` as an admin uses them, against the real broker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet

from consumer.mail.message import allow_special_use_domains
from tests.clirun import run_cli
from tests.support.kafka import TopicFactory, consume_all
from tests.test_rules_examples import EXAMPLES
from tests.test_rules_model import rule_doc

CLEAR = "pa55-word-in-clear"
ESP = json.dumps({"default": {"host": "smtp.example.com"}})


@pytest.fixture
def env(kafka_bootstrap: str, topic_factory: TopicFactory) -> dict[str, str]:
    return {
        "EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "EVENTMAIL_TOPICS__RULES": topic_factory("rules", compacted=True),
        "EVENTMAIL_ESP_CONNECTIONS": ESP,
        "EVENTMAIL_SECRET_KEY": Fernet.generate_key().decode(),
    }


def write(path: Path, documents: Any) -> Path:
    text = json.dumps(documents) if path.suffix == ".json" else yaml.safe_dump(documents, sort_keys=False)
    path.write_text(text)
    return path


def manual_rule(rule_id: str) -> dict[str, Any]:
    doc = rule_doc(id=rule_id)
    doc["action"]["connection"] = {
        "type": "manual",
        "host": "smtp.example.com",
        "port": 587,
        "encryption": "tls",
        "login": "mailer",
        "password": CLEAR,
    }
    return doc


def test_validate_examples_and_report_problems_one_per_line(tmp_path: Path) -> None:
    ok = run_cli(["rules", "validate", *map(str, EXAMPLES)], {"EVENTMAIL_ESP_CONNECTIONS": ESP})
    assert (ok.code, ok.out.strip()) == (0, f"ok: {len(EXAMPLES)} rule(s) valid")
    directory = run_cli(["rules", "validate", str(EXAMPLES[0].parent)], {"EVENTMAIL_ESP_CONNECTIONS": ESP})
    assert directory.code == 0

    bad = write(
        tmp_path / "bad.yaml", [rule_doc(id="good"), rule_doc(id="bad", triggers=["lead_sol"], level="x")]
    )
    result = run_cli(["rules", "validate", str(bad)], {"EVENTMAIL_ESP_CONNECTIONS": ESP})
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert lines[:-1] == [f"{bad}: rule bad: level: Input should be 'product' or 'campaign'"]
    assert lines[-1] == "eventmail: 1 problem(s) in 1 file(s)"
    assert "Traceback" not in result.err

    no_esp = run_cli(["rules", "validate", str(EXAMPLES[0])])
    assert no_esp.code == 1
    assert "action.connection.name: no ESP connection named 'default'" in no_esp.err


def test_apply_seals_passwords_and_list_get_never_show_them(env: dict[str, str], tmp_path: Path) -> None:
    files = [write(tmp_path / "manual.yaml", manual_rule("r-manual")), *EXAMPLES[:2]]
    applied = run_cli(["rules", "apply", *map(str, files)], env)
    assert applied.code == 0, applied.err
    assert applied.out.startswith("applied r-manual (")
    assert applied.out.count("applied ") == 3

    records = consume_all(
        env["EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS"], env["EVENTMAIL_TOPICS__RULES"], expected=3
    )
    stored = {(m.key() or b"").decode(): json.loads(m.value() or b"") for m in records}
    password = stored["r-manual"]["action"]["connection"]["password"]
    assert password.startswith("enc:")
    assert CLEAR not in json.dumps(stored)

    listed = run_cli(["rules", "list", "--json"], env)
    assert listed.code == 0, listed.err
    documents = {d["id"]: d for d in map(json.loads, listed.out.splitlines())}
    assert len(documents) == 3
    assert documents["r-manual"]["action"]["connection"]["password"] == "enc:…"

    got = run_cli(["rules", "get", "r-manual"], env)
    assert got.code == 0
    assert "password: enc:…" in got.out
    assert yaml.safe_load(got.out)["id"] == "r-manual"
    table = run_cli(["rules", "list"], {**env, "COLUMNS": "200"})
    assert "manual:smtp.example.com:587" in table.out
    for output in (applied.out, applied.err, listed.out, got.out, table.out):
        assert CLEAR not in output
        assert password not in output


def test_nothing_is_published_when_one_rule_of_the_batch_is_invalid(
    env: dict[str, str], tmp_path: Path
) -> None:
    good = write(tmp_path / "good.yaml", rule_doc(id="good"))
    bad = write(tmp_path / "bad.json", rule_doc(id="bad", product_id=None))
    result = run_cli(["rules", "apply", str(good), str(bad)], env)
    assert result.code == 1
    assert f"{bad}: rule bad: product_id: required when level is product" in result.err
    assert consume_all(env["EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS"], env["EVENTMAIL_TOPICS__RULES"]) == []

    no_key = {k: v for k, v in env.items() if k != "EVENTMAIL_SECRET_KEY"}
    manual = write(tmp_path / "manual.yaml", manual_rule("r-manual"))
    sealed = run_cli(["rules", "apply", str(good), str(manual)], no_key)
    assert sealed.code == 1
    assert "rule r-manual: action.connection.password: EVENTMAIL_SECRET_KEY is not set" in sealed.err
    assert consume_all(env["EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS"], env["EVENTMAIL_TOPICS__RULES"]) == []


def test_delete_writes_tombstones(env: dict[str, str], tmp_path: Path) -> None:
    rules = write(tmp_path / "rules.yaml", [rule_doc(id="a"), rule_doc(id="b")])
    assert run_cli(["rules", "apply", str(rules)], env).code == 0
    deleted = run_cli(["rules", "delete", "a"], env)
    assert (deleted.code, deleted.out.strip()) == (0, "deleted a")
    assert [json.loads(x)["id"] for x in run_cli(["rules", "list", "--json"], env).out.splitlines()] == ["b"]
    missing = run_cli(["rules", "get", "a"], env)
    assert missing.code == 1
    assert missing.err.strip() == f"eventmail: rule a not found on {env['EVENTMAIL_TOPICS__RULES']}"


def test_a_missing_topic_is_one_clear_line(env: dict[str, str], tmp_path: Path) -> None:
    env = {**env, "EVENTMAIL_TOPICS__RULES": "eventmail-test-missing-rules-topic"}
    rules = write(tmp_path / "rules.yaml", rule_doc())
    for args in (["rules", "apply", str(rules)], ["rules", "list"], ["rules", "delete", "r-1"]):
        result = run_cli(args, env)
        assert result.code == 1, args
        assert result.err.count("\n") == 1
        assert "eventmail-test-missing-rules-topic does not exist" in result.err


@pytest.mark.parametrize(
    "args",
    [
        ["rules", "apply"],
        ["rules", "validate", "/no/such/file.yaml"],
        ["rules", "get", "not a valid id"],
        ["rules", "delete"],
        ["rules", "frobnicate"],
        ["placeholders", "--platform", "email"],
        ["placeholders", "--trigger", "amd", "--platform", "lms"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run_cli(args)
    assert result.code == 2
    assert "Traceback" not in result.err


@pytest.mark.parametrize(
    "command",
    [
        ["rules"],
        ["rules", "validate"],
        ["rules", "apply"],
        ["rules", "delete"],
        ["rules", "list"],
        ["rules", "get"],
        ["placeholders"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = run_cli([*command, "--help"])
    assert result.code == 0
    assert "Usage: eventmail" in result.out
    assert len(result.out.splitlines()) > 5


def test_placeholders_per_platform_and_trigger() -> None:
    def names(args: list[str]) -> set[str]:
        result = run_cli(["placeholders", "--json", *args])
        assert result.code == 0, result.err
        return {json.loads(line)["name"] for line in result.out.splitlines()}

    call_logic = names(["--platform", "call_logic"])
    lms = names(["--platform", "lms"])
    assert {"call_tracking_pool_id", "lead_id", "price", "data.KEY"} <= call_logic
    assert "call_tracking_pool_id" not in lms
    assert names(["--trigger", "amd"]) == call_logic  # amd is a Call Logic trigger only
    table = run_cli(["placeholders", "--platform", "lms"], {"COLUMNS": "160"})
    assert "{{ lead_id }}" in table.out
    unknown = run_cli(["placeholders", "--trigger", "lead_sol"])
    assert "did you mean 'lead_sold'" in unknown.err


def test_allowed_special_use_domains_apply_to_rules(tmp_path: Path) -> None:
    doc = rule_doc(id="internal-mail")
    doc["action"]["recipients"] = [{"email": "ops@mail.test"}]
    path = write(tmp_path / "internal.yaml", [doc])
    refused = run_cli(["rules", "validate", str(path)], {"EVENTMAIL_ESP_CONNECTIONS": ESP})
    assert refused.code == 1
    assert "special-use" in refused.err
    try:
        allowed = run_cli(
            ["rules", "validate", str(path)],
            {"EVENTMAIL_ESP_CONNECTIONS": ESP, "EVENTMAIL_SMTP__ALLOWED_SPECIAL_USE_DOMAINS": '["test"]'},
        )
    finally:
        allow_special_use_domains(())
    assert allowed.code == 0, allowed.err
    assert "1 rule(s) valid" in allowed.out
