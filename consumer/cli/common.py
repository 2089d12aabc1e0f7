"""What every command shares: the global options, settings loading and one-line errors.

Exit codes: 0 success, 1 invalid input or failed check, 2 usage error. Errors go to stderr in one
line that names what is wrong; a traceback only with ``--debug``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import click

from consumer.errors import EventmailError
from consumer.mail.message import allow_special_use_domains
from consumer.settings import Settings, load_settings

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


@dataclass
class CliState:
    config_file: Path | None = None
    debug: bool = False
    _settings: Settings | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_file)
            allow_special_use_domains(self._settings.smtp.allowed_special_use_domains)
        return self._settings


def cli_state(ctx: click.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


#: ``@pass_state`` gives a command the :class:`CliState`.
pass_state = click.make_pass_decorator(CliState, ensure=True)


def fail(message: str, code: int = EXIT_INVALID) -> NoReturn:
    """Print one line to stderr and exit."""
    click.echo(f"eventmail: {message}", err=True)
    sys.exit(code)


def report_error(exc: BaseException, debug: bool) -> int:
    """Turn an exception escaping a command into one stderr line and an exit code."""
    if debug:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, EventmailError):
        click.echo(f"eventmail: {exc}", err=True)
        return EXIT_INVALID
    click.echo(
        f"eventmail: unexpected error: {type(exc).__name__}: {exc} (run with --debug for details)", err=True
    )
    return EXIT_INVALID


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``90s``, ``5m``, ``1h``, ``30d``, ``2w`` -> seconds."""
    value = text.strip().lower()
    if len(value) >= 2 and value[-1] in _UNITS and value[:-1].replace(".", "", 1).isdigit():
        return float(value[:-1]) * _UNITS[value[-1]]
    raise click.BadParameter(f"{text!r} is not a duration like 30s, 5m, 1h or 30d")


class DurationType(click.ParamType[float]):
    name = "DURATION"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


DURATION = DurationType()
