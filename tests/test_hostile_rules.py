"""Hostile rules and templates.

1. A corpus of invalid rule files (wrong types, missing fields, CR/LF and header injection in every
   single-line field, unknown placeholders, template-injection attempts, oversized templates,
   passwords where they do not belong): ``eventmail rules validate`` exits 1 with one line per
   problem, naming the file, the rule and the field, and never echoes a password.
2. Templates that only rendering can refuse (a billion-item loop, ``attr('__class__')``, recursion,
   a subject that renders a line break from event data ...): ``eventmail run`` writes a ``failed``
   outcome with a clear error, and nothing injected reaches the SMTP server.
3. Records written straight to the rules topic (bypassing the CLI) with a clear-text password, an
   injection or garbage: the running service rejects each with a ``config_error`` outcome, the last
   valid version stays in force, and no secret shows in the log, the outcomes, the DLQ, ``/metrics``,
   the mail or ``rules list`` / ``rules get``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet

from consumer.outcomes.model import Outcome, OutcomeStatus
from tests.chaos_support import FAST, alive, produce_many, read_outcomes, read_topic, wait_until
from tests.clirun import CliResult, run_cli
from tests.factories import make_event
from tests.pipeline_support import apply_rules, esp, publish, rule_doc
from tests.support.kafka import TopicFactory
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory, SMTPTestServer

SECRET = "Hunter2-Never-Show-Me-8e1d"
ESP_ONLY = {"EVENTMAIL_ESP_CONNECTIONS": json.dumps({"default": {"host": "smtp.example.com"}})}
INJECTION = "x\r\nBcc: evil@example.net"


@pytest.fixture
def deployment(kafka_bootstrap: str, topic_factory: TopicFactory) -> Deployment:
    return Deployment.create(kafka_bootstrap, topic_factory)


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with the dotted ``path`` set to ``value`` (``...`` deletes it)."""
    out = copy.deepcopy(doc)
    node: Any = out
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return out


def _manual(**fields: Any) -> dict[str, Any]:
    return {"type": "manual", "host": "smtp.example.com", "port": 587, "encryption": "tls", **fields}


def _twig(doc: dict[str, Any], part: str, text: str) -> dict[str, Any]:
    return _set(_set(doc, "action.use_twig", True), f"action.{part}", text)


BASE = rule_doc("r-h")


@dataclass(frozen=True)
class Case:
    name: str
    #: The rule document (dumped as YAML, or JSON with ``suffix=".json"``), or the file's text.
    content: Any
    #: The field path a problem line must name ("" for problems of the file itself).
    field: str
    #: Text the problem must contain.
    says: str = ""
    suffix: str = ".yaml"


