"""``eventmail run``: the consumer service."""

from __future__ import annotations

import click

from consumer.cli.common import CliState, pass_state
from consumer.observability.logging import configure_logging


@click.command("run")
@pass_state
def run_command(state: CliState) -> None:
    """Consume the LMS and Call Logic event topics and send the mail the rules ask for.

    Stateless: scale by starting more replicas with the same EVENTMAIL_GROUP_ID. Each delivery
    writes one outcome to the outcomes topic before its source offset is committed. Serves
    /metrics, /healthz and /readyz on EVENTMAIL_HTTP__PORT (default 9400). SIGTERM or Ctrl-C
    drains in-flight mail (EVENTMAIL_PIPELINE__DRAIN_TIMEOUT_SECONDS), commits and exits 0.
    """
    from consumer import eventloop
    from consumer.pipeline.runner import run_service

    settings = state.settings()
    configure_logging(settings.log_level, settings.log_format)
    code = eventloop.run(run_service(settings), settings.pipeline.event_loop)
    raise SystemExit(code)


def register(group: click.Group) -> None:
    group.add_command(run_command)
