"""``eventmail logs``: the SMTP log (Created | Message: to, subject, cc, bcc | Error) from the
outcome topic, as a table or as JSON lines."""

from __future__ import annotations

import json
import signal
import sys

import click
from rich.console import Console

from consumer.cli.common import DURATION, CliState, pass_state
from consumer.cli.tables import TextTable, text
from consumer.errors import CodecError
from consumer.outcomes.codec import decode_outcome
from consumer.outcomes.model import Outcome, OutcomeStatus
from consumer.topic_reader import read_since, since_to_ms

_STATUS_STYLE = {"sent": "green", "failed": "red", "retrying": "yellow", "config_error": "magenta"}


def message_cell(outcome: Outcome) -> str:
    lines = [f"To: {', '.join(outcome.to) or '-'}", f"Subject: {outcome.subject or '-'}"]
    if outcome.cc:
        lines.append(f"Cc: {', '.join(outcome.cc)}")
    if outcome.bcc:
        lines.append(f"Bcc: {', '.join(outcome.bcc)}")
    return "\n".join(lines)


def outcome_table(outcomes: list[Outcome], title: str | None = None) -> TextTable:
    table = TextTable(title=title, show_lines=True, expand=True)
    table.add_column("Created", no_wrap=True)
    table.add_column("Rule", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Message", ratio=3)
    table.add_column("Error", ratio=2)
    for o in outcomes:
        status = o.status.value
        table.add_row(
            o.created.strftime("%Y-%m-%d %H:%M:%S"),
            o.rule_id if o.rule_version is None else f"{o.rule_id}\nv{o.rule_version}",
            text(status, _STATUS_STYLE[status]),
            message_cell(o),
            o.error or "",
        )
    return table


def outcome_json(outcome: Outcome) -> str:
    return json.dumps(outcome.model_dump(mode="json"), separators=(",", ":"))


@click.command("logs")
@click.option("--rule", "rules", multiple=True, metavar="ID", help="Only these rules (repeatable).")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in OutcomeStatus]),
    help="Only these statuses (repeatable).",
)
@click.option("--since", type=DURATION, default="1h", show_default=True, help="How far back: 30m, 6h, 7d ...")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new outcomes until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Only the newest N (without --follow)."
)
@pass_state
def logs_command(
    state: CliState,
    rules: tuple[str, ...],
    statuses: tuple[str, ...],
    since: float,
    follow: bool,
    as_json: bool,
    limit: int | None,
) -> None:
    """Show the SMTP log: what was sent, to whom, and what went wrong.

    Reads the outcomes topic (EVENTMAIL_TOPICS__OUTCOMES). Examples:

    \b
      eventmail logs --since 24h --status failed
      eventmail logs --rule r-sold-high --follow
      eventmail logs --json | jq .error
    """
    settings = state.settings()
    stopping: list[bool] = []
    if follow:
        signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    console = Console()
    collected: list[Outcome] = []
    for msg in read_since(
        settings.kafka_config(),
        settings.topics.outcomes,
        since_to_ms(since),
        follow=follow,
        should_stop=lambda: bool(stopping),
    ):
        try:
            outcome = decode_outcome(msg.value() or b"")
        except CodecError as exc:
            click.echo(
                f"eventmail: skipping an undecodable outcome at offset {msg.offset()}: {exc}", err=True
            )
            continue
        if (rules and outcome.rule_id not in rules) or (statuses and outcome.status.value not in statuses):
            continue
        if follow:
            if as_json:
                click.echo(outcome_json(outcome))
                sys.stdout.flush()
            else:
                console.print(outcome_table([outcome]))
        else:
            collected.append(outcome)
    if follow:
        return
    collected.sort(key=lambda o: o.created)
    if limit is not None:
        collected = collected[-limit:]
    if as_json:
        for outcome in collected:
            click.echo(outcome_json(outcome))
        return
    if not collected:
        click.echo("no outcomes match", err=True)
        return
    console.print(outcome_table(collected, title=f"SMTP log: {len(collected)} outcomes"))


def register(group: click.Group) -> None:
    group.add_command(logs_command)
