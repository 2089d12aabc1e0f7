"""The session's real Kafka broker does what the service relies on: produce/consume, compaction,
transactions with consumer offsets, idempotent production."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from tests.support.kafka import (
    CLUSTER_PORT,
    KAFKA_SCRIPT,
    ROOT,
    SECURE_PORT,
    SESSION_PORT,
    TopicFactory,
    consume_all,
    produce,
    unique_name,
)

JARS = Path(os.environ.get("EVENTMAIL_CACHE", ROOT / ".cache")) / "kafka" / "jars"


def free_port_pair(start: int) -> int:
    """The first port from ``start`` that is free together with the next one (broker, controller)."""
    for port in range(start, start + 200, 2):
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no two free ports from {start}")


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


def _script_env(**extra: str) -> dict[str, str]:
    """A shell as a new user has it: no PYTHON, no virtualenv on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHON", "VIRTUAL_ENV"}}
    env["PATH"] = "/usr/bin:/bin"
    env.update(extra)
    return env


def test_script_finds_the_project_venv_for_its_readiness_check(kafka_bootstrap: str, tmp_path: Path) -> None:
    """``kafka.sh up`` from a shell without the virtualenv: the readiness check uses the project's
    .venv by itself (it used to wait 60 s and say "no answer" while the broker ran)."""
    port = free_port_pair(19320)
    env = _script_env(KAFKA_PORT=str(port), EVENTMAIL_CACHE=str(tmp_path / "cache"))
    # The jars are shared with the session's broker (no second download).
    (tmp_path / "cache" / "kafka").mkdir(parents=True)
    (tmp_path / "cache" / "kafka" / "jars").symlink_to(JARS)
    try:
        up = subprocess.run([str(KAFKA_SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=180)
        assert up.returncode == 0, up.stderr
        assert "kafka: up: 127.0.0.1:" in up.stderr
    finally:
        subprocess.run([str(KAFKA_SCRIPT), "down"], env=env, capture_output=True, timeout=60)


def test_script_says_what_is_missing_without_a_usable_python(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    env = _script_env(KAFKA_PORT="19329", PYTHON=str(fake), EVENTMAIL_CACHE=str(tmp_path / "cache"))
    started = time.monotonic()
    up = subprocess.run([str(KAFKA_SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=60)
    assert up.returncode == 1
    assert time.monotonic() - started < 10  # before any broker starts, not after a 60 s wait
    assert f"needs a Python with confluent-kafka; {fake} has none" in up.stderr
    assert "make install" in up.stderr


def test_the_default_test_ports_lie_below_the_ephemeral_range() -> None:
    """A broker port inside the ephemeral range can be held as the local port of any client
    connection of the session (a 3-node cluster failed to start in CI with "Address already in
    use" on 39310 for the whole of its retries); below it, only a listener can take one."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    highest = max(SESSION_PORT + 1, SECURE_PORT + 1, CLUSTER_PORT + 5, 19320 + 200, 19329 + 1)
    assert highest < low, f"test ports up to {highest} reach the ephemeral range from {low}"
