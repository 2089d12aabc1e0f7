"""Paths of ``eventmail run`` that only a failing part reaches, on real parts: a retry whose rule went
away, a retry deadline that passes, and a Schema Registry outage. Each test counts at the SMTP
server, on the outcome topic and in the committed offsets."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from consumer.events.codec import encode_json, encode_wire
from consumer.events.registry import register_event_schema, value_subject
from consumer.events.triggers import Platform
from consumer.outcomes.model import Outcome, OutcomeStatus
from tests.clirun import run_cli
from tests.factories import make_event
from tests.pipeline_support import apply_rules, esp_env, outcomes, publish, rule_doc, wait_outcomes
from tests.support.kafka import TopicFactory, consume_all, produce
from tests.support.registry_fixtures import RegistryEndpoint
from tests.support.registry_proxy import RegistryProxy
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory, SMTPTestServer

FAST = {
    "EVENTMAIL_PIPELINE__COMMIT_INTERVAL_SECONDS": "0.2",
    "EVENTMAIL_PIPELINE__DRAIN_TIMEOUT_SECONDS": "10",
}
#: Every delivery attempt is one SMTP transaction, and each transient failure goes to the retry topic.
ONE_TRY_EACH = {
    "EVENTMAIL_SMTP__IN_PLACE_RETRIES": "0",
    "EVENTMAIL_SMTP__CIRCUIT_FAILURES": "1000",  # the circuit stays closed: every attempt reaches the server
}


@pytest.fixture
def deployment(kafka_bootstrap: str, topic_factory: TopicFactory) -> Deployment:
    return Deployment.create(kafka_bootstrap, topic_factory)


@pytest.fixture
def busy_server(smtp_server_factory: SMTPServerFactory) -> SMTPTestServer:
    """Answers 451 (try again later) to every mail."""
    return smtp_server_factory("flaky", fail_code=451, fail_times=None)


def _of(got: list[Outcome], event_id: str, rule_id: str) -> list[Outcome]:
    return [o for o in got if o.event_id == event_id and o.rule_id == rule_id]


def _committed(deployment: Deployment, topic: str, partition: int) -> int:
    """The group's committed offset of one partition (-1001: none)."""
    reader = Consumer({"bootstrap.servers": deployment.bootstrap, "group.id": deployment.group_id})
    try:
        (listed,) = reader.committed([TopicPartition(topic, partition)], timeout=30)
    finally:
        reader.close()
    return int(listed.offset)


def test_a_retry_whose_rule_was_deleted_or_disabled_meanwhile_is_a_failed_outcome(
    deployment: Deployment, busy_server: SMTPTestServer, tmp_path: Path
) -> None:
    deployment.extra_env.update(esp_env(deployment, {"default": busy_server}))
    apply_rules(deployment, tmp_path, rule_doc("r-gone"), rule_doc("r-off"))
    env = deployment.env(**FAST, **ONE_TRY_EACH, EVENTMAIL_PIPELINE__RETRY_BASE_SECONDS="4")
    service = ServiceProcess("run", env, tmp_path).start()
    event = make_event(lead_id="GONE")
    try:
        service.wait_ready()
        publish(deployment, [event])
        wait_outcomes(
            deployment,
            lambda got: all(
                any(o.status is OutcomeStatus.RETRYING for o in _of(got, event.event_id, r))
                for r in ("r-gone", "r-off")
            ),
        )
        assert run_cli(["rules", "delete", "r-gone"], deployment.env()).code == 0
        apply_rules(deployment, tmp_path, rule_doc("r-off", enabled=False))
        service.wait_metric("eventmail_rules_loaded", lambda n: n == 0)
        got = wait_outcomes(
            deployment,
            lambda got: all(
                any(o.status is OutcomeStatus.FAILED for o in _of(got, event.event_id, r))
                for r in ("r-gone", "r-off")
            ),
        )
        assert service.terminate() == 0
    finally:
        service.stop()
    assert busy_server.messages == []
    attempts = 0
    for rule_id in ("r-gone", "r-off"):
        mine = _of(got, event.event_id, rule_id)
        *retrying, failed = mine
        assert [o.status for o in retrying] == [OutcomeStatus.RETRYING] * len(retrying), mine
        assert failed.status is OutcomeStatus.FAILED
        # The attempts made before the rule went (one per retrying outcome), none after it.
        assert [o.attempts for o in retrying] == list(range(1, len(retrying) + 1))
        assert failed.attempts == len(retrying)
        assert failed.error is not None
        assert failed.error.startswith("rule deleted or disabled before retry; last error: "), failed.error
        assert "451" in failed.error
        attempts += failed.attempts
    assert busy_server.attempts == attempts  # every attempt counted reached the server, and no other
    retries = consume_all(deployment.bootstrap, deployment.topics["retry"])
    assert len(retries) == attempts  # one hand-off per transient failure


