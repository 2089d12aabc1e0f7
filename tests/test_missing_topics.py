"""A missing topic keeps `eventmail run` and `eventmail aggregate` not ready, naming the topic (the
permission gate asks the broker before any work is taken); creating it is enough. Real broker."""

from __future__ import annotations

import json
from pathlib import Path

from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from tests.support.kafka import TopicFactory, unique_name, wait_for_topic
from tests.support.service import Deployment, ServiceProcess


def readiness(service: ServiceProcess) -> tuple[int, dict[str, object]]:
    code, body = service.get("/readyz")
    return code, json.loads(body)


def test_a_missing_topic_is_named_until_it_exists(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    deployment = Deployment.create(kafka_bootstrap, topic_factory, partitions=1)
    absent = {"dlq": unique_name("missing.dlq"), "alerts": unique_name("missing.alerts")}
    env = deployment.env(EVENTMAIL_TOPICS__DLQ=absent["dlq"], EVENTMAIL_TOPICS__ALERTS=absent["alerts"])
    run = ServiceProcess("run", env, tmp_path, name="run").start()
    aggregate = ServiceProcess("aggregate", env, tmp_path, name="aggregate").start()
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    try:
        for service, topic in ((run, absent["dlq"]), (aggregate, absent["alerts"])):
            service.wait_logged("not ready: topics missing (eventmail topics create makes them)", timeout=90)
            code, details = readiness(service)
            assert code == 503
            assert details["topics_missing"] == [topic], details
        for topic in absent.values():
            admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
            wait_for_topic(admin, topic, 1)
        run.wait_ready(timeout=60)
        aggregate.wait_ready(timeout=60)
    finally:
        run.stop()
        aggregate.stop()
        admin.delete_topics(list(absent.values()), operation_timeout=30)
