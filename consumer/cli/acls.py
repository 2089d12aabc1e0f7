"""``eventmail acls``: the Kafka ACLs each component needs, as kafka-acls commands or applied."""

from __future__ import annotations

import click

from consumer.cli.common import CliState, fail, pass_state
from consumer.kafka.acls import DEFAULT_USERS, Component, acls_for, apply_acls, kafka_acls_commands


@click.command("acls")
@click.argument("components", nargs=-1, type=click.Choice([c.value for c in Component]))
@click.option(
    "--principal",
    help="The principal to allow (default User:eventmail-COMPONENT); only with one component.",
)
@click.option(
    "--apply",
    "apply_them",
    is_flag=True,
    help="Create the ACLs with the admin API (these settings' credentials need ALTER on the cluster).",
)
@pass_state
def acls_command(
    state: CliState, components: tuple[str, ...], principal: str | None, apply_them: bool
) -> None:
    """The least-privilege ACLs of COMPONENTS (run, aggregate, admin, reader; default: all).

    Topic and group names come from the settings (EVENTMAIL_TOPICS__*, EVENTMAIL_GROUP_ID). admin is
    `rules apply/delete/list/get/history`; reader is `logs` and `usage`. Examples:

    \b
      eventmail acls > acls.sh
      eventmail acls run --principal User:mailer-prod
      eventmail acls run aggregate --apply
    """
    chosen = [Component(c) for c in components] or list(Component)
    if principal is not None and len(chosen) != 1:
        fail("--principal: give exactly one component with it")
    settings = state.settings()
    for component in chosen:
        who = principal or f"User:{DEFAULT_USERS[component]}"
        acls = acls_for(component, settings)
        if apply_them:
            apply_acls(settings.kafka_config(), acls, who)
            click.echo(f"applied {len(acls)} ACLs for {component.value} ({who})")
            continue
        click.echo(f"# eventmail {component.value}: {who}")
        for line in kafka_acls_commands(acls, who, settings.kafka.bootstrap_servers):
            click.echo(line)


def register(group: click.Group) -> None:
    group.add_command(acls_command)
