"""Session fixtures for the secured single broker and the 3-node cluster (imported by the tests
that use them). Ports: ``EVENTMAIL_TEST_SECURE_KAFKA_PORT`` (default 19300) and
``EVENTMAIL_TEST_CLUSTER_KAFKA_PORT`` (default 19310, six ports from there)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.kafka import CLUSTER_PORT, SECURE_PORT, LocalCluster, local_cluster


@pytest.fixture(scope="session")
def secured_kafka() -> Iterator[LocalCluster]:
    """One broker: SASL_SSL (SCRAM-SHA-512), a private CA, StandardAuthorizer, no ACL means no access."""
    port = int(os.environ.get("EVENTMAIL_TEST_SECURE_KAFKA_PORT", str(SECURE_PORT)))
    with local_cluster(port, secure=True) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[LocalCluster]:
    """Three KRaft nodes (each broker and controller), RF 3 and min.insync.replicas=2 by default."""
    port = int(os.environ.get("EVENTMAIL_TEST_CLUSTER_KAFKA_PORT", str(CLUSTER_PORT)))
    with local_cluster(port, nodes=3) as cluster:
        yield cluster
