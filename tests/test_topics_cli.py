"""``eventmail topics create`` and ``topics check`` against the real broker."""

from __future__ import annotations

from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource

from tests.clirun import run_cli
from tests.support.kafka import TopicFactory, unique_name

ROLES = ("lms", "call_logic", "rules", "outcomes", "retry", "alerts", "dlq")


def names_env(kafka_bootstrap: str) -> dict[str, str]:
    env = {"EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap}
    for role in ROLES:
        env[f"EVENTMAIL_TOPICS__{role.upper()}"] = unique_name(f"topics-cli.{role}")
    return env


def config_of(admin: AdminClient, topic: str) -> dict[str, str]:
    future = next(iter(admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()))
    return {key: str(entry.value) for key, entry in future.result(timeout=30).items()}


def test_create_makes_every_topic_as_the_guide_asks_and_check_passes(kafka_bootstrap: str) -> None:
    env = names_env(kafka_bootstrap)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created = [env[f"EVENTMAIL_TOPICS__{role.upper()}"] for role in ROLES]
    try:
        dry = run_cli(
            ["topics", "create", "--dry-run", "--replication-factor", "1", "--partitions", "4"], env
        )
        assert dry.code == 0, dry.err
        rules_line = next(line for line in dry.out.splitlines() if env["EVENTMAIL_TOPICS__RULES"] in line)
        assert rules_line.endswith(
            "--partitions 1 --replication-factor 1 --config cleanup.policy=compact"
            " --config min.insync.replicas=1"
        )
        assert admin.list_topics(timeout=10).topics.keys().isdisjoint(created)  # dry run created nothing

        result = run_cli(["topics", "create", "--replication-factor", "1", "--partitions", "4"], env)
        assert result.code == 0, result.err
        assert result.out.count("created ") == len(ROLES)
        metadata = admin.list_topics(timeout=10).topics
        partitions = {
            role: len(metadata[env[f"EVENTMAIL_TOPICS__{role.upper()}"]].partitions) for role in ROLES
        }
        assert partitions == {
            "lms": 4,
            "call_logic": 4,
            "rules": 1,
            "outcomes": 4,
            "retry": 4,
            "alerts": 3,
            "dlq": 3,
        }
        assert config_of(admin, env["EVENTMAIL_TOPICS__RULES"])["cleanup.policy"] == "compact"
        assert config_of(admin, env["EVENTMAIL_TOPICS__OUTCOMES"])["retention.ms"] == str(31 * 86_400_000)
        assert int(config_of(admin, env["EVENTMAIL_TOPICS__RETRY"])["retention.ms"]) >= 7 * 86_400_000

        again = run_cli(["topics", "create", "--replication-factor", "1"], env)
        assert again.code == 0
        assert again.out.count("exists ") == len(ROLES)

        checked = run_cli(["topics", "check"], env)
        assert checked.code == 0, checked.err
        assert checked.out.strip() == f"ok: {len(ROLES)} topics as eventmail needs them"
        # One broker: every topic is warned about, none is a problem.
        warnings = [line for line in checked.err.splitlines() if line.startswith("eventmail: warning: ")]
        assert len(warnings) == len(ROLES)
        assert "replication factor 1, min.insync.replicas 1: a broker loss" in warnings[0]
    finally:
        for future in admin.delete_topics(created, operation_timeout=30).values():
            future.exception(timeout=30)


def test_check_names_each_missing_or_misconfigured_topic(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    env = names_env(kafka_bootstrap)
    env["EVENTMAIL_TOPICS__LMS"] = topic_factory("lms", partitions=4)
    env["EVENTMAIL_TOPICS__CALL_LOGIC"] = topic_factory("cl", partitions=2)
    env["EVENTMAIL_TOPICS__RULES"] = topic_factory("rules")  # not compacted
    env["EVENTMAIL_TOPICS__OUTCOMES"] = topic_factory("outcomes", config={"retention.ms": str(86_400_000)})
    env["EVENTMAIL_TOPICS__RETRY"] = topic_factory("retry", partitions=2)
    env["EVENTMAIL_TOPICS__ALERTS"] = topic_factory("alerts")
    result = run_cli(["topics", "check"], env)
    assert result.code == 1
    problems = [line for line in result.err.splitlines() if not line.startswith("eventmail:")]
    assert problems == [
        f"{env['EVENTMAIL_TOPICS__RULES']} (rules): cleanup.policy=delete, needs compact",
        f"{env['EVENTMAIL_TOPICS__OUTCOMES']} (outcomes): retention.ms=86400000 (1.0 days) is below 31 days:"
        " eventmail usage bills 30 days back",
        f"{env['EVENTMAIL_TOPICS__RETRY']} (retry): 2 partitions, fewer than the event topics (4)",
        f"{env['EVENTMAIL_TOPICS__DLQ']} (dlq): missing",
    ]
    assert result.err.splitlines()[-1] == "eventmail: 4 topic problem(s)"
