"""``eventmail smtp test``: send a test mail through an ESP connection or manual SMTP parameters.

The product's "test email" button for the command line: it prints each step (connected, TLS, AUTH,
the server's reply) and exits 1 with the server's reply when something fails. The password of manual
parameters comes from ``EVENTMAIL_SMTP_PASSWORD`` or a hidden prompt; it is never echoed, printed or
put in an error. It sends exactly one message and never retries in place.

The connection is built by the code ``eventmail run`` uses (:mod:`consumer.mail.connections`): the
connection's ``ca_file``, ``EVENTMAIL_SMTP__CA_FILE``, the EHLO name and the allowed special-use
domains apply here as they do to the service's mail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os

import click
from pydantic import SecretStr, ValidationError

from consumer.cli.common import CliState, fail, pass_state
from consumer.errors import MailError, SecretError
from consumer.mail.connections import connection_params
from consumer.mail.errors import SendError
from consumer.mail.params import ConnectionParams
from consumer.mail.testmail import default_sender, send_test_mail
from consumer.rules.model import EspConnectionRef, ManualConnection
from consumer.settings import Encryption, Settings

PASSWORD_ENV = "EVENTMAIL_SMTP_PASSWORD"  # noqa: S105 (the variable's name, not a password)
_DEFAULT_PORTS = {Encryption.NONE: 25, Encryption.TLS: 587, Encryption.SSL: 465}


def _params(
    settings: Settings,
    connection: str | None,
    host: str | None,
    port: int | None,
    encryption: str | None,
    login: str | None,
) -> ConnectionParams:
    """The connection as ``eventmail run`` builds it (:func:`connection_params`): same CA files,
    same password handling, same metric label."""
    if connection and host:
        raise click.UsageError("give either --connection or --host, not both")
    ref: EspConnectionRef | ManualConnection
    password: SecretStr | None = None
    if connection:
        if port is not None or encryption is not None or login is not None:
            raise click.UsageError("--port, --encryption and --login go with --host, not --connection")
        if connection not in settings.esp_connections:
            known = ", ".join(sorted(settings.esp_connections)) or "none are configured"
            fail(f"--connection: no ESP connection named {connection!r} (EVENTMAIL_ESP_CONNECTIONS: {known})")
        ref = EspConnectionRef(type="esp", name=connection)
    else:
        if not host:
            raise click.UsageError("give --connection NAME, or --host (with --port and --encryption)")
        mode = Encryption(encryption or Encryption.TLS.value)
        if login:
            typed = os.environ.get(PASSWORD_ENV)
            if typed is None:
                typed = click.prompt(f"SMTP password for {login}", hide_input=True, err=True)
            password = SecretStr(typed)
        try:
            ref = ManualConnection(
                type="manual", host=host, port=port or _DEFAULT_PORTS[mode], encryption=mode, login=login
            )
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem.get("loc", ())) or "connection"
            fail(f"--{where}: {problem.get('msg')}")
    try:
        return connection_params(settings, ref, password=password)
    except SecretError as exc:
        fail(f"smtp test: {exc}")


def _sender(explicit: str | None, params: ConnectionParams, settings: Settings) -> str:
    """``--from``, else the login when it is an address, else the alerts' sender when it is a valid
    address; else a clear message that ``--from`` is needed."""
    sender = default_sender(explicit, params, settings)
    if sender is None:
        fail(
            "smtp test: pass --from ADDR (the login is not an address and EVENTMAIL_ALERTS__SENDER "
            f"{settings.alerts.sender!r} is not a valid sender)"
        )
    return sender


@click.group("smtp")
def smtp_group() -> None:
    """Check SMTP connections."""


@smtp_group.command("test")
@click.option(
    "--connection", metavar="NAME", help="An ESP connection of the settings (EVENTMAIL_ESP_CONNECTIONS)."
)
@click.option("--host", metavar="H", help="SMTP server for manual parameters.")
@click.option(
    "--port", metavar="P", type=click.IntRange(1, 65535), help="Default: 25, 587 or 465 by encryption."
)
@click.option(
    "--encryption",
    type=click.Choice([e.value for e in Encryption]),
    help="none, tls (STARTTLS) or ssl (implicit TLS); default tls.",
)
@click.option(
    "--login", metavar="L", help=f"AUTH user; the password is read from {PASSWORD_ENV} or a prompt."
)
@click.option("--to", "to", metavar="ADDR", required=True, multiple=True, help="Recipient (repeatable).")
@click.option(
    "--from",
    "from_",
    metavar="ADDR",
    help="Sender; default the login when it is an address, else EVENTMAIL_ALERTS__SENDER.",
)
@click.option("--subject", default="eventmail test message", show_default=True)
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Trust this CA bundle (PEM) instead of the connection's (its ca_file, EVENTMAIL_SMTP__CA_FILE).",
)
@click.option("--insecure", is_flag=True, help="Do not verify the server's TLS certificate.")
@pass_state
def smtp_test(
    state: CliState,
    connection: str | None,
    host: str | None,
    port: int | None,
    encryption: str | None,
    login: str | None,
    to: tuple[str, ...],
    from_: str | None,
    subject: str,
    ca_file: str | None,
    insecure: bool,
) -> None:
    """Send a test mail and print each step; exit 1 with the server's reply on failure.

    \b
    Examples:
      eventmail smtp test --connection default --to ops@example.com
      EVENTMAIL_SMTP_PASSWORD=... eventmail smtp test --host smtp.example.com --port 587 \\
          --encryption tls --login mailer@example.com --to ops@example.com
    """
    settings = state.settings()
    params = _params(settings, connection, host, port, encryption, login)
    if ca_file:
        params = dataclasses.replace(params, ca_file=ca_file, ca_source="--ca-file")
    if insecure:
        params = dataclasses.replace(params, verify_tls=False)
    sender = _sender(from_, params, settings)
    tls = "" if params.encryption is Encryption.NONE else f", verify {'off' if insecure else 'on'}"
    click.echo(
        f"connection {params.name}: {params.address}, encryption {params.encryption.value}{tls}, "
        f"login {params.login or '(none)'}"
    )
    try:
        result, message_id = asyncio.run(send_test_mail(settings, params, sender, to, subject, click.echo))
    except SendError as exc:
        fail(f"smtp test failed: {exc}")
    except MailError as exc:
        fail(f"smtp test: {exc}")
    for address, refusal in result.refused.items():
        click.echo(f"refused: {address}: {refusal}")
    click.echo(
        f"sent {message_id} to {', '.join(result.accepted)} in {result.duration_seconds * 1000:.0f} ms"
    )
    if result.refused:
        fail(f"smtp test: {len(result.refused)} recipient(s) refused")


def register(group: click.Group) -> None:
    group.add_command(smtp_group)