CORPUS: list[Case] = [
    # wrong types
    Case("triggers-a-string", _set(BASE, "triggers", "lead_sold"), "triggers", "valid tuple"),
    Case("enabled-not-bool", _set(BASE, "enabled", "maybe"), "enabled", "boolean"),
    Case("level-a-number", _set(BASE, "level", 7), "level"),
    Case("recipients-a-number", _set(BASE, "action.recipients", 5), "action.recipients"),
    Case("port-a-word", _set(BASE, "action.connection", _manual(port="abc")), "action.connection.port"),
    Case("price-a-word", _set(BASE, "filters", {"price": {"op": "gt", "value": "x"}}), "filters.price.value"),
    Case(
        "percent-out-of-range", _set(BASE, "warnings", {"enabled": True, "percent": 500}), "warnings.percent"
    ),
    Case("action-a-list", _set(BASE, "action", ["subject"]), "action"),
    Case("rule-not-a-mapping", "- just a string\n", "", "a rule must be a mapping of fields"),
    Case("json-not-a-rule", '"text"', "", "expected a rule (a mapping) or a list of rules", ".json"),
    Case("yaml-python-tag", "!!python/object/apply:os.system ['echo pwned']\n", "", "not valid YAML"),
    Case("json-invalid", '{"id": "r-h", ', "", "not valid JSON", ".json"),
    # missing and unknown fields
    Case("no-action", _set(BASE, "action", ...), "action", "required"),
    Case("no-subject", _set(BASE, "action.subject", ...), "action.subject", "required"),
    Case("no-platform", _set(BASE, "platform", ...), "platform", "required"),
    Case("no-triggers", _set(BASE, "triggers", ...), "triggers", "required"),
    Case("no-id", _set(BASE, "id", ...), "id", "required"),
    Case("no-recipients", _set(BASE, "action.recipients", []), "action.recipients", "at least 1"),
    Case("unknown-field", {**BASE, "acton": {}}, "acton", "did you mean 'action'"),
    Case("no-scope-id", _set(BASE, "product_id", ...), "product_id", "required when level is product"),
    # CR/LF and header injection, field by field
    Case("subject-crlf", _set(BASE, "action.subject", INJECTION), "action.subject", "line breaks"),
    Case("subject-lf", _set(BASE, "action.subject", "x\nBcc: evil@example.net"), "action.subject"),
    Case("subject-nul", _set(BASE, "action.subject", "x\x00y"), "action.subject"),
    Case("rule-name-crlf", _set(BASE, "name", INJECTION), "name", "line breaks"),
    Case("sender-name-crlf", _set(BASE, "action.sender.name", INJECTION), "action.sender.name"),
    Case(
        "sender-email-crlf",
        _set(BASE, "action.sender.email", f"a@example.com{INJECTION}"),
        "action.sender.email",
    ),
    Case(
        "recipient-smtp-injection",
        _set(BASE, "action.recipients.0.email", "ops@example.com>\r\nRCPT TO:<evil@example.net"),
        "action.recipients.0.email",
    ),
    Case(
        "recipient-name-crlf", _set(BASE, "action.recipients.0.name", INJECTION), "action.recipients.0.name"
    ),
    Case("cc-crlf", _set(BASE, "action.cc", [{"email": f"cc@example.com{INJECTION}"}]), "action.cc.0.email"),
    Case("bcc-not-an-address", _set(BASE, "action.bcc", [{"email": "evil"}]), "action.bcc.0.email"),
    Case(
        "login-crlf",
        _set(BASE, "action.connection", _manual(login="u\r\nRSET", password=SECRET)),
        "action.connection.login",
    ),
    Case(
        "host-injection",
        _set(BASE, "action.connection", _manual(host="smtp.example.com\r\nX-Evil: 1")),
        "action.connection.host",
    ),
    # placeholders and template injection
    Case(
        "unknown-placeholder",
        _set(BASE, "action.subject", "Lead {{ lead_idd }}"),
        "action.subject",
        "lead_id",
    ),
    Case("bare-data", _set(BASE, "action.body", "{{ data }}"), "action.body", "unknown placeholder"),
    Case(
        "mro-without-twig",
        _set(BASE, "action.subject", "{{ ''.__class__.__mro__ }}"),
        "action.subject",
        "only {{ name }} substitutions",
    ),
    Case("mro", _twig(BASE, "body", "{{ ''.__class__.__mro__ }}"), "action.body", "access to attribute"),
    Case("self", _twig(BASE, "body", "{{ self }}"), "action.body", "'self' is not available"),
    Case(
        "cycler-globals",
        _twig(BASE, "body", "{{ cycler.__init__.__globals__ }}"),
        "action.body",
        "access to attribute",
    ),
    Case("getitem-dunder", _twig(BASE, "body", "{{ data['__class__'] }}"), "action.body", "'__class__'"),
    Case("import", _twig(BASE, "body", "{% import 'os' as os %}"), "action.body", "other templates"),
    Case("include", _twig(BASE, "body", "{% include '/etc/passwd' %}"), "action.body", "other templates"),
    Case("unknown-filter", _twig(BASE, "subject", "{{ lead_id|system }}"), "action.subject", "system"),
    Case("syntax-error", _twig(BASE, "body", "{% for %}"), "action.body", "syntax error"),
    Case(
        "tag-without-twig", _set(BASE, "action.body", "{% for i in range(9) %}x{% endfor %}"), "action.body"
    ),
    # oversized templates
    Case("body-over-1mb", _set(BASE, "action.body", "x" * 1_100_000), "action.body", "200000"),
    Case("subject-too-long", _set(BASE, "action.subject", "x" * 5_000), "action.subject", "998"),
    # passwords where they do not belong, or malformed
    Case(
        "password-on-esp",
        _set(BASE, "action.connection", {"type": "esp", "name": "default", "password": SECRET}),
        "action.connection",
        "only with a manual connection",
    ),
    Case(
        "password-crlf",
        _set(BASE, "action.connection", _manual(login="u", password=f"{SECRET}\r\nBcc: x")),
        "action.connection.password",
    ),
    Case(
        "password-a-list",
        _set(BASE, "action.connection", _manual(login="u", password=[SECRET])),
        "action.connection.password",
    ),
    Case(
        "password-a-mapping",
        _set(BASE, "action.connection", _manual(login="u", password={"clear": SECRET})),
        "action.connection.password",
    ),
    Case(
        "password-without-login",
        _set(BASE, "action.connection", _manual(password=SECRET)),
        "action.connection.login",
        "required when password is set",
    ),
    Case(
        "password-foreign-token",
        _set(
            BASE,
            "action.connection",
            _manual(
                login="u", password="enc:" + Fernet(Fernet.generate_key()).encrypt(SECRET.encode()).decode()
            ),
        ),
        "action.connection.password",
        "cannot be decrypted",
    ),
    Case(
        "password-in-an-unknown-field",
        _set(BASE, "action.connection", _manual(login="u", passwd=SECRET)),
        "action.connection.passwd",
        "unknown field",
    ),
    Case(
        "yaml-alias-expansion",
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
        + yaml.safe_dump({**BASE, "triggers": "PLACEHOLDER"}).replace("PLACEHOLDER", "*f"),
        "triggers",
    ),
]


