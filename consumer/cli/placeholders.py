"""``eventmail placeholders``: what a rule's subject and body may use, per platform.

Read-only and offline: it prints the table of :mod:`consumer.events.placeholders`, never settings.
"""

from __future__ import annotations

import json

import click
from rich.console import Console

from consumer.cli.tables import TextTable
from consumer.events.placeholders import DATA_PREFIX, placeholders_for
from consumer.events.triggers import Platform, is_trigger, triggers_for
from consumer.rules.templates import suggestion

DATA_ROW = (f"{DATA_PREFIX}KEY", "Any entry of the event's data map (every other field the platform sends)")


def _platforms(platform: str | None, trigger: str | None) -> list[Platform]:
    chosen = [Platform(platform)] if platform else list(Platform)
    if trigger is None:
        return chosen
    having = [p for p in chosen if is_trigger(p, trigger)]
    if not having:
        known = sorted({t for p in chosen for t in triggers_for(p)})
        where = f"platform {platform}" if platform else "any platform"
        raise click.BadParameter(f"{trigger!r} is not a trigger of {where}{suggestion(trigger, known)}")
    return having


def placeholder_rows(platforms: list[Platform]) -> list[tuple[str, str, list[str]]]:
    """(name, description, platforms) of every placeholder of the platforms, then ``data.KEY``."""
    rows: dict[str, tuple[str, list[str]]] = {}
    for platform in platforms:
        for name, description in placeholders_for(platform).items():
            rows.setdefault(name, (description, []))[1].append(platform.value)
    out = [(name, description, where) for name, (description, where) in rows.items()]
    out.append((DATA_ROW[0], DATA_ROW[1], [p.value for p in platforms]))
    return out


@click.command("placeholders")
@click.option("--platform", type=click.Choice([p.value for p in Platform]), help="Only this platform.")
@click.option("--trigger", metavar="T", help="Only platforms that have this trigger (e.g. lead_sold).")
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per line: name, description, platforms."
)
def placeholders_command(platform: str | None, trigger: str | None, as_json: bool) -> None:
    """List the placeholders a rule's subject and body may use.

    With use_twig: false, write them as {{ name }} (only plain substitutions). With use_twig: true,
    the subject and body are templates of a sandboxed Twig-like language ({% if %}, filters ...)
    reading the same names. {{ data.KEY }} reads any entry of the event's data map.

    \b
    Examples:
      eventmail placeholders --platform call_logic
      eventmail placeholders --trigger revenue_postback --json
    """
    try:
        platforms = _platforms(platform, trigger)
    except click.BadParameter as exc:
        exc.param_hint = "'--trigger'"
        raise
    rows = placeholder_rows(platforms)
    if as_json:
        for name, description, where in rows:
            click.echo(json.dumps({"name": name, "description": description, "platforms": where}))
        return
    title = "Placeholders" + (f" for {trigger}" if trigger else "")
    table = TextTable(title=title, expand=True)
    table.add_column("Placeholder", no_wrap=True)
    table.add_column("Description")
    table.add_column("Platforms", no_wrap=True)
    for name, description, where in rows:
        table.add_row(f"{{{{ {name} }}}}", description, ", ".join(where))
    Console().print(table)


def register(group: click.Group) -> None:
    group.add_command(placeholders_command)
