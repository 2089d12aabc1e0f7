"""The Schema Registry of a test session.

Order of choice: ``SCHEMA_REGISTRY_URL`` if set (an existing registry with the Confluent REST API,
used as it is); else the Apicurio Registry of ``deploy/local/registry/registry.sh``, started for the
session on a free port of 127.0.0.1 with its storage in the session's Kafka broker, under topics of
its own (``_schemas-<random>-journal`` ...), then stopped and its topics deleted. (Were a Docker
engine available, a registry container from testcontainers would be a third choice; none answers on
the machines this project runs on, so that path is not built.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from consumer.devtools.process import free_port

ROOT = Path(__file__).resolve().parents[2]
REGISTRY_SCRIPT = ROOT / "deploy" / "local" / "registry" / "registry.sh"
#: Suffixes of the topics the registry creates after its topic prefix.
REGISTRY_TOPIC_SUFFIXES = ("-journal", "-snapshots", "-events")


class LocalRegistry:
    """The registry process started by ``deploy/local/registry/registry.sh`` for this session."""

    def __init__(self, port: int, kafka_bootstrap: str, topic: str) -> None:
        self.port = port
        self.kafka_bootstrap = kafka_bootstrap
        self.topic = topic
        self.env = {
            **os.environ,
            "REGISTRY_PORT": str(port),
            "REGISTRY_KAFKA": kafka_bootstrap,
            "REGISTRY_TOPIC": topic,
        }
        self.started_here = False
        self.start_output = ""

    def _run(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(REGISTRY_SCRIPT), command], env=self.env, capture_output=True, text=True, check=False
        )

    @property
    def url(self) -> str:
        return self._run("url").stdout.strip()

    @property
    def topics(self) -> list[str]:
        return [self.topic + suffix for suffix in REGISTRY_TOPIC_SUFFIXES]

    def log_path(self) -> Path:
        return Path(self._run("log").stdout.strip())

    def is_running(self) -> bool:
        return self._run("status").returncode == 0

    def start(self) -> None:
        already = self.is_running()
        result = self._run("up")
        self.start_output = result.stderr.strip()
        if result.returncode != 0:
            raise RuntimeError(f"the local schema registry did not start:\n{result.stderr}")
        self.started_here = self.started_here or not already

    def stop(self) -> None:
        self._run("down")

    def delete_topics(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.kafka_bootstrap})
        futures = admin.delete_topics(self.topics, operation_timeout=30)
        for future in futures.values():
            with contextlib.suppress(KafkaException):  # -events exists only once an event was sent
                future.result(timeout=30)

    def tail_log(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path().read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no registry log)"


@contextlib.contextmanager
def registry_session(kafka_bootstrap: str) -> Iterator[tuple[str, LocalRegistry | None]]:
    """Yields (the registry's Confluent-compatible URL, the local registry if this session runs one)."""
    given = os.environ.get("SCHEMA_REGISTRY_URL")
    if given:
        yield given, None
        return
    registry = LocalRegistry(free_port(), kafka_bootstrap, f"_schemas-{uuid.uuid4().hex[:12]}")
    registry.start()
    try:
        yield registry.url, registry
    finally:
        if registry.started_here:
            state = registry.log_path().parent
            registry.stop()
            registry.delete_topics()
            shutil.rmtree(state, ignore_errors=True)
