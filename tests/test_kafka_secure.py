"""eventmail on a secured broker: SASL_SSL with SCRAM-SHA-512, a private CA, StandardAuthorizer with
``allow.everyone.if.no.acl.found=false``. Each component runs as its own user with exactly the ACLs
``eventmail acls`` grants (the ones docs/operations.md lists), and nothing more."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from consumer.kafka.acls import Acl, Component, acl_table, acls_for, apply_acls
from consumer.outcomes.codec import decode_outcome
from consumer.outcomes.model import Outcome, OutcomeStatus
from consumer.settings import Settings, load_settings
from tests.clirun import CliResult, run_cli
from tests.factories import make_event
from tests.pipeline_support import esp, rule_doc
from tests.support.kafka import LocalCluster, consume_all, create_topic, produce, unique_name
from tests.support.kafka_fixtures import secured_kafka  # noqa: F401 (a fixture)
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory


class SecureDeployment:
    """A deployment's topics on the secured broker, and the environment of each component's user."""

    def __init__(self, cluster: LocalCluster, prefix: str) -> None:
        self.cluster = cluster
        self.admin_config = cluster.client_config("admin")
        topics = {
            "lms": 2,
            "call_logic": 1,
            "rules": 1,
            "outcomes": 2,
            "alerts": 1,
            "dlq": 1,
            "retry": 2,
        }
        names = {}
        for key, partitions in topics.items():
            config = {"cleanup.policy": "compact"} if key == "rules" else {}
            names[key] = create_topic(
                self.admin_config, unique_name(f"{prefix}.{key}"), partitions, 1, config
            )
        self.deployment = Deployment(cluster.bootstrap, names, group_id=unique_name("g"))
        self.topics = names

    def env(self, user: str, **extra: str) -> dict[str, str]:
        """The settings of a component running as ``user``: the CA file and the password file, as a
        platform team mounts them, and no password in any variable."""
        kafka_extra = {
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": "SCRAM-SHA-512",
            "sasl.username": user,
            "ssl.ca.location": str(self.cluster.ca_file),
        }
        return self.deployment.env(
            EVENTMAIL_KAFKA__EXTRA=json.dumps(kafka_extra),
            EVENTMAIL_KAFKA__SASL_PASSWORD_FILE=str(self.cluster.password_file(user)),
            **extra,
        )

    def grant(self, component: str, user: str) -> None:
        result = run_cli(["acls", component, "--principal", f"User:{user}", "--apply"], self.env("admin"))
        assert result.code == 0, result.err

    def publish(self, events: list[Any]) -> None:
        from consumer.events.codec import encode_json

        records: list[tuple[bytes | str | None, bytes | str | None]] = [
            (e.event_id.encode(), encode_json(e)) for e in events
        ]
        produce(self.cluster.bootstrap, self.topics["lms"], records, client_config=self.admin_config)

    def outcomes(self, expected: int | None = None) -> list[Outcome]:
        got = consume_all(
            self.cluster.bootstrap,
            self.topics["outcomes"],
            expected=expected,
            timeout=60,
            client_config=self.admin_config,
        )
        return [decode_outcome(m.value() or b"") for m in got]

    def apply_rules(self, tmp_path: Path, *docs: dict[str, Any], user: str = "eventmail-admin") -> CliResult:
        import yaml

        path = tmp_path / f"rules-{unique_name('r')}.yaml"
        path.write_text(yaml.safe_dump(list(docs)))
        return run_cli(["rules", "apply", str(path)], self.env(user))


@pytest.fixture
def secure(secured_kafka: LocalCluster, request: pytest.FixtureRequest) -> Iterator[SecureDeployment]:  # noqa: F811
    setup = SecureDeployment(secured_kafka, request.node.name[:40])
    yield setup
    AdminClient(setup.admin_config).delete_topics(list(setup.topics.values()), operation_timeout=30)


def test_a_user_without_acls_is_refused_and_plaintext_is_not_spoken(
    secured_kafka: LocalCluster,  # noqa: F811
) -> None:
    topic = create_topic(secured_kafka.client_config("admin"), unique_name("noacl"))
    with pytest.raises(AssertionError, match="TOPIC_AUTHORIZATION_FAILED"):
        produce(
            secured_kafka.bootstrap,
            topic,
            [(None, b"x")],
            client_config=_quick(secured_kafka, "eventmail-nobody"),
        )
    errors: list[str] = []
    wrong = {
        **secured_kafka.client_config("eventmail-nobody"),
        "sasl.password": "not-the-password",
        "log_level": 0,
        "error_cb": lambda err: errors.append(err.str()),
    }
    producer = Producer(wrong)
    deadline = time.monotonic() + 30
    while not errors and time.monotonic() < deadline:
        producer.poll(0.2)
    assert any("invalid credentials" in e for e in errors), errors


def _quick(cluster: LocalCluster, user: str) -> dict[str, Any]:
    return {**cluster.client_config(user), "message.timeout.ms": 10000}


def test_run_works_end_to_end_with_exactly_its_acls(
    secure: SecureDeployment, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    secure.grant("admin", "eventmail-admin")
    secure.grant("run", "eventmail-run")
    secure.grant("reader", "eventmail-reader")
    server = smtp_server_factory("plain")
    secure.deployment.extra_env["EVENTMAIL_ESP_CONNECTIONS"] = json.dumps({"default": esp(server)})
    applied = secure.apply_rules(tmp_path, rule_doc("r-secure"))
    assert applied.code == 0, applied.err
    env = secure.env("eventmail-run")
    service = ServiceProcess("run", env, tmp_path, name="secure-run").start()
    try:
        service.wait_ready(timeout=90)
        secure.publish([make_event(lead_id=f"S{i}") for i in range(3)])
        server.wait_for(3, timeout=60)
        got = secure.outcomes(expected=3)
        _, metrics = service.get("/metrics")
        assert service.terminate() == 0
    finally:
        service.stop()
    assert sorted(o.status for o in got) == [OutcomeStatus.SENT] * 3
    # `logs` as the reader user: READ on the outcomes topic and nothing else.
    logs = run_cli(["logs", "--json", "--since", "1h"], secure.env("eventmail-reader"))
    assert logs.code == 0, logs.err
    assert logs.out.count('"r-secure"') == 3
    password = secure.cluster.password_file("eventmail-run").read_text().strip()
    log_text = service.log_path.read_text()
    for line in log_text.splitlines():  # librdkafka's lines too: structured, none raw
        assert json.loads(line)["level"] in {"debug", "info", "warning", "error", "critical"}, line
    for where, text in {
        "log": log_text,
        "metrics": metrics,
        "outcomes": repr(got),
        "cli": logs.out + logs.err,
    }.items():
        assert password not in text, f"the SASL password is in the {where}"


def test_a_missing_password_file_is_a_settings_error_naming_it() -> None:
    result = run_cli(["acls", "run"], {"EVENTMAIL_KAFKA__SASL_PASSWORD_FILE": "/no/such/password"})
    assert result.code != 0
    assert result.err.strip() == (
        "eventmail: EVENTMAIL_KAFKA__SASL_PASSWORD_FILE: Value error, no such file: /no/such/password"
    )


def test_rules_apply_without_write_names_the_missing_permission(
    secure: SecureDeployment, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    secure.grant("run", "eventmail-run")
    server = smtp_server_factory("plain")
    secure.deployment.extra_env["EVENTMAIL_ESP_CONNECTIONS"] = json.dumps({"default": esp(server)})
    rules = secure.topics["rules"]
    started = time.monotonic()
    as_run = secure.apply_rules(tmp_path, rule_doc("r-denied"), user="eventmail-run")
    assert as_run.code != 0
    assert as_run.err.strip().splitlines() == [
        f"eventmail: User:eventmail-run lacks WRITE on topic {rules} "
        "(rules apply/delete need the admin ACLs: eventmail acls admin)"
    ]
    # A principal that may not even see the topic is told so, not that the topic does not exist.
    as_nobody = secure.apply_rules(tmp_path, rule_doc("r-denied"), user="eventmail-nobody")
    assert as_nobody.code != 0
    assert as_nobody.err.strip().splitlines() == [
        f"eventmail: User:eventmail-nobody lacks WRITE on topic {rules} "
        "(rules apply/delete need the admin ACLs: eventmail acls admin)"
    ]
    listed = run_cli(["rules", "list"], secure.env("eventmail-nobody"))
    assert listed.code != 0
    assert (
        f"not allowed to use the rules topic {rules}: the principal needs READ on topic {rules}" in listed.err
    )
    assert "does not exist" not in listed.err
    assert time.monotonic() - started < 30  # answers, not timeouts


def test_run_without_write_on_outcomes_is_not_ready_and_sends_nothing_until_granted(
    secure: SecureDeployment, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    """It used to report ready, send the mail, fail to write the outcome, exit and send it again."""
    secure.grant("admin", "eventmail-admin")
    server = smtp_server_factory("plain")
    secure.deployment.extra_env["EVENTMAIL_ESP_CONNECTIONS"] = json.dumps({"default": esp(server)})
    assert secure.apply_rules(tmp_path, rule_doc("r-gate")).code == 0
    settings = load_settings(
        topics=secure.topics, group_id=secure.deployment.group_id, kafka={"bootstrap_servers": "x"}
    )
    needed = acls_for(Component.RUN, settings)
    outcome_write = Acl("topic", secure.topics["outcomes"], "Write")
    apply_acls(secure.admin_config, [a for a in needed if a != outcome_write], "User:eventmail-run")
    secure.publish([make_event(lead_id="G1")])
    service = ServiceProcess("run", secure.env("eventmail-run"), tmp_path, name="gated-run").start()
    try:
        reason = _wait_not_ready_with(service, "kafka_permissions_missing")
        assert f"User:eventmail-run lacks WRITE on topic {secure.topics['outcomes']}" in reason
        assert service.metric("eventmail_events_consumed_total") == 0
        assert server.messages == []
        apply_acls(secure.admin_config, [outcome_write], "User:eventmail-run")
        service.wait_ready(timeout=60)
        server.wait_for(1, timeout=60)
        got = secure.outcomes(expected=1)
        assert service.terminate() == 0
    finally:
        service.stop()
    assert [o.status for o in got] == [OutcomeStatus.SENT]
    assert len(server.messages) == 1
    logged = [line for line in service.log_path.read_text().splitlines() if "permissions missing" in line]
    assert len(logged) == 1  # said once, not at every check


def _wait_not_ready_with(service: ServiceProcess, key: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        service.check_alive()
        try:
            code, body = service.get("/readyz")
        except OSError:
            code = 0
        if code == 503 and key in body:
            return body
        time.sleep(0.2)
    raise TimeoutError(f"readiness never named {key}: {body}")


def test_aggregate_gets_ready_with_exactly_its_acls(secure: SecureDeployment, tmp_path: Path) -> None:
    """Its rules, outcomes and alerts read-backs assign() partitions: no group ACL but its own."""
    secure.grant("aggregate", "eventmail-aggregate")
    produce(
        secure.cluster.bootstrap,
        secure.topics["alerts"],
        [(b"r-x", b"{}")],
        client_config=secure.admin_config,
    )
    service = ServiceProcess("aggregate", secure.env("eventmail-aggregate"), tmp_path, name="secure-agg")
    try:
        service.start().wait_ready(timeout=90)
        assert service.terminate() == 0
    finally:
        service.stop()
    assert "GROUP_AUTHORIZATION_FAILED" not in service.log_path.read_text()


def test_the_acls_in_the_docs_are_the_ones_granted() -> None:
    """docs/operations.md lists the ACLs `eventmail acls` grants (and these tests grant through it)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    block = text.split("<!-- acls:begin -->\n", 1)[1].split("\n<!-- acls:end -->", 1)[0]
    assert block.splitlines() == acl_table(Settings.model_construct())
    printed = run_cli(["acls", "run"], {"EVENTMAIL_GROUP_ID": "mail-prod"})
    assert printed.code == 0, printed.err
    assert (
        "kafka-acls.sh --bootstrap-server localhost:9092 --command-config admin.properties --add "
        "--allow-principal User:eventmail-run --operation Write --transactional-id mail-prod.retry. "
        "--resource-pattern-type prefixed"
    ) in printed.out.splitlines()
    assert len(printed.out.splitlines()) == 1 + len(
        acls_for(Component.RUN, load_settings(group_id="mail-prod"))
    )


