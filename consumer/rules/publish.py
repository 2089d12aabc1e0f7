"""Writing to the rules topic: rule records and tombstones, keyed by rule id, acknowledged by the broker.

Used by ``eventmail rules apply`` and ``rules delete``. The producer is idempotent (``acks=all``), so a
retried send never duplicates or reorders a rule's records. Only sealed rules are written
(:func:`consumer.rules.codec.encode_rule` refuses clear-text passwords). Nothing here prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource

from consumer.errors import RuleError
from consumer.kafka.acls import Acl
from consumer.kafka.permissions import missing_permissions
from consumer.rules.codec import encode_rule
from consumer.rules.model import Rule
from consumer.settings import Settings

#: Record header naming who wrote a rule record (``rules apply``/``delete``, the console).
AUTHOR_HEADER = "eventmail.author"


@dataclass(frozen=True)
class Written:
    rule_id: str
    partition: int
    offset: int


def check_topic(settings: Settings, timeout: float = 15.0) -> list[str]:
    """Raise :class:`RuleError` when the rules topic is missing; warnings about its configuration."""
    topic = settings.topics.rules
    config = settings.kafka_config()
    admin = AdminClient(config)
    try:
        # All topics, not just this one: asking for one topic could auto-create it uncompacted.
        topics = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise RuleError(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc}") from None
    # Asked of the broker (nothing written): a principal without WRITE, or one that may not even
    # see the topic, is told which permission it lacks rather than that the topic does not exist.
    try:
        missing = missing_permissions(config, [Acl("topic", topic, "Write")], timeout)
    except KafkaException:
        missing = []  # an older broker that cannot say: the write itself will tell
    if missing and not missing[0].startswith("the topic"):
        raise RuleError(f"{missing[0]} (rules apply/delete need the admin ACLs: eventmail acls admin)")
    if topic not in topics:
        raise RuleError(
            f"the rules topic {topic} does not exist; create it with cleanup.policy=compact "
            "(or set EVENTMAIL_TOPICS__RULES)"
        )
    try:
        futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
        config = next(iter(futures.values())).result(timeout=timeout)
        policy = config.get("cleanup.policy")
    except KafkaException:
        return []
    if policy is not None and "compact" not in str(policy.value):
        return [
            f"the rules topic {topic} is not compacted (cleanup.policy={policy.value}): old rules may expire"
        ]
    return []


def publish_rules(
    settings: Settings, rules: Sequence[Rule], timeout: float = 30.0, author: str | None = None
) -> list[Written]:
    """Write each (sealed) rule and wait for the broker's acknowledgements; ``author`` goes into the
    ``eventmail.author`` header of every record (``eventmail rules history`` shows it)."""
    records = [(rule.id, encode_rule(rule)) for rule in rules]
    return _produce(settings, records, timeout, author)


def publish_tombstones(
    settings: Settings, rule_ids: Sequence[str], timeout: float = 30.0, author: str | None = None
) -> list[Written]:
    """Write a tombstone per rule id: the rule is deleted everywhere."""
    return _produce(settings, [(rule_id, None) for rule_id in rule_ids], timeout, author)


def _produce(
    settings: Settings, records: Sequence[tuple[str, bytes | None]], timeout: float, author: str | None
) -> list[Written]:
    producer = Producer(
        settings.kafka_config(
            **{"enable.idempotence": True, "acks": "all", "linger.ms": 5, "client.id": "eventmail-rules"}
        )
    )
    written: list[Written] = []
    failed: list[str] = []

    def delivered(error: Any, msg: Message) -> None:
        key = (msg.key() or b"").decode("utf-8", "replace")
        if error is not None:
            failed.append(f"rule {key}: not written: {error}")
        else:
            written.append(Written(key, msg.partition() or 0, msg.offset() or 0))

    headers: list[tuple[str, str | bytes | None]] | None = (
        [(AUTHOR_HEADER, author.encode())] if author else None
    )
    for rule_id, value in records:
        producer.produce(
            settings.topics.rules, key=rule_id.encode(), value=value, headers=headers, on_delivery=delivered
        )
        producer.poll(0)
    remaining = producer.flush(timeout)
    if remaining:
        failed.append(f"{remaining} records not acknowledged within {timeout:g}s")
    if failed:
        if written:
            failed.append(f"written: {', '.join(w.rule_id for w in written)}")
        raise RuleError("; ".join(failed))
    order = {rule_id: i for i, (rule_id, _) in enumerate(records)}
    return sorted(written, key=lambda w: order.get(w.rule_id, 0))
