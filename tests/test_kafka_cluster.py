"""eventmail on a 3-broker KRaft cluster (RF 3, min.insync.replicas=2): the broker leading the event,
outcome and retry partitions is killed with -9 while mail flows, and restarted. Nothing is lost; a
mail is sent twice only for events in flight when the broker died (the outcome producer retries on
the new leader; copies need a crash of eventmail, not of a broker)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from consumer.events.codec import encode_json
from consumer.outcomes.codec import decode_outcome
from consumer.outcomes.model import OutcomeStatus
from tests.clirun import run_cli
from tests.factories import make_event
from tests.pipeline_support import esp, rule_doc
from tests.support.kafka import LocalCluster, consume_all, produce, unique_name, wait_for_topic
from tests.support.kafka_fixtures import kafka_cluster  # noqa: F401 (a fixture)
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory

LEADER = 2  # the node that leads every partition of the deployment's topics at the start


@pytest.fixture
def cluster_deployment(
    kafka_cluster: LocalCluster,  # noqa: F811
    request: pytest.FixtureRequest,
) -> Iterator[Deployment]:
    admin = AdminClient({"bootstrap.servers": kafka_cluster.bootstrap})
    names = {
        key: unique_name(f"{request.node.name[:30]}.{key}")
        for key in ("lms", "call_logic", "rules", "outcomes", "alerts", "dlq", "retry")
    }
    others = [n for n in (1, 2, 3) if n != LEADER]
    topics = [
        NewTopic(
            name,
            1,
            replica_assignment=[[LEADER, *others]],
            config={"cleanup.policy": "compact"} if key == "rules" else {},
        )
        for key, name in names.items()
    ]
    for future in admin.create_topics(topics, operation_timeout=30).values():
        future.result(timeout=30)
    for name in names.values():
        wait_for_topic(admin, name, 1)
    yield Deployment(kafka_cluster.bootstrap, names, group_id=unique_name("g"))
    admin.delete_topics(list(names.values()), operation_timeout=30)


def test_topics_get_replication_3_and_min_insync_2(
    kafka_cluster: LocalCluster,  # noqa: F811
) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_cluster.bootstrap})
    topic = unique_name("defaults")
    admin.create_topics([NewTopic(topic, 1)], operation_timeout=30)[topic].result(timeout=30)
    wait_for_topic(admin, topic, 1)
    metadata = admin.list_topics(topic, timeout=10).topics[topic]
    assert len(metadata.partitions[0].replicas) == 3
    resource = ConfigResource(ResourceType.TOPIC, topic)
    config = admin.describe_configs([resource])[resource].result(timeout=10)
    assert config["min.insync.replicas"].value == "2"
    admin.delete_topics([topic], operation_timeout=30)


def test_killing_the_leading_broker_while_mail_flows_loses_nothing(
    kafka_cluster: LocalCluster,  # noqa: F811
    cluster_deployment: Deployment,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
) -> None:
    _failover(kafka_cluster, cluster_deployment, smtp_server_factory, tmp_path, total=120, kills=1)


@pytest.mark.slow
def test_killing_two_brokers_in_turn_while_mail_flows_loses_nothing(
    kafka_cluster: LocalCluster,  # noqa: F811
    cluster_deployment: Deployment,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
) -> None:
    """The leader, then (once it is back in sync) the broker that took over: two leader elections."""
    _failover(kafka_cluster, cluster_deployment, smtp_server_factory, tmp_path, total=600, kills=2)


def _failover(
    cluster: LocalCluster,
    deployment: Deployment,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
    total: int,
    kills: int,
) -> None:
    """``total`` mails flow while the broker leading the outcome partition is killed ``kills`` times
    in turn (each restarted and back in sync before the next)."""
    server = smtp_server_factory("plain")
    deployment.extra_env["EVENTMAIL_ESP_CONNECTIONS"] = json.dumps({"default": esp(server)})
    applied = run_cli(["rules", "apply", _rules_file(tmp_path)], deployment.env(EVENTMAIL_LOG_LEVEL="ERROR"))
    assert applied.code == 0, applied.err
    batch = 10
    events = [make_event(lead_id=f"F{i}") for i in range(total)]
    service = ServiceProcess("run", deployment.env(), tmp_path, name="cluster-run").start()
    published = threading.Event()
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            for start in range(0, total, batch):
                chunk = events[start : start + batch]
                produce(
                    deployment.bootstrap,
                    deployment.topics["lms"],
                    [(e.event_id.encode(), encode_json(e)) for e in chunk],
                    client_config={"acks": "all", "message.timeout.ms": 60000},
                )
                time.sleep(0.25)  # a steady flow, not one burst (pacing, not synchronisation)
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        finally:
            published.set()

    kill_times: list[float] = []
    try:
        service.wait_ready(timeout=90)
        feeder = threading.Thread(target=publish, name="feeder", daemon=True)
        feeder.start()
        step = total // (kills + 1)
        for n in range(1, kills + 1):
            server.wait_for(step * n - step // 2, timeout=120)
            node = _leader(cluster, deployment.topics["outcomes"])
            assert n > 1 or node == LEADER
            kill_times.append(time.time())
            cluster.kill(node)
            server.wait_for(step * n, timeout=120)  # mail goes on while the broker is down
            cluster.start()  # the killed broker comes back and catches up
            _wait_in_sync(cluster, list(deployment.topics.values()))
        assert published.wait(300)
        assert not errors, errors
        server.wait_for(total, timeout=180)
        outcomes = [
            decode_outcome(m.value() or b"")
            for m in consume_all(
                deployment.bootstrap, deployment.topics["outcomes"], expected=total, timeout=120
            )
        ]
        assert service.terminate() == 0
    finally:
        service.stop()
    # The lag is gone: the group committed every event.
    reader = Consumer({"bootstrap.servers": deployment.bootstrap, "group.id": deployment.group_id})
    try:
        committed = reader.committed([TopicPartition(deployment.topics["lms"], 0)], timeout=30)
    finally:
        reader.close()
    assert committed[0].offset == total
    subjects = Counter(m.subject for m in server.messages)
    assert set(subjects) == {f"Lead F{i} sold for 10.5" for i in range(total)}
    copies = sum(n - 1 for n in subjects.values())
    sent = Counter(o.source.offset for o in outcomes if o.status is OutcomeStatus.SENT)
    assert len(sent) == total
    times = sorted(m.received_at for m in server.messages)
    stalls = []
    for killed_at in kill_times:
        after = [t for t in times if t >= killed_at]
        gaps = [b - a for a, b in zip([killed_at, *after], after, strict=False)]
        stalls.append(max(gaps) if gaps else 0.0)
    print(
        f"failover: {total} mails, {kills} broker kill(s), {copies} copies, "
        f"longest pause after each kill {', '.join(f'{s:.1f}s' for s in stalls)}"
    )
    assert copies <= 20 * kills  # only events in flight at a kill
    # The controller fences a dead broker after broker.session.timeout.ms (6 s); a group or transaction
    # coordinator on it moves then too, and the clients reconnect with up to 10 s of backoff: well
    # under 45 s even on a busy machine. A hang would be minutes.
    assert max(stalls) < 45


def _leader(cluster: LocalCluster, topic: str) -> int:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    return int(admin.list_topics(topic, timeout=10).topics[topic].partitions[0].leader)


def _wait_in_sync(cluster: LocalCluster, topics: list[str], timeout: float = 120.0) -> None:
    """Every partition of ``topics`` has its three replicas in sync again."""
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=10).topics
        if all(
            name in metadata and all(len(p.isrs) == 3 for p in metadata[name].partitions.values())
            for name in topics
        ):
            return
        time.sleep(0.5)
    raise TimeoutError(f"replicas not back in sync within {timeout}s")


def _rules_file(tmp_path: Path) -> str:
    import yaml

    path = tmp_path / "rules.yaml"
    path.write_text(
        yaml.safe_dump([rule_doc("r-failover", action={"subject": "Lead {{ lead_id }} sold for 10.5"})])
    )
    return str(path)
