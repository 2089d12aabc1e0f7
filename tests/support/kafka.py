"""The Kafka broker of a test session, and helpers to talk to it.

Order of choice: ``KAFKA_BOOTSTRAP_SERVERS`` if set; else testcontainers' ``KafkaContainer`` if a
Docker engine answers; else the local KRaft broker of ``deploy/local/kafka.sh`` on its own port
(``EVENTMAIL_TEST_KAFKA_PORT``, default 19092), started for the session and stopped after it.
The default test ports (19092, 19300, 19310..19315) lie below Linux's ephemeral range (32768 and up),
so no client connection of the session can hold one of them as its local port while a broker starts.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT = ROOT / "deploy" / "local" / "kafka.sh"
#: Default ports of the session's brokers: single, secured, and the first of a 3-node cluster
#: (which takes six from there). Each node also takes the next port for its controller.
SESSION_PORT, SECURE_PORT, CLUSTER_PORT = 19092, 19300, 19310


def docker_engine_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=2)
        return bool(client.ping())
    except Exception:
        return False


class LocalBroker:
    """The broker started by ``deploy/local/kafka.sh`` for this session."""

    def __init__(self, port: int) -> None:
        self.port = port
        # PYTHON: the readiness check needs confluent-kafka, i.e. this interpreter, not the first python3.
        self.env = {**os.environ, "KAFKA_PORT": str(port), "PYTHON": sys.executable}
        self.started_here = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_path(self) -> Path:
        out = subprocess.run([str(KAFKA_SCRIPT), "log"], env=self.env, capture_output=True, text=True)
        return Path(out.stdout.strip())

    def is_running(self) -> bool:
        return (
            subprocess.run([str(KAFKA_SCRIPT), "status"], env=self.env, capture_output=True).returncode == 0
        )

    def start(self) -> None:
        already = self.is_running()
        result = subprocess.run([str(KAFKA_SCRIPT), "up"], env=self.env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"local Kafka did not start:\n{result.stderr}\n{self.tail_log()}")
        self.started_here = self.started_here or not already

    def stop(self) -> None:
        subprocess.run([str(KAFKA_SCRIPT), "down"], env=self.env, capture_output=True, check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail_log(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path().read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no broker log)"


@contextlib.contextmanager
def kafka_session() -> Iterator[tuple[str, LocalBroker | None]]:
    """Yields (bootstrap servers, the local broker if this session runs one)."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given, None
        return
    if docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server(), None
        return
    broker = LocalBroker(int(os.environ.get("EVENTMAIL_TEST_KAFKA_PORT", str(SESSION_PORT))))
    broker.start()
    try:
        yield broker.bootstrap, broker
    finally:
        if broker.started_here:
            broker.stop()


def unique_name(prefix: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in prefix)[:100]
    return f"{safe}-{uuid.uuid4().hex[:10]}"


