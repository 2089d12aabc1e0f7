"""Running ``eventmail`` services as real processes in tests, each deployment on its own topics."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consumer.devtools.process import ServiceProcess as _ServiceProcess
from tests.support.kafka import TopicFactory

ROOT = Path(__file__).resolve().parents[2]

LogRecord = dict[str, Any]


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


class ServiceProcess(_ServiceProcess):
    """``eventmail <command>`` in a subprocess with its own HTTP port and a log file, run from the
    repository's root; with waits on its metrics and its (JSON) log lines."""

    def __init__(self, command: str, env: dict[str, str], log_dir: Path, name: str | None = None) -> None:
        super().__init__(command, env, log_dir, name, cwd=ROOT)

    def wait_metric(
        self,
        name: str,
        condition: Callable[[float], bool],
        labels: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> float:
        """The value of :meth:`metric` once ``condition`` holds for it; TimeoutError (with the last
        value and the end of the log) when it does not within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last: float | str = "no answer"
        while True:
            self.check_alive()
            try:
                value = self.metric(name, labels)
            except OSError as exc:
                last = str(exc)
            else:
                if condition(value):
                    return value
                last = value
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.name}: {name}{labels or ''} last {last} after {timeout}s:\n{self.tail()}"
                )
            time.sleep(0.1)

    def log_records(self) -> list[LogRecord]:
        """The JSON log lines written so far (other lines, e.g. a traceback's, are left out)."""
        records: list[LogRecord] = []
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return records
        for line in text.splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue  # the last line may still be being written
        return records

    def logged(self, msg: str, **fields: Any) -> list[LogRecord]:
        """The log records with this message and these fields."""
        return [
            r
            for r in self.log_records()
            if r.get("msg") == msg and all(r.get(k) == v for k, v in fields.items())
        ]

    def wait_logged(self, msg: str, count: int = 1, timeout: float = 60.0, **fields: Any) -> list[LogRecord]:
        """The log records with this message and fields, once there are at least ``count``."""
        return self.wait_log(
            lambda r: r.get("msg") == msg and all(r.get(k) == v for k, v in fields.items()),
            f"log lines {msg!r} {fields}",
            count,
            timeout,
        )

    def wait_log(
        self, predicate: Callable[[LogRecord], bool], what: str, count: int = 1, timeout: float = 60.0
    ) -> list[LogRecord]:
        """The log records ``predicate`` holds for, once there are at least ``count``."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.log_records() if predicate(r)]
            if len(found) >= count:
                return found
            self.check_alive()
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.name}: {len(found)} of {count} {what} after {timeout}s:\n{self.tail()}"
                )
            time.sleep(0.1)
