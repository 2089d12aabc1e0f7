"""Every consumer that reads a backlog starts from FETCH_DEFAULTS (librdkafka's fetch back-off of
10 ms instead of 1 s), and a deployment's own librdkafka settings win over them. What the back-off
is worth is measured by ``make bench`` (``filter_only_per_s``), not here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from consumer import topic_reader
from consumer.aggregator import decisions, service
from consumer.aggregator.config import StaticWarnings
from consumer.aggregator.runner import mailer_for
from consumer.console import data
from consumer.kafka.fetching import FETCH_DEFAULTS
from consumer.pipeline import dedup, source
from consumer.rules import store
from consumer.settings import Settings

BACKOFF = "fetch.queue.backoff.ms"


class Built(Exception):
    """Raised by the stand-in Consumer once it has seen its configuration."""


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The configurations given to ``Consumer`` by the modules that read backlogs; constructing one
    raises :class:`Built`, except the aggregator's alert reader, which the aggregator builds first."""
    configs: list[dict[str, Any]] = []

    def recording(raises: bool) -> Callable[[dict[str, Any]], object]:
        def consumer(config: dict[str, Any]) -> object:
            configs.append(config)
            if raises:
                raise Built
            return object()

        return consumer

    for module in (source, dedup, topic_reader, service, data):
        monkeypatch.setattr(module, "Consumer", recording(True))
    monkeypatch.setattr(decisions, "Consumer", recording(False))
    return configs


def settings(**kafka_extra: Any) -> Settings:
    return Settings(
        kafka={"bootstrap_servers": "127.0.0.1:1", "extra": kafka_extra},  # type: ignore[arg-type]
        esp_connections={"default": {"host": "127.0.0.1", "port": 25, "encryption": "none"}},  # type: ignore[arg-type]
        alerts={"connection": "default", "sender": "alerts@eventmail.test"},  # type: ignore[arg-type]
    )


def build_each(config: dict[str, Any], deployment: Settings) -> None:
    """Construct every backlog reader once, up to its Consumer."""
    with pytest.raises(Built):
        source.SourceConsumer(
            config,
            ["lms"],
            "retry",
            None,  # type: ignore[arg-type]
            max_pending=10,
            max_retry_pending=10,
            commit_interval=1.0,
            drain_timeout=1.0,
            on_fatal=lambda _: None,
        )
    with pytest.raises(Built):
        dedup.read_delivered(config, "outcomes", {("lms", 0): 5}, 60.0)
    with pytest.raises(Built):
        next(iter(topic_reader.read_since(config, "outcomes", None)))
    with pytest.raises(Built):
        service.Aggregator(deployment, StaticWarnings({}), mailer_for(deployment))
    with pytest.raises(Built):
        data.ConsoleData(deployment)._reader()


def test_every_backlog_reader_fetches_with_the_short_back_off(built: list[dict[str, Any]]) -> None:
    deployment = settings()
    build_each(deployment.kafka_config(), deployment)
    # source, read-back, topic reader, the aggregator's alert reader and its own, console
    assert len(built) == 6
    assert [config[BACKOFF] for config in built] == [FETCH_DEFAULTS[BACKOFF]] * 6
    assert FETCH_DEFAULTS[BACKOFF] == 10
    assert store.RuleStore(deployment)._config[BACKOFF] == 10


def test_the_deployment_s_own_back_off_wins(built: list[dict[str, Any]]) -> None:
    deployment = settings(**{BACKOFF: 250})
    build_each(deployment.kafka_config(), deployment)
    assert [config[BACKOFF] for config in built] == [250] * 6
    assert store.RuleStore(deployment)._config[BACKOFF] == 250
