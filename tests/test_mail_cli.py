"""``eventmail smtp test`` against real SMTP servers: success, the server's reply on failure, manual
parameters with STARTTLS and AUTH, and the password never shown."""

from __future__ import annotations

import json

from click.testing import CliRunner

from consumer.cli.main import _mount, cli
from consumer.mail.message import allow_special_use_domains
from tests.clirun import run_cli
from tests.support.smtp import CertificateAuthority, SMTPServerFactory, SMTPTestServer


def esp_env(server: SMTPTestServer, **extra: object) -> dict[str, str]:
    connection = {"host": server.host, "port": server.port, "encryption": "none", **extra}
    return {"EVENTMAIL_ESP_CONNECTIONS": json.dumps({"default": connection})}


def test_send_through_a_named_connection(smtp_server: SMTPTestServer) -> None:
    result = run_cli(
        ["smtp", "test", "--connection", "default", "--to", "ops@example.com", "--from", "sales@example.com"],
        esp_env(smtp_server),
    )
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == f"connection default: {smtp_server.address}, encryption none, login (none)"
    assert lines[1].startswith(f"connected to {smtp_server.address}: 220 ")
    assert lines[2] == "pipelining: MAIL, RCPT and DATA in one write (the server offers PIPELINING)"
    assert lines[3] == "accepted: 250 2.0.0 OK: queued"
    assert lines[4].startswith("sent <")
    assert " to ops@example.com in " in lines[4]
    [received] = smtp_server.wait_for(1)
    assert received.subject == "eventmail test message"
    assert received.mail_from == "sales@example.com"
    assert received.rcpt_tos == ["ops@example.com"]
    assert received.message_id is not None
    assert received.message_id in lines[4]