def test_run_without_its_transactional_id_acl_is_not_ready_and_says_so(
    secure: SecureDeployment, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory("plain")
    secure.deployment.extra_env["EVENTMAIL_ESP_CONNECTIONS"] = json.dumps({"default": esp(server)})
    group = secure.deployment.group_id
    settings = load_settings(topics=secure.topics, group_id=group, kafka={"bootstrap_servers": "x"})
    transactional = Acl("transactional-id", f"{group}.retry.", "Write", prefixed=True)
    needed = acls_for(Component.RUN, settings)
    assert transactional in needed
    apply_acls(secure.admin_config, [a for a in needed if a != transactional], "User:eventmail-run")
    service = ServiceProcess("run", secure.env("eventmail-run"), tmp_path, name="tx-gated-run").start()
    try:
        reason = _wait_not_ready_with(service, "kafka_permissions_missing")
        assert f"User:eventmail-run lacks WRITE on transactional-id {group}.retry. (prefixed)" in reason
        apply_acls(secure.admin_config, [transactional], "User:eventmail-run")
        service.wait_ready(timeout=60)
        assert service.terminate() == 0
    finally:
        service.stop()


def test_the_console_works_with_exactly_its_acls(secure: SecureDeployment, tmp_path: Path) -> None:
    """A user holding only the console's ACLs (eventmail acls console) lists rules, saves one with its
    author, and reads the SMTP log; on the secured broker, behind a trusted proxy header."""
    import http.cookiejar
    import re
    import urllib.parse
    import urllib.request

    secure.deployment.with_esp({"default": {"host": "127.0.0.1", "port": 25, "encryption": "none"}})
    secure.grant("admin", "eventmail-admin")
    assert secure.apply_rules(tmp_path, rule_doc("r-seen")).code == 0
    user = "eventmail-nobody"  # no ACLs until the console's are granted
    secure.grant("console", user)
    env = secure.env(user, EVENTMAIL_CONSOLE__AUTH="proxy", EVENTMAIL_CONSOLE__EDITORS='["ada"]')
    console = ServiceProcess("console", env, tmp_path, name="secure-console")
    console.env["EVENTMAIL_CONSOLE__PORT"] = str(console.port)
    console.env["EVENTMAIL_CONSOLE__HOST"] = "127.0.0.1"
    console.start()
    try:
        console.wait_ready(timeout=90)
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        opener.addheaders = [("X-Forwarded-User", "ada")]
        with opener.open(console.url("/rules"), timeout=30) as page:
            assert "r-seen" in page.read().decode()
        with opener.open(console.url("/rules/new"), timeout=30) as page:
            found = re.search(r'name="csrf" value="([^"]+)"', page.read().decode())
        assert found is not None
        form = {
            "csrf": found.group(1),
            "id": "r-console",
            "platform": "lms",
            "trigger": "lead_sold",
            "level": "product",
            "product_id": "p-1",
            "enabled": "on",
            "connection_type": "esp",
            "esp_name": "default",
            "sender": "sales@example.com",
            "recipients": "ops@example.com",
            "subject": "Lead {{ lead_id }}",
            "body": "Sold",
            "content_type": "text",
        }
        data = urllib.parse.urlencode(form).encode()
        with opener.open(console.url("/rules/save"), data=data, timeout=30) as saved:
            assert saved.url.endswith("/rules/r-console"), saved.url
            assert "by <strong>ada</strong>" in saved.read().decode()
        with opener.open(console.url("/log?since=1h&live=0"), timeout=30) as page:
            assert page.status == 200
        history = run_cli(["rules", "history", "r-console", "--json"], secure.env("eventmail-admin"))
        assert [json.loads(line)["author"] for line in history.out.splitlines()] == ["ada"]
    finally:
        console.stop()
