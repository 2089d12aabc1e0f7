"""eventmail_ready follows the service's state without anyone calling /readyz (a Prometheus that
scrapes /metrics but no readiness probe must still see a consumer go ready and not ready)."""

from __future__ import annotations

from pathlib import Path

from tests.support.kafka import TopicFactory
from tests.support.service import Deployment, ServiceProcess


def test_the_ready_gauge_moves_without_readiness_probes(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    deployment = Deployment.create(kafka_bootstrap, topic_factory, partitions=1)
    service = ServiceProcess("run", deployment.env(), tmp_path).start()
    try:
        # Only /metrics is read here, never /readyz.
        service.wait_metric("eventmail_ready", lambda v: v == 1, labels={"service": "run"}, timeout=90)
    finally:
        service.stop()
