"""``eventmail aggregate``: the warning aggregator service."""

from __future__ import annotations

import asyncio

import click

from consumer.cli.common import CliState, pass_state
from consumer.observability.logging import configure_logging


@click.command("aggregate")
@pass_state
def aggregate_command(state: CliState) -> None:
    """Raise warning alerts for rules with warning notifications, and meter billable events.

    Reads the outcomes topic in the consumer group EVENTMAIL_GROUP_ID + "-aggregate" (scale by
    partitions: a rule's outcomes share one partition, whose owner alone decides its alerts).
    Alerts are emailed through EVENTMAIL_ALERTS__CONNECTION and written to the alerts topic.
    On start, each partition's windows are rebuilt from the last 6 hours of outcomes and earlier
    alerts are read back, so a restart neither misses nor repeats an alert. Serves /metrics,
    /healthz and /readyz on EVENTMAIL_HTTP__PORT (default 9401). SIGTERM or Ctrl-C finishes alerts
    in flight, commits and exits 0.
    """
    from consumer.aggregator.runner import run_aggregator

    settings = state.settings()
    configure_logging(settings.log_level, settings.log_format)
    raise SystemExit(asyncio.run(run_aggregator(settings)))


def register(group: click.Group) -> None:
    group.add_command(aggregate_command)
