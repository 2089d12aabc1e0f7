"""The start-up readers on the real broker: a transaction marker as a partition's last offset, and a
leader moving (a retriable error injected around the watermark call of a real consumer).

Readers: ``read_since`` (``logs``, ``usage``), the aggregator's alerts read-back (``DecisionLog``) and
the rule store (``RuleStore``). Each must finish reading "to the end" although the end offset is a
commit marker that is never delivered, and must retry ``NOT_LEADER_FOR_PARTITION`` instead of failing.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

import consumer.aggregator.decisions as decisions_module
import consumer.rules.store as store_module
import consumer.topic_reader as topic_reader_module
from consumer.aggregator.decisions import DecisionLog
from consumer.outcomes.codec import encode_alert
from consumer.outcomes.model import Alert, AlertKind
from consumer.rules.codec import encode_rule
from consumer.rules.store import RuleStore
from consumer.topic_reader import read_since
from tests.support.kafka import TopicFactory, unique_name
from tests.test_rules_store import deployment, rule

READ_TIMEOUT = 20.0


def produce_in_transaction(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Records in one committed transaction, then wait until the marker is the partition's end."""
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": unique_name("tx")})
    producer.init_transactions(30)
    producer.begin_transaction()
    for key, value in records:
        producer.produce(topic, key=key, value=value, partition=0)
    producer.commit_transaction(30)
    expected = len(records) + 1  # the records and the commit marker
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("probe")})
    try:
        deadline = time.monotonic() + 30
        while probe.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1] != expected:
            assert time.monotonic() < deadline, "the commit marker was not written"
            time.sleep(0.05)
    finally:
        probe.close()


def flaky_watermarks(failures: int) -> type[Consumer]:
    """A real consumer whose first ``failures`` watermark reads fail as while a leader moves."""

    class FlakyConsumer(Consumer):
        remaining = failures
        attempts = 0

        def get_watermark_offsets(self, *args: Any, **kwargs: Any) -> Any:
            cls = type(self)
            cls.attempts += 1
            if cls.remaining > 0:
                cls.remaining -= 1
                raise KafkaException(
                    KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION, "injected: leader moved")
                )
            return super().get_watermark_offsets(*args, **kwargs)

    return FlakyConsumer


def in_thread(fn: Any, timeout: float = READ_TIMEOUT) -> Any:
    """``fn()`` in a thread; fails naming the hang when it does not return within ``timeout``."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"the reader did not reach the end within {timeout:.0f}s"
    if errors:
        raise errors[0]
    return result[0]


def alert_value(rule_id: str) -> bytes:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    alert = Alert(
        created=now,
        rule_id=rule_id,
        kind=AlertKind.FIRED,
        timeframe="1h",
        window_start=now,
        window_end=now,
        events=3,
        warnings=3,
        percent=100.0,
        reason="3 warnings, over the limit of 2",
    )
    return encode_alert(alert)


# --- read_since (logs, usage) -------------------------------------------------------------------------


def test_read_since_finishes_when_a_commit_marker_is_last(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory("log")
    produce_in_transaction(kafka_bootstrap, topic, [(b"k", b"v")])
    read = in_thread(lambda: list(read_since({"bootstrap.servers": kafka_bootstrap}, topic, None)))
    assert [m.value() for m in read] == [b"v"]


def test_read_since_retries_a_leader_moving(
    kafka_bootstrap: str, topic_factory: TopicFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = topic_factory("log")
    produce_in_transaction(kafka_bootstrap, topic, [(b"k", b"v")])
    flaky = flaky_watermarks(failures=2)
    monkeypatch.setattr(topic_reader_module, "Consumer", flaky)
    read = in_thread(lambda: list(read_since({"bootstrap.servers": kafka_bootstrap}, topic, None)))
    assert [m.value() for m in read] == [b"v"]
    assert flaky.attempts == 3


# --- the aggregator's alerts read-back ----------------------------------------------------------------


def test_alerts_read_back_finishes_when_a_commit_marker_is_last(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory("alerts")
    produce_in_transaction(kafka_bootstrap, topic, [(b"r-1", alert_value("r-1"))])
    log = DecisionLog({"bootstrap.servers": kafka_bootstrap}, topic, timeout=READ_TIMEOUT)
    try:
        assert in_thread(log.refresh) == 1
        assert log.state_for("r-1").active
        assert in_thread(log.refresh) == 0  # the marker is not read again either
    finally:
        log.close()


def test_alerts_read_back_retries_a_leader_moving(
    kafka_bootstrap: str, topic_factory: TopicFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = topic_factory("alerts")
    produce_in_transaction(kafka_bootstrap, topic, [(b"r-1", alert_value("r-1"))])
    flaky = flaky_watermarks(failures=2)
    monkeypatch.setattr(decisions_module, "Consumer", flaky)
    log = DecisionLog({"bootstrap.servers": kafka_bootstrap}, topic, timeout=READ_TIMEOUT)
    try:
        assert in_thread(log.refresh) == 1
        assert flaky.attempts == 3
        assert log.calls.retries == 2
    finally:
        log.close()


# --- the rule store -----------------------------------------------------------------------------------


def test_rule_store_loads_when_a_commit_marker_is_last(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory("rules", compacted=True)
    produce_in_transaction(kafka_bootstrap, topic, [(b"r-1", encode_rule(rule("r-1")))])
    store = RuleStore(deployment(kafka_bootstrap, topic))
    index = in_thread(lambda: store.load(timeout=READ_TIMEOUT))
    assert "r-1" in index


def test_rule_store_load_retries_a_leader_moving(
    kafka_bootstrap: str, topic_factory: TopicFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = topic_factory("rules", compacted=True)
    produce_in_transaction(kafka_bootstrap, topic, [(b"r-1", encode_rule(rule("r-1")))])
    flaky = flaky_watermarks(failures=2)
    monkeypatch.setattr(store_module, "Consumer", flaky)
    store = RuleStore(deployment(kafka_bootstrap, topic))
    index = in_thread(lambda: store.load(timeout=READ_TIMEOUT))
    assert "r-1" in index
    assert flaky.attempts == 3
