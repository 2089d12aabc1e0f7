"""``eventmail console``: the admin screens in a browser (rules, SMTP log, alerts, usage)."""

from __future__ import annotations

import click

from consumer.cli.common import CliState, fail
from consumer.settings import ConsoleAuth


@click.group("console", invoke_without_command=True)
@click.option("--local", is_flag=True, help="No login, bound to 127.0.0.1 only (the demo, a laptop).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default EVENTMAIL_CONSOLE__PORT, 9410).")
@click.pass_context
def console_group(ctx: click.Context, local: bool, port: int | None) -> None:
    """Serve the console: rules (add, edit with live preview, enable, delete), the SMTP log, alerts,
    usage and connections, on the rules and outcome topics the CLI uses. /healthz answers ok.

    Authentication is required: EVENTMAIL_CONSOLE__AUTH=password (users in EVENTMAIL_CONSOLE__USERS,
    hashes from `eventmail console hash-password`) or proxy (the user from
    EVENTMAIL_CONSOLE__PROXY_HEADER, believed only from EVENTMAIL_CONSOLE__TRUSTED_PROXIES;
    EVENTMAIL_CONSOLE__EDITORS may change rules). --local needs none and listens on 127.0.0.1 only.
    """
    if ctx.invoked_subcommand is not None:
        return
    state = ctx.find_object(CliState) or CliState()
    settings = state.settings()
    console = settings.console
    if not local and console.auth is None:
        fail("EVENTMAIL_CONSOLE__AUTH is not set: set it to password or proxy, or run with --local")
    if not local and console.auth is ConsoleAuth.PASSWORD and not console.users:
        fail("EVENTMAIL_CONSOLE__USERS is empty: add users (eventmail console hash-password makes a hash)")
    import uvicorn

    from consumer.console.app import build_app
    from consumer.console.data import ConsoleData
    from consumer.observability.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    data = ConsoleData(settings)
    data.start()
    host = "127.0.0.1" if local else console.host
    chosen = console.port if port is None else port
    click.echo(
        f"eventmail console on http://{host}:{chosen}/ ({'local, no login' if local else console.auth})",
        err=True,
    )
    try:
        uvicorn.run(
            build_app(settings, data, local=local), host=host, port=chosen, log_config=None, access_log=False
        )
    finally:
        data.close()


@console_group.command("hash-password")
@click.option(
    "--password", prompt=True, hide_input=True, confirmation_prompt=True, help="(prompted when left out)"
)
def hash_password_command(password: str) -> None:
    """Print an argon2 hash of a password, for EVENTMAIL_CONSOLE__USERS."""
    from consumer.console.auth import hash_password

    click.echo(hash_password(password))


def register(group: click.Group) -> None:
    group.add_command(console_group)
