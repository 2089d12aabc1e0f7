"""What this client may do on the cluster, asked without writing anything: the broker's own answer
(topic and group descriptions with the operations the principal is authorized for).

``eventmail run`` and ``eventmail aggregate`` check the ACLs of :mod:`consumer.kafka.acls` before
they take any work and stay not ready, with the missing permissions as the reason, until they are
granted; ``rules apply`` refuses with one line naming the missing permission. A topic the principal
may not even describe is reported as such, not as "does not exist" (Kafka does not tell the two
apart to a principal without DESCRIBE).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient

from consumer.kafka.acls import Acl


def who(config: dict[str, Any]) -> str:
    """The principal this configuration authenticates as, for messages (no secret in it)."""
    user = config.get("sasl.username")
    return f"User:{user}" if user else "this client"


def topic_problem(topic: str, error: Any, role: str = "topic", need: str = "READ") -> str:
    """The reason a topic's metadata came back with ``error``, in words that name the permission."""
    code = error.code() if hasattr(error, "code") else None
    if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        return (
            f"not allowed to use the {role} {topic}: the principal needs {need} on topic {topic} "
            "(Kafka hides a topic from a principal without DESCRIBE; `eventmail acls` lists the ACLs)"
        )
    if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, None):
        return f"the {role} {topic} does not exist"
    return f"the {role} {topic} cannot be used: {error.str() if hasattr(error, 'str') else error}"


def missing_permissions(
    config: dict[str, Any], acls: list[Acl], timeout: float = 15.0, unknown: list[str] | None = None
) -> list[str]:
    """One line per ACL of ``acls`` the broker says this client lacks; topics that do not exist are
    not a permission matter: they are added to ``unknown`` when given (a principal without DESCRIBE
    cannot tell, and is told it lacks the permission). A transactional id is asked by claiming one
    of its pattern (see :func:`_transactional_probe`). Raises KafkaException when the brokers do not
    answer."""
    admin = AdminClient(
        {**{k: v for k, v in config.items() if not k.startswith(("group.", "enable."))}, "log_level": 5}
    )
    principal = who(config)
    by_resource: dict[tuple[str, str], set[str]] = defaultdict(set)
    for acl in acls:
        if acl.resource in ("topic", "group") and not acl.prefixed:
            by_resource[(acl.resource, acl.name)].add(acl.operation.upper())
    out: list[str] = []
    topics = sorted(name for kind, name in by_resource if kind == "topic")
    if topics:
        futures = admin.describe_topics(
            TopicCollection(topics), include_authorized_operations=True, request_timeout=timeout
        )
        for topic, future in futures.items():
            needed = by_resource[("topic", topic)]
            try:
                allowed = {op.name for op in (future.result(timeout=timeout).authorized_operations or [])}
            except KafkaException as exc:
                error = exc.args[0]
                if getattr(error, "code", lambda: None)() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                    allowed = set()
                elif getattr(error, "code", lambda: None)() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    if unknown is not None:
                        unknown.append(topic)
                    continue  # not a permission matter
                else:
                    raise
            out += [f"{principal} lacks {op} on topic {topic}" for op in sorted(needed) if op not in allowed]
    groups = sorted(name for kind, name in by_resource if kind == "group")
    if groups:
        futures = admin.describe_consumer_groups(
            groups, include_authorized_operations=True, request_timeout=timeout
        )
        for group, future in futures.items():
            needed = by_resource[("group", group)]
            try:
                allowed = {op.name for op in (future.result(timeout=timeout).authorized_operations or [])}
            except KafkaException as exc:
                if getattr(exc.args[0], "code", lambda: None)() != KafkaError.GROUP_AUTHORIZATION_FAILED:
                    raise
                allowed = set()
            out += [f"{principal} lacks {op} on group {group}" for op in sorted(needed) if op not in allowed]
    del admin
    for acl in acls:
        if acl.resource == "transactional-id":
            out += _transactional_probe(config, acl, principal, timeout)
    return out


def _transactional_probe(config: dict[str, Any], acl: Acl, principal: str, timeout: float) -> list[str]:
    """Claim a transactional id of the ACL's pattern (``<prefix>permission-check``): it registers the
    id with its coordinator and writes nothing any reader sees; the only way to ask for this ACL."""
    from confluent_kafka import Producer

    tx_id = f"{acl.name}permission-check" if acl.prefixed else acl.name
    producer = Producer(
        {
            **{k: v for k, v in config.items() if not k.startswith(("group.", "enable."))},
            "transactional.id": tx_id,
            "log_level": 3,
        }
    )
    try:
        producer.init_transactions(timeout)
    except KafkaException as exc:
        if exc.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
            return [
                f"{principal} lacks {acl.operation.upper()} on transactional-id {acl.name}"
                + (" (prefixed)" if acl.prefixed else "")
            ]
        raise
    finally:
        del producer
    return []
