"""``eventmail demo``: everything local in one command -- Kafka, SMTP sinks, the example rules, both
services and a stream of sample events -- with a live SMTP log, a summary, and a clean stop."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from consumer.cli.common import DURATION


@click.command("demo")
@click.option(
    "--events",
    type=click.IntRange(min=10),
    default=200,
    show_default=True,
    help="How many events to publish (about 5% of them malformed on purpose).",
)
@click.option(
    "--no-follow",
    is_flag=True,
    help="Run to the summary and exit (1 when the expected results did not arrive in time).",
)
@click.option(
    "--bootstrap",
    metavar="HOST:PORT",
    help="Use this Kafka instead of starting the local one (deploy/local/kafka.sh, KAFKA_PORT).",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Where the mail (.eml), alert mail, service logs, rule copies and demo.env go.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout (the rest on stderr)."
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=25.0,
    show_default=True,
    help="Events per second (0: as fast as Kafka takes them).",
)
@click.option(
    "--timeout",
    type=DURATION,
    default="3m",
    show_default=True,
    help="How long to wait, after the last event, for every expected mail, failure, alert and dead letter.",
)
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the sample event stream.")
def demo_command(
    events: int,
    no_follow: bool,
    bootstrap: str | None,
    output: Path,
    as_json: bool,
    rate: float,
    timeout: float,
    seed: int,
) -> None:
    """Run eventmail end to end on this machine and watch the mail go out.

    \b
    1. starts the local Kafka (unless --bootstrap is given), two SMTP sinks -- one keeps every
       mail as an .eml file, one refuses every mail like a broken partner relay -- and one for
       the warning-alert mail;
    2. creates fresh demo.* topics, applies the rules of config/rules/examples/ and
       config/demo/ (one goes to the refusing relay, with warning notifications on);
    3. starts `eventmail run` and `eventmail aggregate`, publishes LMS and Call Logic events
       (some match the rules, some are filtered out, some are malformed and go to the DLQ),
       and shows the outcomes as they arrive;
    4. prints a summary and where to look; the services keep running (new outcomes are shown)
       until Ctrl-C, which stops everything the demo started. --no-follow exits after the summary.

    The demo ignores EVENTMAIL_* variables: its settings are written to OUTPUT/demo.env, so
    `. demo-output/demo.env && eventmail logs` shows its SMTP log. Its topics stay after it
    stops; on the local Kafka, the next demo removes those of earlier runs (never with --bootstrap).
    """
    from consumer.demo.runner import Options, run_demo

    options = Options(
        events=events,
        follow=not no_follow,
        bootstrap=bootstrap,
        output=output,
        as_json=as_json,
        rate=rate,
        timeout=timeout,
        seed=seed,
    )
    code = run_demo(options)
    if code:
        sys.exit(code)


def register(group: click.Group) -> None:
    group.add_command(demo_command)