def _write(tmp_path: Path, case: Case) -> Path:
    path = tmp_path / f"{case.name}{case.suffix}"
    if isinstance(case.content, str):
        path.write_text(case.content)
    elif case.suffix == ".json":
        path.write_text(json.dumps(case.content))
    else:
        path.write_text(yaml.safe_dump(case.content))
    return path


def _problems(result: CliResult, path: Path) -> list[str]:
    """The problem lines of a failed ``rules validate`` (the summary line checked and left out)."""
    assert result.code == 1, f"exit {result.code}: {result.out} {result.err}"
    assert "Traceback" not in result.err
    assert "unexpected error" not in result.err, result.err
    lines = result.err.strip().splitlines()
    assert lines[-1].startswith("eventmail: "), lines[-1]
    assert "problem(s)" in lines[-1], lines[-1]
    problems = lines[:-1]
    assert problems, result.err
    for line in problems:
        assert line.startswith(f"{path}: "), f"a problem line that does not name the file: {line!r}"
    return problems


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_rules_validate_rejects_each_hostile_rule_with_a_line_naming_the_field(
    case: Case, tmp_path: Path
) -> None:
    path = _write(tmp_path, case)
    env = {**ESP_ONLY, "EVENTMAIL_SECRET_KEY": Fernet.generate_key().decode()}
    result = run_cli(["rules", "validate", str(path)], env)
    problems = _problems(result, path)
    if case.field:
        named = [line for line in problems if f": {case.field}: " in line]
        assert named, f"no problem names {case.field!r}: {problems}"
    else:
        named = problems
    if case.says:
        assert any(case.says in line for line in named), f"{case.says!r} not in {named}"
    assert SECRET not in result.out + result.err
    assert not any(line.lstrip().lower().startswith(("bcc:", "rcpt to", "x-evil")) for line in problems)


