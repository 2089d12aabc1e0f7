"""The list of command modules; each exposes ``register(group)``."""

from __future__ import annotations

import importlib

import click

#: Modules under consumer/cli that add commands.
COMMAND_MODULES: tuple[str, ...] = (
    "run",
    "logs",
    "rules",
    "rules_authoring",
    "topics",
    "console",
    "acls",
    "placeholders",
    "aggregate",
    "usage",
    "smtp",
    "demo",
)


def register(group: click.Group) -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"consumer.cli.{name}")
        module.register(group)
