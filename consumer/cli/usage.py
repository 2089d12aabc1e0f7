"""``eventmail usage``: billable warning-notification events per rule, and their cost."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import Decimal

import click
from rich.console import Console

from consumer.cli.common import DURATION, CliState, pass_state
from consumer.cli.tables import TextTable


def _money(amount: Decimal) -> str:
    return f"${amount:.4f}"


@click.command("usage")
@click.option(
    "--since", type=DURATION, default="30d", show_default=True, help="How far back: 24h, 7d, 30d ..."
)
@click.option("--by-day", is_flag=True, help="One row per rule and UTC day.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@pass_state
def usage_command(state: CliState, since: float, by_day: bool, as_json: bool) -> None:
    """Events billed for warning notifications ($0.0001 each), per rule.

    A billable event is a final delivery result (sent or failed) of a rule that had warning
    notifications enabled; retries and configuration errors are not billed. Reads the outcomes
    topic (EVENTMAIL_TOPICS__OUTCOMES) for outcomes created in the period. Examples:

    \b
      eventmail usage
      eventmail usage --since 7d --by-day
      eventmail usage --json | jq .total.cost
    """
    from consumer.aggregator.usage import PRICE_PER_EVENT, read_usage

    settings = state.settings()
    now = time.time()
    since_ms = int((now - since) * 1000)

    def warn(partition: int, offset: int, error: str) -> None:
        click.echo(
            f"eventmail: skipping an undecodable outcome at partition {partition} offset {offset}: {error}",
            err=True,
        )

    meter = read_usage(settings.kafka_config(), settings.topics.outcomes, since_ms, warn)
    start = datetime.fromtimestamp(since_ms / 1000, UTC)
    end = datetime.fromtimestamp(now, UTC)
    rules = meter.rules()
    if as_json:
        document = {
            "since": start.isoformat(timespec="seconds"),
            "until": end.isoformat(timespec="seconds"),
            "price_per_event": float(PRICE_PER_EVENT),
            "rules": [
                {
                    "rule_id": r.rule_id,
                    "events": r.events,
                    "cost": float(r.cost),
                    **({"days": {d.isoformat(): n for d, n in r.days.items()}} if by_day else {}),
                }
                for r in rules
            ],
            "total": {"events": meter.total_events, "cost": float(meter.total_cost)},
        }
        click.echo(json.dumps(document))
        return
    title = (
        f"Billable events {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC ({_money(PRICE_PER_EVENT)} each)"
    )
    table = TextTable(title=title)
    table.add_column("Rule", no_wrap=True)
    if by_day:
        table.add_column("Day (UTC)", no_wrap=True)
    table.add_column("Events", justify="right")
    table.add_column("Cost", justify="right")
    for r in rules:
        if by_day:
            for day, count in r.days.items():
                table.add_row(r.rule_id, day.isoformat(), f"{count:,}", _money(count * PRICE_PER_EVENT))
        else:
            table.add_row(r.rule_id, f"{r.events:,}", _money(r.cost))
    table.add_section()
    total = ["Total", *([""] if by_day else []), f"{meter.total_events:,}", _money(meter.total_cost)]
    table.add_row(*total, style="bold")
    Console().print(table)


def register(group: click.Group) -> None:
    group.add_command(usage_command)