@pytest.mark.parametrize(
    ("suffix", "text"),
    [(".json", "[" * 100_000 + "]" * 100_000), (".yaml", "[" * 100_000 + "]" * 100_000)],
    ids=["json", "yaml"],
)
def test_rules_validate_names_the_file_of_a_nesting_bomb(suffix: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / f"bomb{suffix}"
    path.write_text(text)
    result = run_cli(["rules", "validate", str(path)], ESP_ONLY)
    assert any("nested too deeply" in line for line in _problems(result, path))


# --- refused only when rendering ----------------------------------------------------------------------
@dataclass(frozen=True)
class RenderCase:
    name: str
    action: dict[str, Any]
    #: Event fields (product_id is set per case).
    event: dict[str, Any]
    #: Part of the failed outcome's error; None: the mail is sent (and checked by the test).
    error: str | None


RENDER_CASES = [
    RenderCase(
        "billion-loop",
        {"use_twig": True, "body": "{% for i in range(data.n|int) %}x{% endfor %}"},
        {"data": {"n": "1000000000"}},  # a constant range(10**9) is refused by validation
        "body: range() of more than 10,000 items",
    ),
    RenderCase(
        "nested-loops",
        {
            "use_twig": True,
            "body": "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        },
        {},
        "body: template took longer than",
    ),
    RenderCase(
        "attr-dunder", {"use_twig": True, "body": "{{ data|attr('__class__') }}"}, {}, "template refused"
    ),
    RenderCase(
        "dunder-named-by-the-event",
        {"use_twig": True, "body": "{{ data[data.key] }}"},
        {"data": {"key": "__class__"}},
        "template refused",
    ),
    RenderCase(
        "percent-format", {"use_twig": True, "subject": "{{ '%s' % lead_id }}"}, {}, "string formatting"
    ),
    RenderCase(
        "repeat",
        {"use_twig": True, "body": "{{ 'x' * (data.n|int) }}"},
        {"data": {"n": "10000000"}},
        "body: a repeated string",
    ),
    RenderCase(
        "recursion",
        {"use_twig": True, "body": "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}"},
        {},
        "body: template recursion is too deep",
    ),
    RenderCase(
        "subject-u2028", {"subject": "Hi\u2028Bcc: evil@example.net"}, {}, "subject: contains a line break"
    ),
    RenderCase(
        "subject-vt", {"subject": "Hi\x0bBcc: evil@example.net"}, {}, "subject: contains a line break"
    ),
    RenderCase(
        "injection-from-event",
        {"subject": "Lead {{ lead_id }}"},
        {"lead_id": INJECTION},
        "subject: contains a line break",
    ),
    RenderCase(
        "injection-from-data",
        {"use_twig": True, "subject": "{{ data.topic }}"},
        {"data": {"topic": "Hello\r\nBcc: evil@example.net"}},
        "subject: contains a line break",
    ),
    RenderCase(
        "encoded-word-injection",
        {"subject": "{{ data.topic }}"},
        {"data": {"topic": "=?utf-8?q?Hi=0D=0ABcc=3A_evil=40example=2Enet?="}},
        "subject: contains a line break",
    ),
    RenderCase(
        "template-in-event-data",
        {"use_twig": True, "body": "Note: {{ data.note }}"},
        {"data": {"note": "{{ 7*7 }} {% for i in range(10**9) %}{% endfor %} {{ ''.__class__ }}"}},
        None,
    ),
    RenderCase(
        "markup-in-event-data",
        {"content_type": "html", "body": "<p>{{ data.note }}</p>"},
        {"data": {"note": "<script>alert(1)</script>"}},
        None,
    ),
    RenderCase("control", {}, {}, None),
]


def test_templates_refused_while_rendering_become_failed_outcomes_and_inject_nothing(
    deployment: Deployment, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory("plain")
    deployment.with_esp({"default": esp(server)})
    rules = [
        rule_doc(
            f"r-{c.name}",
            product_id=f"p-{c.name}",
            action={"subject": f"{c.name} {{{{ lead_id }}}}", **c.action},
        )
        for c in RENDER_CASES
    ]
    rules_file = tmp_path / "render.yaml"
    rules_file.write_text(yaml.safe_dump(rules))
    validated = run_cli(["rules", "validate", str(rules_file)], deployment.env())
    assert validated.code == 0, f"these are valid rules; only rendering can refuse them: {validated.err}"
    apply_rules(deployment, tmp_path, *rules)
    events = {c.name: make_event(product_id=f"p-{c.name}", **c.event) for c in RENDER_CASES}
    service = ServiceProcess("run", deployment.env(**FAST), tmp_path).start()
    outcomes: list[Outcome] = []
    try:
        service.wait_ready()
        pid = alive(service).pid
        publish(deployment, list(events.values()))

        def all_outcomes() -> bool:
            nonlocal outcomes
            outcomes = read_outcomes(deployment)
            return len({o.rule_id for o in outcomes}) >= len(RENDER_CASES)

        wait_until(all_outcomes, 90, "an outcome of every rule", running=[service])
        assert alive(service).pid == pid
        assert service.terminate() == 0
    finally:
        service.stop()
    by_rule = {o.rule_id: o for o in outcomes}
    sent_by_rule = {m.message["X-Eventmail-Rule"]: m for m in server.messages}
    for case in RENDER_CASES:
        outcome = by_rule[f"r-{case.name}"]
        if case.error is None:
            assert outcome.status is OutcomeStatus.SENT, (case.name, outcome.error)
        else:
            assert outcome.status is OutcomeStatus.FAILED, case.name
            error = outcome.error or ""
            assert case.error in error, (case.name, error)
            assert "\n" not in error, error
            assert "\r" not in error, error
            assert f"r-{case.name}" not in sent_by_rule, f"{case.name}: a mail was sent"
    assert sorted(sent_by_rule) == sorted(f"r-{c.name}" for c in RENDER_CASES if c.error is None)
    _assert_nothing_injected(server)
    literal = sent_by_rule["r-template-in-event-data"].message.get_content()
    assert "{{ 7*7 }}" in literal, literal
    assert "49" not in literal, literal
    assert "{{ ''.__class__ }}" in literal, literal
    markup = sent_by_rule["r-markup-in-event-data"].message.get_content()
    assert "&lt;script&gt;" in markup, markup
    assert "<script>" not in markup, markup


def _assert_nothing_injected(*servers: SMTPTestServer) -> None:
    for server in servers:
        for message in server.messages:
            assert message.message["Bcc"] is None
            assert not any("evil" in r for r in message.rcpt_tos), message.rcpt_tos
            headers = message.data.split(b"\r\n\r\n", 1)[0]
            assert b"evil@example.net" not in headers, headers


# --- straight to the rules topic -----------------------------------------------------------------------
FILE_PASSWORD = "File-Pa55word-Sealed-By-Apply-4c2b"
TOPIC_PASSWORD = "Clear-Text-On-The-Topic-7f3a"
LIST_PASSWORD = "Inside-A-List-9c1e"
NEW_RULE_PASSWORD = "Brand-New-Rule-Password-42d0"
ESP_PASSWORD = "Esp-Connection-Password-5b7a"
VAULT_PASSWORD = "From-The-Vault-31c9"


def test_rule_records_that_bypass_the_cli_are_rejected_and_leak_no_secret(
    deployment: Deployment, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory(
        "auth", users={"mailer": FILE_PASSWORD, "esp": ESP_PASSWORD, "vault": VAULT_PASSWORD}
    )
    secret_key = Fernet.generate_key().decode()
    deployment.with_esp({"default": esp(server, login="esp", password=ESP_PASSWORD)})
    deployment.extra_env["EVENTMAIL_SECRET_KEY"] = secret_key
    deployment.extra_env["EVENTMAIL_SECRETS"] = json.dumps({"relay": VAULT_PASSWORD})
    manual = {
        "type": "manual",
        "host": "127.0.0.1",
        "port": server.port,
        "encryption": "none",
        "login": "mailer",
    }
    v1 = rule_doc(
        "r-sec",
        product_id="p-sec",
        action={"connection": {**manual, "password": FILE_PASSWORD}, "subject": "v1 {{ lead_id }}"},
    )
    vault = rule_doc(
        "r-vault",
        product_id="p-vault",
        action={"connection": {**manual, "login": "vault", "password": "secret:relay"}, "subject": "vault"},
    )
    esp_rule = rule_doc("r-esp", product_id="p-esp", action={"subject": "esp {{ lead_id }}"})
    apply_rules(deployment, tmp_path, v1, vault, esp_rule)
    (stored,) = [
        m for m in read_topic(deployment.bootstrap, deployment.topics["rules"]) if m.key() == b"r-sec"
    ]
    sealed_v1 = json.loads(stored.value() or b"")
    token = sealed_v1["action"]["connection"]["password"]
    assert token.startswith("enc:")

    def variant(path: str, value: Any, base: dict[str, Any] = sealed_v1) -> bytes:
        return json.dumps(_set(base, path, value)).encode()

    bad_records: list[tuple[bytes, bytes, str]] = [  # key, value, what the config_error must say
        (
            b"r-sec",
            variant("action.connection.password", TOPIC_PASSWORD),
            "clear-text password on the rules topic",
        ),
        (
            b"r-sec",
            variant("action.subject", "v3 " + INJECTION),
            "action.subject: must not contain line breaks",
        ),
        (
            b"r-sec",
            variant(
                "action", {**sealed_v1["action"], "use_twig": True, "body": "{{ ''.__class__.__mro__ }}"}
            ),
            "action.body: access to attribute",
        ),
        (b"r-sec", variant("action.connection.password", [LIST_PASSWORD]), "action.connection.password"),
        (
            b"r-sec",
            variant("action.sender.name", INJECTION),
            "action.sender.name: must not contain line breaks",
        ),
        (
            b"r-sec",
            variant("action.connection", {"type": "esp", "name": "default", "password": TOPIC_PASSWORD}),
            "only with a manual connection",
        ),
        (
            b"r-sec",
            b'{"id": "r-sec", "action": {"connection": {"password": "' + TOPIC_PASSWORD.encode(),
            "not UTF-8 JSON",
        ),
        (b"r-sec", b"\xff\xfe" + TOPIC_PASSWORD.encode(), "not UTF-8 JSON"),
        (b"r-sec", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "not UTF-8 JSON (RecursionError)"),
        (b"r-sec", variant("id", "r-other"), "differs from the record key"),
        (
            b"r-new",
            variant(
                "action.connection.password",
                NEW_RULE_PASSWORD,
                {**sealed_v1, "id": "r-new", "product_id": "p-new"},
            ),
            "clear-text password on the rules topic",
        ),
    ]
    secrets = [
        FILE_PASSWORD,
        TOPIC_PASSWORD,
        LIST_PASSWORD,
        NEW_RULE_PASSWORD,
        ESP_PASSWORD,
        VAULT_PASSWORD,
        secret_key,
        token,
    ]

    service = ServiceProcess("run", deployment.env(**FAST), tmp_path).start()
    try:
        service.wait_ready()
        pid = alive(service).pid
        publish(
            deployment, [make_event(product_id="p-sec", lead_id="first"), make_event(product_id="p-vault")]
        )
        server.wait_for(2, timeout=60)
        produce_many(
            deployment.bootstrap, deployment.topics["rules"], [(k, v, None) for k, v, _ in bad_records]
        )
        errors: list[Outcome] = []

        def rejected() -> bool:
            nonlocal errors
            errors = [o for o in read_outcomes(deployment) if o.status is OutcomeStatus.CONFIG_ERROR]
            return len(errors) >= len(bad_records)

        wait_until(rejected, 60, "a config_error outcome per bad record", running=[service])
        publish(
            deployment,
            [
                make_event(product_id="p-sec", lead_id="second"),
                make_event(product_id="p-new", lead_id="new"),
                make_event(product_id="p-esp", lead_id="esp"),
            ],
        )
        server.wait_for(4, timeout=60)
        wait_until(
            lambda: service.metric("eventmail_events_consumed_total") >= 5,
            60,
            "every event consumed",
            running=[service],
        )
        metrics = service.get("/metrics")[1]
        rule_errors = service.metric("eventmail_rule_errors_total")
        assert alive(service).pid == pid
        assert service.terminate() == 0
    finally:
        service.stop()

    # Each bad record rejected with an error naming what is wrong; the last valid version in force.
    errors.sort(key=lambda o: o.source.offset if o.source else -1)
    assert [(o.rule_id, o.source.offset if o.source else None) for o in errors] == [
        (k.decode(), offset) for offset, (k, _, _) in enumerate(bad_records, start=3)
    ]
    for outcome, (_, _, says) in zip(errors, bad_records, strict=True):
        assert says in (outcome.error or ""), (says, outcome.error)
    assert rule_errors == len(bad_records)
    subjects = sorted(m.subject or "" for m in server.messages)
    assert subjects == ["esp esp", "v1 first", "v1 second", "vault"]
    outcomes = read_outcomes(deployment)
    assert not [o for o in outcomes if o.rule_id == "r-new" and o.status is not OutcomeStatus.CONFIG_ERROR]
    _assert_nothing_injected(server)

    # No secret anywhere the service or the CLI writes.
    listing = [run_cli(list(args), deployment.env()) for args in _LISTINGS]
    assert all(r.code == 0 for r in listing), [r.err for r in listing]
    get_sec = listing[2]
    assert "v1 {{ lead_id }}" in get_sec.out, get_sec.out
    assert "enc:…" in get_sec.out, get_sec.out
    assert "the previous version is shown" in get_sec.err, get_sec.err
    assert "r-new" in get_sec.err, get_sec.err
    places = {
        "service log": service.log_path.read_text(errors="replace"),
        "outcomes": _raw(deployment, "outcomes"),
        "dlq": _raw(deployment, "dlq"),
        "/metrics": metrics,
        "mail": "\n".join(m.data.decode(errors="replace") for m in server.messages),
        **{f"eventmail {' '.join(a)}": r.out + r.err for a, r in zip(_LISTINGS, listing, strict=True)},
    }
    leaks = {(where, s[:12]) for where, text in places.items() for s in secrets if s in text}
    assert not leaks, f"secrets shown: {sorted(leaks)}"


_LISTINGS = (
    ("rules", "list"),
    ("rules", "list", "--json"),
    ("rules", "get", "r-sec"),
    ("rules", "get", "r-sec", "--json"),
    ("rules", "get", "r-vault"),
)


def _raw(deployment: Deployment, topic: str) -> str:
    """Every key, value and header of a topic, as text."""
    parts: list[str] = []
    for record in read_topic(deployment.bootstrap, deployment.topics[topic]):
        for blob in (record.key(), record.value(), *(v for _, v in record.headers() or [])):
            if isinstance(blob, bytes):
                parts.append(blob.decode(errors="replace"))
    return "\n".join(parts)
