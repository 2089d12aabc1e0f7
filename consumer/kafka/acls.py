"""The exact ACLs each component of a deployment needs, from its settings (topic names, group id).

``eventmail acls`` prints them as ``kafka-acls`` commands or applies them with the admin API, and
``docs/operations.md`` lists the same. Readers that only ``assign()`` partitions (the rule store, the
outcome read-back, ``logs``, ``usage``, the aggregator's alert read-back) use a throwaway
``group.id`` that librdkafka requires but that never joins, commits or fetches offsets: they need
no group ACL (a group authorization error from such a reader is ignored).

Kafka 2.8 and later (KIP-679) need no ``IDEMPOTENT_WRITE`` on the cluster for idempotent producers:
``WRITE`` on the topic is enough.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from confluent_kafka.admin._acl import AclBinding, AclOperation, AclPermissionType
from confluent_kafka.admin._resource import ResourcePatternType, ResourceType

from consumer.settings import Settings


class Component(StrEnum):
    RUN = "run"
    AGGREGATE = "aggregate"
    ADMIN = "admin"  # rules apply/delete/list/get/history, topics check
    READER = "reader"  # logs, usage
    CONSOLE = "console"  # eventmail console


#: The SCRAM user (principal ``User:NAME``) each component uses by default.
DEFAULT_USERS: dict[Component, str] = {c: f"eventmail-{c.value}" for c in Component}


@dataclass(frozen=True, order=True)
class Acl:
    """ALLOW ``operation`` on a resource (``topic``, ``group``, ``transactional-id``)."""

    resource: str
    name: str
    operation: str  # Read, Write, Describe, DescribeConfigs
    prefixed: bool = False

    def describe(self) -> str:
        pattern = " (prefixed)" if self.prefixed else ""
        return f"{self.operation.upper()} on {self.resource} {self.name}{pattern}"


def acls_for(component: Component, settings: Settings) -> list[Acl]:
    topics = settings.topics
    group = settings.group_id
    if component is Component.RUN:
        return [
            Acl("topic", topics.lms, "Read"),
            Acl("topic", topics.call_logic, "Read"),
            Acl("topic", topics.rules, "Read"),
            Acl("topic", topics.retry, "Read"),
            Acl("topic", topics.retry, "Write"),
            Acl("topic", topics.outcomes, "Read"),  # the read-back after a restart (no duplicates)
            Acl("topic", topics.outcomes, "Write"),
            Acl("topic", topics.dlq, "Write"),
            Acl("group", group, "Read"),  # joins, commits; the retry transaction commits its offsets
            Acl("transactional-id", f"{group}.retry.", "Write", prefixed=True),
        ]
    if component is Component.AGGREGATE:
        return [
            Acl("topic", topics.outcomes, "Read"),
            Acl("topic", topics.rules, "Read"),
            Acl("topic", topics.alerts, "Read"),  # decisions already taken (no second alert)
            Acl("topic", topics.alerts, "Write"),
            Acl("group", f"{group}-aggregate", "Read"),
        ]
    if component is Component.ADMIN:
        return [
            Acl("topic", topics.rules, "Read"),
            Acl("topic", topics.rules, "Write"),
            Acl("topic", topics.rules, "DescribeConfigs"),  # the compaction check of rules apply
        ]
    if component is Component.CONSOLE:
        return [
            Acl("topic", topics.rules, "Read"),
            Acl("topic", topics.rules, "Write"),  # rules saved, enabled, deleted in the console
            Acl("topic", topics.outcomes, "Read"),  # the SMTP log, counts, usage
            Acl("topic", topics.alerts, "Read"),
            Acl("topic", topics.lms, "Read"),  # a recent event of the trigger as the preview's sample
            Acl("topic", topics.call_logic, "Read"),
        ]
    return [Acl("topic", topics.outcomes, "Read")]


def kafka_acls_commands(
    acls: list[Acl], principal: str, bootstrap: str, command_config: str = "admin.properties"
) -> list[str]:
    """One ``kafka-acls.sh --add`` command per ACL."""
    out = []
    for acl in acls:
        parts = [
            "kafka-acls.sh",
            "--bootstrap-server",
            bootstrap,
            "--command-config",
            command_config,
            "--add",
            "--allow-principal",
            principal,
            "--operation",
            acl.operation,
            f"--{acl.resource}",
            acl.name,
        ]
        if acl.prefixed:
            parts += ["--resource-pattern-type", "prefixed"]
        out.append(shlex.join(parts))
    return out


def _binding(acl: Acl, principal: str) -> AclBinding:

    resource = {
        "topic": ResourceType.TOPIC,
        "group": ResourceType.GROUP,
        "transactional-id": ResourceType.TRANSACTIONAL_ID,
    }[acl.resource]
    operation = {
        "Read": AclOperation.READ,
        "Write": AclOperation.WRITE,
        "Describe": AclOperation.DESCRIBE,
        "DescribeConfigs": AclOperation.DESCRIBE_CONFIGS,
    }[acl.operation]
    pattern = ResourcePatternType.PREFIXED if acl.prefixed else ResourcePatternType.LITERAL
    return AclBinding(resource, acl.name, pattern, principal, "*", operation, AclPermissionType.ALLOW)


def apply_acls(config: dict[str, Any], acls: list[Acl], principal: str, timeout: float = 30.0) -> None:
    """Create the ACLs through the admin API (the client in ``config`` needs ALTER on the cluster)."""
    from confluent_kafka.admin import AdminClient

    bindings = [_binding(acl, principal) for acl in acls]
    admin = AdminClient(config)  # kept until every answer is in (a destroyed handle fails them)
    futures = admin.create_acls(bindings, request_timeout=timeout)
    for future in futures.values():
        future.result(timeout=timeout)
    del admin


_WHAT = {
    Component.RUN: "`eventmail run`",
    Component.AGGREGATE: "`eventmail aggregate`",
    Component.ADMIN: "`rules apply/delete/list/get/history`",
    Component.READER: "`eventmail logs`, `eventmail usage`",
    Component.CONSOLE: "`eventmail console`",
}


def acl_table(settings: Settings) -> list[str]:
    """The ACLs of every component as a Markdown table (docs/operations.md holds this table)."""
    lines = ["| component | resource | name | operations |", "|---|---|---|---|"]
    for component in Component:
        merged: dict[tuple[str, str, bool], list[str]] = {}
        for acl in acls_for(component, settings):
            merged.setdefault((acl.resource, acl.name, acl.prefixed), []).append(acl.operation)
        for (resource, name, prefixed), operations in merged.items():
            shown = f"`{name}` (prefixed)" if prefixed else f"`{name}`"
            lines.append(f"| {_WHAT[component]} | {resource} | {shown} | {', '.join(operations)} |")
    return lines
