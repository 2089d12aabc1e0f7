"""A replica kept out of its consumer group while the broker answers: ``/healthz`` says it is stuck,
the replica replaces its consumer, and once the group lets it in it consumes again by itself.

The soak found a replica that, after a broker restart, stayed without a group coordinator for good
(librdkafka dropped the restarted broker from its list while it was still the cached coordinator):
no partitions, no mail, ``/readyz`` 503 and ``/healthz`` 200, so nothing ever restarted it. That
race cannot be forced on demand; the test keeps the replica out of the group the way a real broker
does it on demand: another member of the group speaks only the ``range`` assignor, so the broker
refuses the replica's joins (``INCONSISTENT_GROUP_PROTOCOL``) while answering everything else.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from tests.factories import make_event
from tests.pipeline_support import apply_rules, esp_env, publish, rule_doc
from tests.support.kafka import LocalBroker, TopicFactory
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory

#: The bound the test gives the replica (the default is minutes).
STUCK_SECONDS = "4"
#: How long the outage test watches /healthz with the broker away: well past the bound.
OUTAGE_WATCH_SECONDS = 15.0


class GroupBlocker:
    """A member of the deployment's group that only speaks the ``range`` assignor, polled in a thread."""

    def __init__(self, deployment: Deployment, group: str | None = None, topic: str = "lms") -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": deployment.bootstrap,
                "group.id": group or deployment.group_id,
                "partition.assignment.strategy": "range",
                "enable.auto.commit": False,
            }
        )
        self.assigned = threading.Event()
        self.stop = threading.Event()
        self.consumer.subscribe([deployment.topics[topic]], on_assign=self._on_assign)
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned.set()

    def _poll(self) -> None:
        while not self.stop.is_set():
            self.consumer.poll(0.1)

    def leave(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.consumer.close()


def _health(service: ServiceProcess) -> tuple[int, dict[str, object]]:
    code, body = service.get("/healthz")
    return code, json.loads(body)


def _wait_health(service: ServiceProcess, want: int, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    last: tuple[int, dict[str, object]] | str = "no answer"
    while time.monotonic() < deadline:
        service.check_alive()
        try:
            last = _health(service)
        except OSError as exc:
            last = str(exc)
        else:
            if last[0] == want:
                return last[1]
        time.sleep(0.2)
    raise AssertionError(f"/healthz not {want} after {timeout}s (last {last}):\n{service.tail()}")


def test_replica_out_of_its_group_fails_liveness_and_rejoins_by_itself(
    kafka_bootstrap: str, topic_factory: TopicFactory, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    deployment = Deployment.create(kafka_bootstrap, topic_factory)
    server = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(deployment, tmp_path, rule_doc("r-1", action={"subject": "{{ lead_id }}"}))
    blocker = GroupBlocker(deployment)
    assert blocker.assigned.wait(60), "the blocking member never joined"
    service = ServiceProcess(
        "run", deployment.env(EVENTMAIL_KAFKA__GROUP_STUCK_SECONDS=STUCK_SECONDS), tmp_path
    ).start()
    left = False
    try:
        # Out of the group past the bound while the broker answers: not alive (Kubernetes restarts it).
        details = _wait_health(service, 503, timeout=90)
        assert details["group_stuck"] is True
        assert details["loop"] is True  # the loop runs: only the group membership is missing
        code, _ = service.get("/readyz")
        assert code == 503
        # The replica tries a new consumer of its own accord, while the group still refuses it.
        service.wait_logged(
            "not a member of the consumer group while the brokers answer: replacing the consumer",
            timeout=60,
        )
        blocker.leave()
        left = True
        # The group lets it in: it joins by itself, is alive and ready again, and consumes.
        details = _wait_health(service, 200, timeout=90)
        assert details["group_stuck"] is False
        service.wait_ready(timeout=90)
        publish(deployment, [make_event(lead_id="L-back")])
        server.wait_for(1, timeout=60)
        assert "L-back" in str(server.messages[0].message["Subject"])
        assert service.terminate() == 0
    finally:
        if not left:
            blocker.leave()
        service.stop()


def test_a_broker_outage_longer_than_the_bound_keeps_the_replica_alive(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    local_broker: LocalBroker,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
) -> None:
    """Out of the group because the broker is away is an outage, not a stuck replica: liveness stays
    up (a restart would not help and Kubernetes would restart-loop it), readiness goes down."""
    deployment = Deployment.create(kafka_bootstrap, topic_factory)
    server = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(deployment, tmp_path, rule_doc("r-1", action={"subject": "{{ lead_id }}"}))
    service = ServiceProcess(
        "run", deployment.env(EVENTMAIL_KAFKA__GROUP_STUCK_SECONDS=STUCK_SECONDS), tmp_path
    ).start()
    try:
        service.wait_ready(timeout=90)
        local_broker.stop()
        try:
            watched_until = time.monotonic() + OUTAGE_WATCH_SECONDS
            out_of_group = 0.0
            while time.monotonic() < watched_until:  # every answer while the broker is away
                code, details = _health(service)
                assert code == 200, f"not alive during a broker outage: {details}\n{service.tail()}"
                out_of_group = max(out_of_group, float(str(details["out_of_group_seconds"])))
                time.sleep(0.5)
            assert out_of_group > float(STUCK_SECONDS), "the outage did not outlast the bound"
            assert service.get("/readyz")[0] == 503
        finally:
            local_broker.start()
        service.wait_ready(timeout=120)
        publish(deployment, [make_event(lead_id="L-after")])
        server.wait_for(1, timeout=60)
        assert service.terminate() == 0
    finally:
        service.stop()


def test_aggregator_out_of_its_group_fails_liveness_until_it_is_let_in(
    kafka_bootstrap: str, topic_factory: TopicFactory, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    """``eventmail aggregate`` has a group consumer of its own: the same state fails its /healthz (a
    restart rejoins; its state is rebuilt at every start), and it becomes healthy and ready once the
    group lets it in."""
    deployment = Deployment.create(kafka_bootstrap, topic_factory)
    server = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(deployment, tmp_path, rule_doc("r-1"))
    blocker = GroupBlocker(deployment, group=f"{deployment.group_id}-aggregate", topic="outcomes")
    assert blocker.assigned.wait(60), "the blocking member never joined"
    service = ServiceProcess(
        "aggregate", deployment.env(EVENTMAIL_KAFKA__GROUP_STUCK_SECONDS=STUCK_SECONDS), tmp_path
    ).start()
    left = False
    try:
        details = _wait_health(service, 503, timeout=90)
        assert details["group_stuck"] is True
        assert details["loop"] is True
        blocker.leave()
        left = True
        details = _wait_health(service, 200, timeout=90)
        assert details["group_stuck"] is False
        service.wait_ready(timeout=90)
        assert service.terminate() == 0
    finally:
        if not left:
            blocker.leave()
        service.stop()