def test_a_retry_deadline_that_passes_gives_up_with_the_attempts_made(
    deployment: Deployment, busy_server: SMTPTestServer, tmp_path: Path
) -> None:
    deadline = 4.0
    deployment.extra_env.update(esp_env(deployment, {"default": busy_server}))
    apply_rules(deployment, tmp_path, rule_doc("r-1"))
    env = deployment.env(
        **FAST,
        **ONE_TRY_EACH,
        EVENTMAIL_PIPELINE__RETRY_BASE_SECONDS="0.5",
        EVENTMAIL_PIPELINE__RETRY_DEADLINE_SECONDS=str(deadline),
    )
    service = ServiceProcess("run", env, tmp_path).start()
    event = make_event(lead_id="LATE")
    try:
        service.wait_ready()
        publish(deployment, [event])
        got = wait_outcomes(
            deployment,
            lambda got: any(o.status is OutcomeStatus.FAILED for o in _of(got, event.event_id, "r-1")),
        )
        failed_metric = service.wait_metric(
            "eventmail_mails_failed_total", lambda n: n >= 1, {"connection": "default", "reason": "deadline"}
        )
        retried_metric = service.metric("eventmail_mails_retried_total", {"connection": "default"})
        assert service.metric("eventmail_mails_failed_total") == failed_metric == 1
        assert service.terminate() == 0
    finally:
        service.stop()
    *retrying, failed = _of(got, event.event_id, "r-1")
    assert len(retrying) >= 2, "the deadline passed before the retries were exercised"
    assert [o.status for o in retrying] == [OutcomeStatus.RETRYING] * len(retrying)
    assert [o.attempts for o in retrying] == list(range(1, len(retrying) + 1))
    made = len(retrying) + 1
    assert failed.status is OutcomeStatus.FAILED
    assert failed.attempts == made == busy_server.attempts
    assert failed.error is not None
    assert failed.error.startswith(f"gave up after {made} attempts: "), failed.error
    assert failed.smtp_code == 451
    assert retried_metric == len(retrying)
    # It gave up at the attempt after which the next one would be past the deadline, not later.
    span = (failed.created - retrying[0].created).total_seconds()
    assert span <= deadline + 2.0, span
    assert busy_server.messages == []


def test_a_registry_outage_stalls_the_partition_and_sends_nothing_to_the_dlq(
    deployment: Deployment,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
    schema_registry: RegistryEndpoint,
    registry_client: SchemaRegistryClient,
) -> None:
    """The registry goes away (its port refuses connections, as a registry that is down does) while
    Avro records of partition 0 wait for it, and comes back."""
    server = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(deployment, tmp_path, rule_doc("r-1"))
    lms = deployment.topics["lms"]
    schema_id = register_event_schema(registry_client, value_subject(lms), Platform.LMS)
    proxy = RegistryProxy(schema_registry.url)
    proxy.restore()
    env = deployment.env(**FAST, EVENTMAIL_SCHEMA_REGISTRY__URL=proxy.url)
    service = ServiceProcess("run", env, tmp_path).start()
    wire = [make_event(lead_id=f"W{i}") for i in range(3)]
    plain = make_event(lead_id="J0")
    try:
        service.wait_ready()
        proxy.cut()
        produce(
            deployment.bootstrap,
            lms,
            [(e.event_id.encode(), encode_wire(e, schema_id)) for e in wire],
            partition=0,
        )
        # JSON needs no registry: mail of another partition goes on meanwhile.
        produce(deployment.bootstrap, lms, [(plain.event_id.encode(), encode_json(plain))], partition=1)
        # The records were read and found waiting for the registry (the warning's wording may vary).
        service.wait_log(
            lambda r: (
                r.get("level") == "warning"
                and str(r.get("msg", "")).startswith("schema registry unavailable")
            ),
            "warnings of the registry being unavailable",
        )
        server.wait_for(1, timeout=60)
        # Stalled, not failed: nothing sent, nothing dead-lettered, nothing committed on partition 0.
        assert [m.subject for m in server.messages] == ["Lead J0 sold for 12.5"]
        assert consume_all(deployment.bootstrap, deployment.topics["dlq"]) == []
        assert service.metric("eventmail_dlq_records_total") == 0
        assert service.metric("eventmail_decode_failures_total") == 0
        assert _committed(deployment, lms, 0) < 1
        assert service.proc is not None
        assert service.proc.poll() is None
        proxy.restore()
        server.wait_for(1 + len(wire), timeout=120)  # the stalled records go on by themselves
        assert service.terminate() == 0
    finally:
        service.stop()
        proxy.cut()
    assert sorted(m.subject or "" for m in server.messages) == sorted(
        f"Lead {e.lead_id} sold for 12.5" for e in [*wire, plain]
    )
    assert len({m.message_id for m in server.messages}) == len(server.messages)
    sent = [o.event_id for o in outcomes(deployment) if o.status is OutcomeStatus.SENT]
    assert sorted(sent) == sorted(e.event_id for e in [*wire, plain])
    assert consume_all(deployment.bootstrap, deployment.topics["dlq"]) == []
    assert _committed(deployment, lms, 0) == len(wire)
