"""An outcome the broker refuses: the record stays uncommitted, no new mail goes out, the service
keeps running and writes the outcome again with a growing delay; once the broker takes it, mail goes
on and nothing was sent twice (a stop-and-restart loop would have mailed again at each start).

The outcomes topic refuses records by its size limit (``max.message.bytes`` lowered below an
outcome's size on the real broker), a refusal no retry inside the producer gets past.
"""

from __future__ import annotations

import json
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from consumer.events.codec import encode_json
from consumer.outcomes.model import OutcomeStatus
from tests.chaos_support import FAST, alive, produce_many, read_outcomes, wait_until
from tests.factories import make_event
from tests.pipeline_support import apply_rules, esp_env, rule_doc
from tests.support.kafka import TopicFactory
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory


def _limit_outcomes(deployment: Deployment, limit: int | None) -> None:
    admin = AdminClient({"bootstrap.servers": deployment.bootstrap})
    entry = (
        ConfigEntry("max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET)
        if limit is not None
        else ConfigEntry("max.message.bytes", "", incremental_operation=AlterConfigOpType.DELETE)
    )
    resource = ConfigResource(
        ConfigResource.Type.TOPIC, deployment.topics["outcomes"], incremental_configs=[entry]
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


REFUSED = ("outcome refused by the broker", "outcome still refused by the broker")


def _refusals(service: ServiceProcess) -> int:
    count = 0
    for line in service.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and json.loads(line).get("msg", "").startswith(REFUSED):
            count += 1
    return count


def _committed(deployment: Deployment) -> int:
    reader = Consumer({"bootstrap.servers": deployment.bootstrap, "group.id": deployment.group_id})
    try:
        [tp] = reader.committed([TopicPartition(deployment.topics["lms"], 0)], timeout=10)
        return int(tp.offset)
    finally:
        reader.close()


def test_an_outcome_the_broker_refuses_stops_new_mail_until_it_is_written(
    kafka_bootstrap: str, topic_factory: TopicFactory, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    deployment = Deployment.create(kafka_bootstrap, topic_factory)
    server = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(deployment, tmp_path, rule_doc("r-blocked"))
    service = ServiceProcess("run", deployment.env(**FAST), tmp_path).start()
    first, second = make_event(lead_id="first"), make_event(lead_id="second")
    lms = deployment.topics["lms"]
    try:
        service.wait_ready()
        pid = alive(service).pid
        _limit_outcomes(deployment, 100)
        produce_many(deployment.bootstrap, lms, [(b"first", encode_json(first), None)], partition=0)
        wait_until(lambda: _refusals(service) >= 1, 60, "the outcome's refusal", every=0.1, running=[service])
        assert len(server.messages) == 1  # the mail went out; its outcome did not
        produce_many(deployment.bootstrap, lms, [(b"second", encode_json(second), None)], partition=0)
        wait_until(
            lambda: service.metric("eventmail_events_consumed_total") >= 2,
            60,
            "the second event to be taken",
            every=0.1,
            running=[service],
        )
        # A refusal logged after the second event was taken: it waited through a backoff meanwhile.
        refused = _refusals(service)
        wait_until(lambda: _refusals(service) > refused, 90, "another refusal", every=0.2, running=[service])
        assert len(server.messages) == 1  # no new mail while outcomes cannot be written
        assert _committed(deployment) < 1  # the first record is not committed
        _limit_outcomes(deployment, None)
        wait_until(lambda: len(server.messages) >= 2, 90, "the second mail", running=[service])
        wait_until(lambda: _committed(deployment) == 2, 60, "the commit of both", running=[service])
        assert alive(service).pid == pid  # no restart
        assert service.terminate() == 0
    finally:
        _limit_outcomes(deployment, None)
        service.stop()
    outcomes = read_outcomes(deployment)
    assert sorted((o.event_id, o.status) for o in outcomes) == sorted(
        [(first.event_id, OutcomeStatus.SENT), (second.event_id, OutcomeStatus.SENT)]
    )
    assert sorted(m.subject or "" for m in server.messages) == [
        "Lead first sold for 12.5",
        "Lead second sold for 12.5",
    ]
    log = [json.loads(line) for line in service.log_path.read_text().splitlines() if line.startswith("{")]
    assert any(line["msg"] == "outcomes are written again; deliveries go on" for line in log)
