"""Pytest fixtures of the session's Schema Registry (a pytest plugin: ``tests.support.registry_fixtures``).

``schema_registry``         session: :class:`RegistryEndpoint` -- ``url`` (Confluent-compatible base URL),
                            ``local`` (the :class:`LocalRegistry` process, or None for SCHEMA_REGISTRY_URL)
``schema_registry_url``     session: the URL alone
``registry_settings``       session: ``SchemaRegistrySettings(url=...)``, as the service is configured
``registry_client``         a ``SchemaRegistryClient`` of that registry, fresh per test (empty caches)

The registry starts on first use, stores its schemas in the session's Kafka broker (``kafka_bootstrap``)
and stops when the session ends. A failing test that used it shows the end of the registry's log.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from consumer.events.registry import registry_client as make_registry_client
from consumer.settings import SchemaRegistrySettings
from tests.support.registry import LocalRegistry, registry_session


@dataclass(frozen=True)
class RegistryEndpoint:
    url: str
    local: LocalRegistry | None


@pytest.fixture(scope="session")
def schema_registry(kafka_bootstrap: str) -> Iterator[RegistryEndpoint]:
    with registry_session(kafka_bootstrap) as (url, local):
        yield RegistryEndpoint(url, local)


@pytest.fixture(scope="session")
def schema_registry_url(schema_registry: RegistryEndpoint) -> str:
    return schema_registry.url


@pytest.fixture(scope="session")
def registry_settings(schema_registry: RegistryEndpoint) -> SchemaRegistrySettings:
    return SchemaRegistrySettings(url=schema_registry.url)


@pytest.fixture
def registry_client(registry_settings: SchemaRegistrySettings) -> SchemaRegistryClient:
    return make_registry_client(registry_settings)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test that used the local registry shows the end of the registry's log."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and "schema_registry" in getattr(item, "fixturenames", ()):
        endpoint = item.funcargs.get("schema_registry") if hasattr(item, "funcargs") else None
        if isinstance(endpoint, RegistryEndpoint) and endpoint.local is not None:
            report.sections.append(("schema registry log (tail)", endpoint.local.tail_log()))
