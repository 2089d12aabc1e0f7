"""The session's real Kafka broker does what the service relies on: produce/consume, compaction,
transactions with consumer offsets, idempotent production."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from tests.support.kafka import TopicFactory, consume_all, produce, unique_name


def test_produce_consume_round_trip(kafka_bootstrap: str, topic_factory: TopicFactory) -> None:
    topic = topic_factory("roundtrip", partitions=3)
    records = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(30)]
    produce(kafka_bootstrap, topic, records)
    got = consume_all(kafka_bootstrap, topic, expected=30)
    assert sorted((m.key(), m.value()) for m in got) == sorted(records)
    assert {m.partition() for m in got} <= {0, 1, 2}


def test_compacted_topic_is_created_compacted_and_keeps_tombstones(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory("rules", compacted=True)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    resource = ConfigResource(ResourceType.TOPIC, topic)
    config = admin.describe_configs([resource])[resource].result(timeout=10)
    assert config["cleanup.policy"].value == "compact"
    produce(kafka_bootstrap, topic, [(b"r1", b"v1"), (b"r1", b"v2"), (b"r2", b"x"), (b"r2", None)])
    got = consume_all(kafka_bootstrap, topic, expected=4)
    assert [(m.key(), m.value()) for m in got] == [
        (b"r1", b"v1"),
        (b"r1", b"v2"),
        (b"r2", b"x"),
        (b"r2", None),
    ]


def test_transactions_with_consumer_offsets(kafka_bootstrap: str, topic_factory: TopicFactory) -> None:
    source = topic_factory("source")
    sink = topic_factory("sink")
    produce(kafka_bootstrap, source, [(None, f"in-{i}".encode()) for i in range(5)])
    group = unique_name("tx-group")
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([source])
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"tx-{uuid.uuid4()}"})
    producer.init_transactions(30)
    seen: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(seen) < 5 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        seen.append(msg.value())
    assert len(seen) == 5
    producer.begin_transaction()
    for value in seen:
        producer.produce(sink, value=value.replace(b"in", b"out"))
    producer.send_offsets_to_transaction(
        consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 30
    )
    producer.commit_transaction(30)
    # An aborted transaction is invisible to read_committed readers.
    producer.begin_transaction()
    producer.produce(sink, value=b"aborted")
    producer.abort_transaction(30)
    committed = consumer.committed([TopicPartition(source, 0)], timeout=10)
    consumer.close()
    assert committed[0].offset == 5
    out = consume_all(kafka_bootstrap, sink)
    assert sorted(m.value() for m in out) == [f"out-{i}".encode() for i in range(5)]


def test_each_test_gets_its_own_topics(topic_factory: TopicFactory) -> None:
    first = topic_factory("same")
    second = topic_factory("same")
    assert first != second
    assert first.startswith("test_each_test_gets_its_own_topics.same-")
