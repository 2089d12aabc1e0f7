"""Running ``eventmail`` services as real processes in tests, each deployment on its own topics."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consumer.devtools.process import ServiceProcess as _ServiceProcess
from tests.support.kafka import TopicFactory

ROOT = Path(__file__).resolve().parents[2]


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
    repository's root."""

    def __init__(self, command: str, env: dict[str, str], log_dir: Path, name: str | None = None) -> None:
        super().__init__(command, env, log_dir, name, cwd=ROOT)
