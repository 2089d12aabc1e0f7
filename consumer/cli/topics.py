"""``eventmail topics``: create the topics of a deployment, or check an existing cluster's."""

from __future__ import annotations

import click

from consumer.cli.common import CliState, fail, pass_state
from consumer.topic_plan import admin_client, as_commands, check, create_missing, describe, planned_topics


@click.group("topics")
def topics_group() -> None:
    """Create or check the topics of this deployment (names from EVENTMAIL_TOPICS__*).

    The configuration is the one docs/operations.md asks for: the rules topic compacted with one
    partition, outcomes kept 31 days (eventmail usage bills 30 days back), retry partitions as many as
    the event topics and kept longer than the retry deadline, replication factor 3 and
    min.insync.replicas 2 in production.
    """


@topics_group.command("create")
@click.option(
    "--partitions",
    type=click.IntRange(1, 10_000),
    default=6,
    show_default=True,
    help="Partitions of the event, outcomes and retry topics (alerts and DLQ: up to 3).",
)
@click.option(
    "--replication-factor",
    type=click.IntRange(1, 32),
    default=3,
    show_default=True,
    help="Replicas of every topic (1 for a single-broker development cluster).",
)
@click.option("--dry-run", is_flag=True, help="Print the kafka-topics.sh commands instead of creating.")
@pass_state
def create_command(state: CliState, partitions: int, replication_factor: int, dry_run: bool) -> None:
    """Create every topic of the settings that does not exist yet (existing ones are left as they are)."""
    settings = state.settings()
    specs = planned_topics(settings, partitions, replication_factor)
    if dry_run:
        for line in as_commands(specs, replication_factor, settings.kafka.bootstrap_servers):
            click.echo(line)
        return
    admin = admin_client(settings)
    created = create_missing(admin, specs, replication_factor)
    for spec in specs:
        click.echo(f"{'created' if spec.name in created else 'exists '} {spec.name} ({spec.role})")


@topics_group.command("check")
@pass_state
def check_command(state: CliState) -> None:
    """Check the cluster's topics against what eventmail needs.

    Exit 1 with one line per missing or misconfigured topic; warnings (exit 0) for topics whose
    replication factor or min.insync.replicas cannot survive the loss of a broker.
    """
    settings = state.settings()
    names = [spec.name for spec in planned_topics(settings, 1, 1)]
    problems, warnings = check(settings, describe(admin_client(settings), names))
    for line in warnings:
        click.echo(f"eventmail: warning: {line}", err=True)
    for line in problems:
        click.echo(line, err=True)
    if problems:
        fail(f"{len(problems)} topic problem(s)")
    click.echo(f"ok: {len(names)} topics as eventmail needs them")


def register(group: click.Group) -> None:
    group.add_command(topics_group)
