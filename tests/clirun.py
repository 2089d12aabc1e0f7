"""Running the ``eventmail`` CLI in-process with a given environment, as a user would."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

from consumer.cli.main import main


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@contextlib.contextmanager
def _env(env: dict[str, str]) -> Iterator[None]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EVENTMAIL_")}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        yield


def run_cli(args: list[str], env: dict[str, str] | None = None) -> CliResult:
    out, err = io.StringIO(), io.StringIO()
    with _env(env or {}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return CliResult(code, out.getvalue(), err.getvalue())
