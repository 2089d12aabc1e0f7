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