class TopicFactory:
    """Creates uniquely named topics and deletes them when the test ends."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.prefix = prefix
        self.created: list[str] = []

    def __call__(
        self,
        name: str = "t",
        partitions: int = 1,
        config: dict[str, str] | None = None,
        compacted: bool = False,
    ) -> str:
        topic = unique_name(f"{self.prefix}.{name}")
        settings = dict(config or {})
        if compacted:
            settings.setdefault("cleanup.policy", "compact")
        futures = self.admin.create_topics(
            [NewTopic(topic, partitions, 1, config=settings)], operation_timeout=30
        )
        futures[topic].result(timeout=30)
        self.created.append(topic)
        wait_for_topic(self.admin, topic, partitions)
        return topic

    def cleanup(self) -> None:
        if self.created:
            futures = self.admin.delete_topics(self.created, operation_timeout=30)
            for future in futures.values():
                with contextlib.suppress(KafkaException):
                    future.result(timeout=30)
            self.created.clear()


def wait_for_topic(admin: AdminClient, topic: str, partitions: int, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metadata = admin.list_topics(topic, timeout=5).topics.get(topic)
        if (
            metadata is not None
            and metadata.error is None
            and len(metadata.partitions) == partitions
            and all(p.leader >= 0 for p in metadata.partitions.values())
        ):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topic {topic} has no leaders after {timeout}s")


def produce(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes | str | None, bytes | str | None]],
    headers: list[tuple[str, bytes]] | None = None,
    partition: int | None = None,
    client_config: dict[str, Any] | None = None,
) -> None:
    """``client_config``: more librdkafka settings (a secured cluster's credentials)."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5, **(client_config or {})}
    )
    errors: list[Any] = []

    def report(err: Any, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    for key, value in records:
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": report}
        if headers:
            kwargs["headers"] = headers
        if partition is not None:
            kwargs["partition"] = partition
        producer.produce(topic, **kwargs)
        producer.poll(0)
    remaining = producer.flush(30)
    assert not errors, f"produce failed: {errors}"
    assert remaining == 0, f"{remaining} records not delivered"


def consume_all(
    bootstrap: str,
    topic: str,
    expected: int | None = None,
    timeout: float = 30.0,
    client_config: dict[str, Any] | None = None,
) -> list[Message]:
    """Every record of ``topic`` from the beginning: until ``expected`` arrived, or the end is reached."""
    import time

    consumer = Consumer(
        {
            **(client_config or {}),
            "bootstrap.servers": bootstrap,
            "group.id": unique_name("reader"),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    partitions = [TopicPartition(topic, p, 0) for p in metadata.partitions]
    consumer.assign(partitions)
    out: list[Message] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                if expected is None and len(at_end) == len(partitions):
                    break
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    continue
                raise KafkaException(msg.error())
            at_end.discard(msg.partition())
            out.append(msg)
            if expected is not None and len(out) >= expected:
                break
    finally:
        consumer.close()
    return out


class LocalCluster(LocalBroker):
    """A secured and/or 3-node cluster of ``deploy/local/kafka.sh`` (``KAFKA_SECURE``, ``KAFKA_BROKERS``).

    Secured: SASL_SSL with SCRAM-SHA-512, the CA file and one password file per user made by the
    script; ``client_config(user)`` is what a client of that user needs (the password read from its
    file, as a mounted Secret would be)."""

    def __init__(self, port: int, *, nodes: int = 1, secure: bool = False) -> None:
        super().__init__(port)
        self.nodes = nodes
        self.secure = secure
        self.env.update({"KAFKA_BROKERS": str(nodes), "KAFKA_SECURE": "1" if secure else "0"})

    def _script(self, *args: str) -> str:
        out = subprocess.run([str(KAFKA_SCRIPT), *args], env=self.env, capture_output=True, text=True)
        return out.stdout.strip()

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.node_port(i)}" for i in range(1, self.nodes + 1))

    def node_port(self, node: int) -> int:
        return self.port + 2 * (node - 1)

    @property
    def directory(self) -> Path:
        return Path(self._script("dir"))

    @property
    def ca_file(self) -> Path:
        return self.directory / "tls" / "ca.pem"

    def password_file(self, user: str) -> Path:
        return self.directory / "secrets" / user

    def client_config(self, user: str = "admin") -> dict[str, Any]:
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap}
        if self.secure:
            config.update(
                {
                    "security.protocol": "SASL_SSL",
                    "sasl.mechanisms": "SCRAM-SHA-512",
                    "ssl.ca.location": str(self.ca_file),
                    "sasl.username": user,
                    "sasl.password": self.password_file(user).read_text().strip(),
                }
            )
        return config

    def kill(self, node: int) -> None:
        """kill -9 one node; :meth:`start` brings it back."""
        result = subprocess.run(
            [str(KAFKA_SCRIPT), "kill", str(node)], env=self.env, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"could not kill node {node}: {result.stderr}")

    def tail_log(self, lines: int = 40, node: int = 1) -> str:
        try:
            path = Path(self._script("log", str(node)))
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no broker log)"


@contextlib.contextmanager
def local_cluster(port: int, *, nodes: int = 1, secure: bool = False) -> Iterator[LocalCluster]:
    """A cluster for the session, stopped after it when this session started it."""
    cluster = LocalCluster(port, nodes=nodes, secure=secure)
    cluster.start()
    try:
        yield cluster
    finally:
        if cluster.started_here:
            cluster.stop()


def create_topic(
    config: dict[str, Any],
    name: str,
    partitions: int = 1,
    replication: int = 1,
    topic_config: dict[str, str] | None = None,
) -> str:
    """Create ``name`` through ``config`` (e.g. a super user's) and wait for its leaders."""
    admin = AdminClient(config)
    futures = admin.create_topics(
        [NewTopic(name, partitions, replication, config=dict(topic_config or {}))], operation_timeout=30
    )
    futures[name].result(timeout=30)
    wait_for_topic(admin, name, partitions)
    return name
