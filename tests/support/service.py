"""Running ``eventmail`` services as real processes in tests, each deployment on its own topics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.kafka import TopicFactory

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Deployment:
    """The topics and settings of one eventmail deployment under test."""

    bootstrap: str
    topics: dict[str, str]
    group_id: str
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, bootstrap: str, topic_factory: TopicFactory, partitions: int = 3) -> Deployment:
        topics = {
            "lms": topic_factory("lms", partitions),
            "call_logic": topic_factory("calllogic", partitions),
            "rules": topic_factory("rules", 1, compacted=True),
            "outcomes": topic_factory("outcomes", partitions),
            "alerts": topic_factory("alerts", 1),
            "dlq": topic_factory("dlq", 1),
            "retry": topic_factory("retry", partitions),
        }
        return cls(bootstrap, topics, group_id=f"g-{topics['lms'].rsplit('-', 1)[-1]}")

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "EVENTMAIL_GROUP_ID": self.group_id,
            "EVENTMAIL_LOG_FORMAT": "json",
            "EVENTMAIL_LOG_LEVEL": "INFO",
        }
        env.update({f"EVENTMAIL_TOPICS__{name.upper()}": topic for name, topic in self.topics.items()})
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def with_esp(self, connections: dict[str, dict[str, Any]]) -> Deployment:
        self.extra_env["EVENTMAIL_ESP_CONNECTIONS"] = json.dumps(connections)
        return self


class ServiceProcess:
    """``eventmail <command>`` in a subprocess with its own HTTP port and a log file."""

    def __init__(self, command: str, env: dict[str, str], log_dir: Path, name: str | None = None) -> None:
        self.command = command
        self.port = free_port()
        self.name = name or command
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("EVENTMAIL_")},
            **env,
            "EVENTMAIL_HTTP__PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
        }
        self.log_path = log_dir / f"{self.name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "consumer.cli.main", self.command],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=2) as response:  # noqa: S310
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                code, body = self.get("/readyz")
                if code == 200:
                    return
                last = body
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout}s ({last}):\n{self.tail()}")

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The sum of a metric's samples (matching the labels) from /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        _, body = self.get("/metrics")
        total = 0.0
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                    total += sample.value
        return total

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