def test_failure_exits_1_with_the_servers_reply(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("reject")
    result = run_cli(
        ["smtp", "test", "--connection", "default", "--to", "ops@example.com", "--from", "s@example.com"],
        esp_env(server),
    )
    assert result.code == 1
    assert result.err.strip().splitlines() == [
        "eventmail: smtp test failed: default: sending: server replied 550 5.7.1 Message rejected"
    ]
    assert "connected to" in result.out
    assert server.attempts == 1
    assert not server.messages


def test_refused_recipient_exits_1(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("reject_rcpt", reject_rcpt=["gone@example.com"])
    args = ["smtp", "test", "--connection", "default", "--from", "s@example.com"]
    result = run_cli([*args, "--to", "ops@example.com", "--to", "gone@example.com"], esp_env(server))
    assert result.code == 1
    assert "refused: gone@example.com: 550 5.1.1 <gone@example.com>: Recipient address rejected" in result.out
    assert "1 recipient(s) refused" in result.err
    assert [m.rcpt_tos for m in server.wait_for(1)] == [["ops@example.com"]]


def test_manual_parameters_with_starttls_auth_and_a_private_ca(
    smtp_server_factory: SMTPServerFactory, smtp_ca: CertificateAuthority
) -> None:
    server = smtp_server_factory(
        "starttls", users={"mailer@example.com": "pw-secret-9"}, require_starttls=True
    )
    args = ["smtp", "test", "--host", server.host, "--port", str(server.port), "--encryption", "tls"]
    args += ["--login", "mailer@example.com", "--to", "ops@example.com", "--ca-file", str(smtp_ca.ca_pem)]
    result = run_cli(args, {"EVENTMAIL_SMTP_PASSWORD": "pw-secret-9"})
    assert result.code == 0, result.err
    assert "STARTTLS: TLSv1" in result.out
    assert "authenticated as mailer@example.com: 235" in result.out
    assert "pw-secret-9" not in result.out + result.err
    [received] = server.wait_for(1)
    assert received.tls == "starttls"
    assert received.auth_login == "mailer@example.com"
    assert received.mail_from == "mailer@example.com"  # the login is an address: the default sender


def test_wrong_password_from_the_hidden_prompt(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("auth", users={"mailer": "right"})
    _mount()
    runner = CliRunner()
    args = ["smtp", "test", "--host", server.host, "--port", str(server.port), "--encryption", "none"]
    args += ["--login", "mailer", "--to", "ops@example.com", "--from", "s@example.com"]
    result = runner.invoke(cli, args, input="typed-wrong-pw\n", env={"EVENTMAIL_SMTP_PASSWORD": None})
    assert result.exit_code == 1
    assert "SMTP password for mailer" in result.output
    assert "authentication failed: 535" in result.stderr
    assert "typed-wrong-pw" not in result.output
    # aiosmtplib tries each offered mechanism (PLAIN, LOGIN) before giving up
    assert {(a.login, a.success) for a in server.auth_attempts} == {("mailer", False)}


def test_untrusted_certificate_and_insecure(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("ssl")
    args = ["smtp", "test", "--host", server.host, "--port", str(server.port), "--encryption", "ssl"]
    args += ["--to", "ops@example.com", "--from", "s@example.com"]
    refused = run_cli(args)
    assert refused.code == 1
    assert "TLS certificate" in refused.err
    assert "not trusted" in refused.err
    insecure = run_cli([*args, "--insecure"])
    assert insecure.code == 0, insecure.err
    assert "verify off" in insecure.out
    assert "TLS (implicit)" in insecure.out
    assert len(server.wait_for(1)) == 1


def test_usage_errors() -> None:
    unknown = run_cli(["smtp", "test", "--connection", "nope", "--to", "a@example.com"])
    assert unknown.code == 1
    assert "no ESP connection named 'nope'" in unknown.err
    both = run_cli(["smtp", "test", "--connection", "x", "--host", "h", "--to", "a@example.com"])
    assert both.code == 2
    assert "not both" in both.err
    neither = run_cli(["smtp", "test", "--to", "a@example.com"])
    assert neither.code == 2
    assert "--connection NAME" in neither.err
    manual = ["smtp", "test", "--host", "127.0.0.1", "--encryption", "none"]
    bad_to = run_cli([*manual, "--to", "not-an-address", "--from", "s@example.com"])
    assert bad_to.code == 1
    assert "to[0].email: 'not-an-address' is not a valid address" in bad_to.err
    no_from = run_cli([*manual, "--to", "a@example.com"], {"EVENTMAIL_ALERTS__SENDER": "eventmail@localhost"})
    assert no_from.code == 1
    assert "pass --from ADDR" in no_from.err
    assert "EVENTMAIL_ALERTS__SENDER 'eventmail@localhost' is not a valid sender" in no_from.err


def test_a_named_connection_trusts_the_ca_file_settings_as_the_service_does(
    smtp_server_factory: SMTPServerFactory, smtp_ca: CertificateAuthority
) -> None:
    server = smtp_server_factory("ssl")
    args = ["smtp", "test", "--connection", "default", "--to", "ops@example.com", "--from", "s@example.com"]
    ssl_esp = {"host": "localhost", "port": server.port, "encryption": "ssl"}
    untrusted = run_cli(args, {"EVENTMAIL_ESP_CONNECTIONS": json.dumps({"default": ssl_esp})})
    assert untrusted.code == 1
    assert "set EVENTMAIL_SMTP__CA_FILE (or EVENTMAIL_ESP_CONNECTIONS' default.ca_file)" in untrusted.err
    global_ca = run_cli(
        args,
        {
            "EVENTMAIL_ESP_CONNECTIONS": json.dumps({"default": ssl_esp}),
            "EVENTMAIL_SMTP__CA_FILE": str(smtp_ca.ca_pem),
        },
    )
    assert global_ca.code == 0, global_ca.err
    own_ca = {**ssl_esp, "ca_file": str(smtp_ca.ca_pem)}
    own = run_cli(args, {"EVENTMAIL_ESP_CONNECTIONS": json.dumps({"default": own_ca})})
    assert own.code == 0, own.err
    manual = ["smtp", "test", "--host", "localhost", "--port", str(server.port), "--encryption", "ssl"]
    manual += ["--to", "ops@example.com", "--from", "s@example.com"]
    by_host = run_cli(manual, {"EVENTMAIL_SMTP__CA_FILE": str(smtp_ca.ca_pem)})
    assert by_host.code == 0, by_host.err
    assert by_host.out.startswith("connection manual-")  # the label the service's metrics use
    assert len(server.wait_for(3)) == 3


def test_default_sender_is_a_valid_address_or_a_clear_request_for_from(
    smtp_server_factory: SMTPServerFactory,
) -> None:
    server = smtp_server_factory("auth", users={"mailer@internal": "pw-7"})
    args = ["smtp", "test", "--host", server.host, "--port", str(server.port), "--encryption", "none"]
    args += ["--login", "mailer@internal", "--to", "ops@example.com"]
    password = {"EVENTMAIL_SMTP_PASSWORD": "pw-7"}
    # The login looks like an address but is not a valid one: the alerts' sender is used.
    fallback = run_cli(args, {**password, "EVENTMAIL_ALERTS__SENDER": "alerts@example.com"})
    assert fallback.code == 0, fallback.err
    assert [m.mail_from for m in server.wait_for(1)] == ["alerts@example.com"]
    # Neither is valid (the default alerts sender is at localhost): one line saying what to pass.
    neither = run_cli(args, password)
    assert neither.code == 1
    assert neither.err.strip().splitlines() == [
        "eventmail: smtp test: pass --from ADDR (the login is not an address and "
        "EVENTMAIL_ALERTS__SENDER 'eventmail@localhost' is not a valid sender)"
    ]
    assert server.connections == 1  # refused before connecting


def test_allowed_special_use_domains_setting(smtp_server: SMTPTestServer) -> None:
    args = ["smtp", "test", "--host", smtp_server.host, "--port", str(smtp_server.port)]
    args += ["--encryption", "none", "--to", "ops@mail.test", "--from", "alerts@corp.test"]
    refused = run_cli(args)
    assert refused.code == 1
    assert "EVENTMAIL_SMTP__ALLOWED_SPECIAL_USE_DOMAINS" in refused.err
    try:
        allowed = run_cli(args, {"EVENTMAIL_SMTP__ALLOWED_SPECIAL_USE_DOMAINS": '["test"]'})
    finally:
        allow_special_use_domains(())
    assert allowed.code == 0, allowed.err
    [received] = smtp_server.wait_for(1)
    assert (received.mail_from, received.rcpt_tos) == ("alerts@corp.test", ["ops@mail.test"])
    bad = run_cli(args, {"EVENTMAIL_SMTP__ALLOWED_SPECIAL_USE_DOMAINS": '["corp"]'})
    assert bad.code == 1
    assert "EVENTMAIL_SMTP__ALLOWED_SPECIAL_USE_DOMAINS" in bad.err
    assert "'corp' is not a special-use domain" in bad.err


def test_starttls_against_an_implicit_tls_port_hints_ssl(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("ssl")
    args = ["smtp", "test", "--host", server.host, "--port", str(server.port), "--encryption", "tls"]
    args += ["--to", "ops@example.com", "--from", "s@example.com"]
    result = run_cli(args, {"EVENTMAIL_SMTP__CONNECT_TIMEOUT_SECONDS": "1"})
    assert result.code == 1
    assert "use encryption ssl" in result.err
