"""The topics a deployment needs, with the configuration the operations guide asks for, and checks of
an existing cluster against them (``eventmail topics create`` / ``eventmail topics check``).

| topic | partitions | configuration |
|---|---|---|
| rules | 1 | ``cleanup.policy=compact`` |
| outcomes | N | retention at least 31 days (``eventmail usage`` bills 30 days back) |
| retry | as the event topics | retention longer than the retry deadline (at least 7 days) |
| alerts, dlq | up to 3 | retention as an audit needs (the broker's default) |
| lms, call logic events | N | owned by the platform teams; created only when missing |

A topic that exists is never altered: ``check`` says what differs and the operator decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.cimpl import NewTopic

from consumer.errors import EventmailError
from consumer.settings import Settings

DAY_MS = 86_400_000
OUTCOMES_RETENTION_MS = 31 * DAY_MS
MIN_RETRY_RETENTION_MS = 7 * DAY_MS


class TopicAdminError(EventmailError):
    """The cluster could not be asked or changed."""


@dataclass(frozen=True)
class TopicSpec:
    role: str
    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)
    #: Owned by the platform teams: created only when missing, with no configuration of ours.
    platform_owned: bool = False


def retry_retention_ms(settings: Settings) -> int:
    return max(MIN_RETRY_RETENTION_MS, int(settings.pipeline.retry_deadline_seconds * 1000 * 2))


def planned_topics(settings: Settings, partitions: int, replication_factor: int) -> list[TopicSpec]:
    """Every topic of ``settings`` as ``topics create`` makes it."""
    insync = {"min.insync.replicas": str(min(2, max(1, replication_factor - 1)))}
    topics = settings.topics
    small = min(3, partitions)
    return [
        TopicSpec("lms", topics.lms, partitions, insync, platform_owned=True),
        TopicSpec("call_logic", topics.call_logic, partitions, insync, platform_owned=True),
        TopicSpec("rules", topics.rules, 1, {"cleanup.policy": "compact", **insync}),
        TopicSpec(
            "outcomes", topics.outcomes, partitions, {"retention.ms": str(OUTCOMES_RETENTION_MS), **insync}
        ),
        TopicSpec(
            "retry", topics.retry, partitions, {"retention.ms": str(retry_retention_ms(settings)), **insync}
        ),
        TopicSpec("alerts", topics.alerts, small, insync),
        TopicSpec("dlq", topics.dlq, small, insync),
    ]


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str]


def describe(admin: AdminClient, names: list[str], timeout: float = 15.0) -> dict[str, TopicState]:
    """The topics of ``names`` that exist, with their partition count, replication and configuration."""
    try:
        metadata = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise TopicAdminError(f"cannot reach Kafka: {exc}") from None
    present = [name for name in names if name in metadata and metadata[name].error is None]
    out: dict[str, TopicState] = {}
    if not present:
        return out
    futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, name) for name in present])
    configs: dict[str, dict[str, str]] = {}
    for resource, future in futures.items():
        try:
            entries = future.result(timeout=timeout)
        except KafkaException as exc:
            raise TopicAdminError(f"cannot describe topic {resource.name}: {exc}") from None
        configs[resource.name] = {key: str(entry.value) for key, entry in entries.items()}
    for name in present:
        partitions = metadata[name].partitions
        replication = min((len(p.replicas) for p in partitions.values()), default=0)
        out[name] = TopicState(name, len(partitions), replication, configs.get(name, {}))
    return out


def create_missing(
    admin: AdminClient, specs: list[TopicSpec], replication_factor: int, timeout: float = 30.0
) -> list[str]:
    """Create the topics of ``specs`` that do not exist; the names created."""
    existing = describe(admin, [spec.name for spec in specs])
    wanted = [spec for spec in specs if spec.name not in existing]
    if not wanted:
        return []
    new = [NewTopic(s.name, s.partitions, replication_factor, config=dict(s.config)) for s in wanted]
    futures = admin.create_topics(new, operation_timeout=timeout)
    failed: list[str] = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            failed.append(f"{name}: {exc.args[0].str() if exc.args else exc}")
    if failed:
        raise TopicAdminError("could not create " + "; ".join(failed))
    return [spec.name for spec in wanted]


def _retention(config: Mapping[str, str]) -> int | None:
    """retention.ms, None for unlimited."""
    value = int(config.get("retention.ms", "-1") or -1)
    return None if value < 0 else value


def check(settings: Settings, existing: Mapping[str, TopicState]) -> tuple[list[str], list[str]]:
    """(problems, warnings): one line per missing or misconfigured topic, and per topic that cannot
    survive the loss of a broker."""
    problems: list[str] = []
    warnings: list[str] = []
    for spec in planned_topics(settings, 1, 1):
        state = existing.get(spec.name)
        if state is None:
            problems.append(f"{spec.name} ({spec.role}): missing")
            continue
        problems.extend(
            f"{spec.name} ({spec.role}): {line}" for line in _misconfigured(settings, spec, state, existing)
        )
        insync = int(state.config.get("min.insync.replicas", "1") or 1)
        if state.replication_factor < 3 or insync < 2:
            warnings.append(
                f"{spec.name} ({spec.role}): replication factor {state.replication_factor},"
                f" min.insync.replicas {insync}: a broker loss can lose acknowledged records or stop"
                " writes (use 3 and 2)"
            )
    return problems, warnings


def _misconfigured(
    settings: Settings, spec: TopicSpec, state: TopicState, existing: Mapping[str, TopicState]
) -> list[str]:
    out: list[str] = []
    if spec.role == "rules":
        if "compact" not in state.config.get("cleanup.policy", "delete"):
            out.append(f"cleanup.policy={state.config.get('cleanup.policy', 'delete')}, needs compact")
        if state.partitions != 1:
            out.append(f"{state.partitions} partitions; the rules topic should have 1")
    elif spec.role == "outcomes":
        retention = _retention(state.config)
        if retention is not None and retention < OUTCOMES_RETENTION_MS:
            out.append(
                f"retention.ms={retention} ({retention / DAY_MS:.1f} days) is below 31 days: eventmail usage"
                " bills 30 days back"
            )
    elif spec.role == "retry":
        retention = _retention(state.config)
        deadline_ms = int(settings.pipeline.retry_deadline_seconds * 1000)
        if retention is not None and retention <= deadline_ms:
            out.append(f"retention.ms={retention} is not longer than the retry deadline ({deadline_ms} ms)")
        events = [
            existing[name].partitions
            for name in (settings.topics.lms, settings.topics.call_logic)
            if name in existing
        ]
        if events and state.partitions < max(events):
            out.append(f"{state.partitions} partitions, fewer than the event topics ({max(events)})")
    return out


def as_commands(specs: list[TopicSpec], replication_factor: int, bootstrap: str) -> list[str]:
    """The ``kafka-topics.sh`` commands that create ``specs`` (for ``--dry-run``)."""
    lines: list[str] = []
    for spec in specs:
        configs = "".join(f" --config {key}={value}" for key, value in spec.config.items())
        lines.append(
            f"kafka-topics.sh --bootstrap-server {bootstrap} --create --if-not-exists --topic {spec.name}"
            f" --partitions {spec.partitions} --replication-factor {replication_factor}{configs}"
        )
    return lines


def admin_client(settings: Settings) -> AdminClient:
    config: dict[str, Any] = settings.kafka_config()
    return AdminClient(config)
