"""Session-wide real parts: one Kafka broker per test session, unique topics per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.kafka import LocalBroker, TopicFactory, kafka_session

pytest_plugins = ["tests.support.smtp_fixtures", "tests.support.registry_fixtures"]


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[tuple[str, LocalBroker | None]]:
    with kafka_session() as session:
        yield session


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: tuple[str, LocalBroker | None]) -> str:
    """Bootstrap servers of the session's broker."""
    return kafka_broker[0]


@pytest.fixture
def local_broker(kafka_broker: tuple[str, LocalBroker | None]) -> LocalBroker:
    """The local broker process, for tests that stop and restart it."""
    broker = kafka_broker[1]
    if broker is None:
        pytest.fail("this test restarts the broker: it needs the local broker, not KAFKA_BOOTSTRAP_SERVERS")
    return broker


@pytest.fixture
def topic_factory(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[TopicFactory]:
    """``topic_factory(name, partitions=1, config=None, compacted=False)`` -> a new unique topic."""
    factory = TopicFactory(kafka_bootstrap, request.node.name)
    yield factory
    factory.cleanup()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test that used the local broker shows the end of the broker's log."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and "kafka_broker" in getattr(item, "fixturenames", ()):
        broker = item.funcargs.get("kafka_broker") if hasattr(item, "funcargs") else None
        if isinstance(broker, tuple) and isinstance(broker[1], LocalBroker):
            report.sections.append(("kafka broker log (tail)", broker[1].tail_log()))
