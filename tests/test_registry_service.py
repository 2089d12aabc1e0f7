"""``eventmail run`` and the Schema Registry's answers, on the real broker, registry and SMTP server.

- A record whose schema id the registry refuses (403 for that id, behind an authorising gateway)
  goes to the DLQ with the reason, and the partition goes on: later records are mailed and the
  group's committed offset passes the refused record (no stuck offset, no unbounded run-ahead).
- The registry's HTTP never runs on the event loop: while a look-up hangs, mail of other records
  goes out, and the held record is mailed once the registry answers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from consumer.events.codec import encode_json, encode_wire
from consumer.events.registry import register_event_schema, value_subject
from tests.chaos_support import FAST, alive, produce_many, read_topic, wait_until
from tests.factories import make_event
from tests.pipeline_support import apply_rules, esp_env, rule_doc
from tests.support.kafka import TopicFactory
from tests.support.registry_gate import RegistryGate
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory

SECRET = "gate-pa55-never-shown"


@pytest.fixture
def gate(schema_registry_url: str) -> Iterator[RegistryGate]:
    gateway = RegistryGate(schema_registry_url, credentials=f"eventmail:{SECRET}")
    yield gateway
    gateway.close()


def _committed(deployment: Deployment, partition: int) -> int:
    reader = Consumer({"bootstrap.servers": deployment.bootstrap, "group.id": deployment.group_id})
    try:
        [tp] = reader.committed([TopicPartition(deployment.topics["lms"], partition)], timeout=10)
        return int(tp.offset)
    finally:
        reader.close()


def test_a_schema_id_the_registry_refuses_goes_to_the_dlq_and_the_partition_goes_on(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    smtp_server_factory: SMTPServerFactory,
    registry_client: SchemaRegistryClient,
    gate: RegistryGate,
    tmp_path: Path,
) -> None:
    deployment = Deployment.create(kafka_bootstrap, topic_factory)
    good_id = register_event_schema(registry_client, value_subject(deployment.topics["lms"]), "lms")
    refused_id = good_id + 1_000_000
    gate.refuse[refused_id] = 403
    server = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(deployment, tmp_path, rule_doc("r-reg"))
    env = deployment.env(
        **FAST,
        EVENTMAIL_SCHEMA_REGISTRY__URL=gate.url,
        EVENTMAIL_SCHEMA_REGISTRY__BASIC_AUTH=f"eventmail:{SECRET}",
    )
    service = ServiceProcess("run", env, tmp_path).start()
    before, refused, after = (make_event(lead_id=n) for n in ("before", "refused", "after"))
    try:
        service.wait_ready()
        produce_many(
            deployment.bootstrap,
            deployment.topics["lms"],
            [
                (b"before", encode_wire(before, good_id), None),
                (b"refused", encode_wire(refused, refused_id), None),
                (b"after", encode_wire(after, good_id), None),
            ],
            partition=0,
        )
        wait_until(lambda: len(server.messages) >= 2, 60, "the two good mails", running=[service])
        wait_until(lambda: _committed(deployment, 0) == 3, 60, "the commit past all three", running=[service])
        dlq = read_topic(deployment.bootstrap, deployment.topics["dlq"])
        assert alive(service).returncode is None
        assert service.terminate() == 0
    finally:
        service.stop()
    assert [m.key() for m in dlq] == [b"refused"]
    error = dict(dlq[0].headers() or [])["eventmail.error"].decode()
    assert f"schema id {refused_id}" in error
    assert "refused for this schema id" in error
    assert "403" in error
    assert SECRET not in service.log_path.read_text()
    assert sorted(m.subject or "" for m in server.messages) == [
        "Lead after sold for 12.5",
        "Lead before sold for 12.5",
    ]


def test_a_hanging_registry_look_up_does_not_hold_up_other_mail(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    smtp_server_factory: SMTPServerFactory,
    registry_client: SchemaRegistryClient,
    gate: RegistryGate,
    tmp_path: Path,
) -> None:
    deployment = Deployment.create(kafka_bootstrap, topic_factory)
    schema_id = register_event_schema(registry_client, value_subject(deployment.topics["lms"]), "lms")
    gate.slow[schema_id] = 120.0  # held until released
    server = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(deployment, tmp_path, rule_doc("r-slow"))
    env = deployment.env(
        **FAST,
        EVENTMAIL_SCHEMA_REGISTRY__URL=gate.url,
        EVENTMAIL_SCHEMA_REGISTRY__BASIC_AUTH=f"eventmail:{SECRET}",
    )
    service = ServiceProcess("run", env, tmp_path).start()
    held, plain = make_event(lead_id="held"), make_event(lead_id="plain")
    try:
        service.wait_ready()
        lms = deployment.topics["lms"]
        produce_many(deployment.bootstrap, lms, [(b"held", encode_wire(held, schema_id), None)], partition=0)
        wait_until(
            lambda: gate.requested(schema_id),
            30,
            "the look-up to reach the registry",
            every=0.05,
            running=[service],
        )
        published = time.monotonic()
        produce_many(deployment.bootstrap, lms, [(b"plain", encode_json(plain), None)], partition=1)
        wait_until(
            lambda: len(server.messages) >= 1, 60, "the JSON event's mail", every=0.05, running=[service]
        )
        took = time.monotonic() - published
        assert gate.answered(schema_id) == []  # the look-up still hangs
        assert server.messages[0].subject == "Lead plain sold for 12.5"
        health, _ = service.get("/healthz")
        assert health == 200
        gate.release()
        wait_until(lambda: len(server.messages) >= 2, 60, "the held record's mail", running=[service])
        assert service.terminate() == 0
    finally:
        gate.release()
        service.stop()
    # The registry client's own timeout is 10 s: a look-up on the event loop held this mail that long.
    assert took < 5.0, took
