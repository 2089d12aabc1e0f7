"""The aggregator against a real broker and a real SMTP server: alerts, frequency, restarts, replicas.

Outcomes carry synthetic ``created`` values (event time), so frequency periods pass without waiting.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from consumer.aggregator import service
from consumer.aggregator.config import StaticWarnings, WarningConfig
from consumer.aggregator.runner import ALERT_SEND_ROUNDS, mailer_for, run_aggregator
from consumer.aggregator.service import Aggregator, aggregator_group
from consumer.aggregator.thresholds import Thresholds
from consumer.aggregator.windows import Timeframe
from consumer.devtools.process import free_port
from consumer.observability.metrics import ALERT_SEND_FAILURES, BILLABLE_EVENTS
from consumer.outcomes.codec import decode_alert, encode_outcome
from consumer.outcomes.model import Alert, AlertKind, Outcome, OutcomeStatus, SourcePosition
from consumer.rules import store as store_module
from consumer.settings import Settings
from tests.support.kafka import LocalBroker, TopicFactory, consume_all, produce, unique_name
from tests.support.smtp import SMTPServerFactory, SMTPTestServer

FAILED, SENT = OutcomeStatus.FAILED, OutcomeStatus.SENT


@pytest.fixture
def smtp(smtp_server: SMTPTestServer) -> tuple[SMTPTestServer, int]:
    """A real SMTP server recording what it accepts, and its port."""
    return smtp_server, smtp_server.port


def warn_config(
    rule: str,
    *,
    count: int | None = None,
    percent: float | None = None,
    timeframe: Timeframe = Timeframe.H1,
    frequency: int = 30,
) -> WarningConfig:
    return WarningConfig(
        rule,
        timeframe,
        Thresholds(percent=percent, count=count),
        frequency_minutes=frequency,
        users=("u-1", "u-unknown"),
        emails=("ops@example.com", "lead@example.com"),
        rule_name=f"Rule {rule}",
    )


def record(rule: str, status: OutcomeStatus, at: datetime, error: str | None = None) -> tuple[bytes, bytes]:
    outcome = Outcome(
        created=at,
        event_id=unique_name("ev"),
        rule_id=rule,
        platform="lms",
        trigger="lead_sold",
        status=status,
        error=error if error else ("550 mailbox unavailable" if status is FAILED else None),
        smtp_code=550 if status is FAILED else None,
        warnings_enabled=True,
    )
    return rule.encode(), encode_outcome(outcome)


def base_time() -> datetime:
    """Three hours ago, on a whole minute: far enough back for several frequency periods."""
    now = datetime.now(UTC) - timedelta(hours=3)
    return now.replace(second=0, microsecond=0)


@dataclass
class Replica:
    aggregator: Aggregator
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def close(self) -> None:
        """Stop the replica; a crash of ``Aggregator.run`` (or a fatal error it stopped on) is raised."""
        self.stop.set()
        await asyncio.wait_for(self.task, 60)
        assert self.aggregator.fatal is None, f"the replica stopped on a fatal error: {self.aggregator.fatal}"


@dataclass
class Harness:
    bootstrap: str
    outcomes: str
    alerts: str
    smtp_port: int
    provider: StaticWarnings
    group: str = field(default_factory=lambda: unique_name("agg"))
    replicas: list[Replica] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> Settings:
        values: dict[str, Any] = {
            "kafka": {"bootstrap_servers": self.bootstrap},
            "group_id": self.group,
            "topics": {"outcomes": self.outcomes, "alerts": self.alerts},
            "esp_connections": {
                "default": {"host": "127.0.0.1", "port": self.smtp_port, "encryption": "none"}
            },
            "alerts": {"connection": "default", "sender": "alerts@eventmail.test"},
            "users": {"u-1": "owner@example.com"},
            "pipeline": {"commit_interval_seconds": 0.5, "drain_timeout_seconds": 10},
            "smtp": {"in_place_retries": 1, "retry_base_seconds": 0.05},
        }
        values.update(self.extra)
        return Settings(**values)

    async def start(self) -> Replica:
        settings = self.settings()
        aggregator = Aggregator(settings, self.provider, mailer_for(settings))
        stop = asyncio.Event()
        replica = Replica(aggregator, stop, asyncio.create_task(aggregator.run(stop)))
        self.replicas.append(replica)
        await wait_for(lambda: aggregator.ready, "the replica to be ready")
        return replica

    def produce(self, records: list[tuple[bytes, bytes]]) -> None:
        produce(self.bootstrap, self.outcomes, list(records))

    async def settled(self) -> None:
        """Every partition read to its end by a running replica, and no alert in flight."""
        ends = high_watermarks(self.bootstrap, self.outcomes)

        def done() -> bool:
            positions: dict[int, int] = {}
            for replica in self.replicas:
                if replica.task.done():
                    continue
                for p, run in list(replica.aggregator.parts.items()):
                    if run.pending:
                        return False
                    positions[p] = run.position
            return all(positions.get(p, -1) >= end for p, end in ends.items())

        await wait_for(done, "the replicas to process every outcome")

    def alert_records(self) -> list[Alert]:
        return [decode_alert(m.value()) for m in consume_all(self.bootstrap, self.alerts)]


def high_watermarks(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("wm")})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
        }
    finally:
        consumer.close()


async def wait_for(predicate: Any, what: str, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def harness(
    kafka_bootstrap: str, topic_factory: TopicFactory, smtp: tuple[SMTPTestServer, int]
) -> AsyncIterator[Harness]:
    h = Harness(
        kafka_bootstrap,
        topic_factory("outcomes", partitions=3),
        topic_factory("alerts", partitions=2),
        smtp[1],
        StaticWarnings(),
    )
    try:
        yield h
    finally:
        # Every replica is stopped; then the first crash or fatal error among them fails the test.
        errors: list[BaseException] = []
        for replica in h.replicas:
            try:
                await replica.close()
            except BaseException as exc:  # collected, raised below
                errors.append(exc)
        if errors:
            raise errors[0]


RECIPIENTS = ["ops@example.com", "lead@example.com", "owner@example.com"]


async def test_count_threshold_alerts_once_per_frequency_to_every_recipient(
    harness: Harness, smtp: tuple[SMTPTestServer, int]
) -> None:
    recorder = smtp[0]
    harness.provider.configs["r-count"] = warn_config("r-count", count=3, frequency=30)
    await harness.start()
    t0 = base_time()
    harness.produce([record("r-count", FAILED, t0 + timedelta(seconds=i)) for i in range(3)])
    await harness.settled()
    assert recorder.messages == []  # 3 warnings do not exceed 3

    harness.produce([record("r-count", FAILED, t0 + timedelta(seconds=5), error="421 try later")])
    await wait_for(lambda: len(recorder.messages) == 1, "the alert email")
    mail = recorder.messages[0]
    assert mail.mail_from == "alerts@eventmail.test"
    assert sorted(mail.rcpt_tos) == sorted(RECIPIENTS)
    subject = mail.message["Subject"]
    assert "Rule r-count (r-count)" in subject
    assert "4 warnings in 1h" in subject
    text = mail.message.get_content()
    assert "Events:      4 (sent + failed)" in text
    assert "Warnings:    4 (failed + config_error)" in text
    assert "3 x 550 mailbox unavailable" in text
    assert "1 x 421 try later" in text
    assert "eventmail logs --rule r-count --status failed --since 1h" in text
    await harness.settled()
    (alert,) = harness.alert_records()
    assert (alert.kind, alert.rule_id, alert.events, alert.warnings) == (AlertKind.FIRED, "r-count", 4, 4)
    assert alert.email_sent is True
    assert sorted(alert.recipients) == sorted(RECIPIENTS)
    assert alert.threshold_count == 3
    assert alert.threshold_percent is None
    assert alert.timeframe == "1h"
    assert alert.window_end > alert.window_start

    # Failures go on for 29 more minutes: inside the frequency period, nothing more.
    harness.produce([record("r-count", FAILED, t0 + timedelta(minutes=m)) for m in range(1, 30)])
    await harness.settled()
    assert len(recorder.messages) == 1
    assert len(harness.alert_records()) == 1

    # 30 minutes after the alert the breach still holds: one more alert.
    harness.produce([record("r-count", FAILED, t0 + timedelta(minutes=30, seconds=6))])
    await wait_for(lambda: len(recorder.messages) == 2, "the second alert")
    await harness.settled()
    alerts = harness.alert_records()
    assert [a.kind for a in alerts] == [AlertKind.FIRED, AlertKind.FIRED]
    assert alerts[1].warnings == 4 + 29 + 1


async def test_percent_alone_fires_and_exactly_equal_does_not(
    harness: Harness, smtp: tuple[SMTPTestServer, int]
) -> None:
    recorder = smtp[0]
    harness.provider.configs["r-pct"] = warn_config("r-pct", percent=20, timeframe=Timeframe.M5)
    await harness.start()
    t0 = base_time()
    batch = [record("r-pct", SENT, t0 + timedelta(seconds=i)) for i in range(8)]
    batch += [record("r-pct", FAILED, t0 + timedelta(seconds=10 + i)) for i in range(2)]
    harness.produce(batch)  # 2 of 10 = exactly 20 %
    await harness.settled()
    assert recorder.messages == []
    harness.produce([record("r-pct", FAILED, t0 + timedelta(seconds=20))])  # 3 of 11
    await wait_for(lambda: len(recorder.messages) == 1, "the percent alert")
    await harness.settled()
    (alert,) = harness.alert_records()
    assert (alert.events, alert.warnings) == (11, 3)
    assert alert.percent == pytest.approx(27.2727, abs=1e-3)
    assert "over 20%" in alert.reason
    assert "limit" not in alert.reason


async def test_resolved_notice_when_enabled(harness: Harness, smtp: tuple[SMTPTestServer, int]) -> None:
    recorder = smtp[0]
    harness.extra["alerts"] = {
        "connection": "default",
        "sender": "alerts@eventmail.test",
        "send_resolved": True,
    }
    harness.provider.configs["r-res"] = warn_config("r-res", count=1, timeframe=Timeframe.M5)
    await harness.start()
    t0 = base_time()
    harness.produce([record("r-res", FAILED, t0 + timedelta(seconds=i)) for i in range(2)])
    await wait_for(lambda: len(recorder.messages) == 1, "the alert")
    harness.produce([record("r-res", SENT, t0 + timedelta(minutes=6))])
    await wait_for(lambda: len(recorder.messages) == 2, "the resolved notice")
    assert recorder.messages[1].message["Subject"].startswith("[eventmail] Resolved: rule Rule r-res")
    await harness.settled()
    assert [a.kind for a in harness.alert_records()] == [AlertKind.FIRED, AlertKind.RESOLVED]


async def test_restart_mid_window_keeps_counts_and_does_not_realert(
    harness: Harness, smtp: tuple[SMTPTestServer, int]
) -> None:
    recorder = smtp[0]
    harness.provider.configs["r-rst"] = warn_config("r-rst", count=3)
    first = await harness.start()
    t0 = base_time()
    harness.produce([record("r-rst", FAILED, t0 + timedelta(seconds=i)) for i in range(2)])
    await harness.settled()
    await first.close()

    billed = BILLABLE_EVENTS._value.get()
    second = await harness.start()  # rebuilds the window: 2 warnings
    harness.produce([record("r-rst", FAILED, t0 + timedelta(seconds=10 + i)) for i in range(2)])
    await wait_for(lambda: len(recorder.messages) == 1, "the alert after the restart")
    await harness.settled()
    # The replayed outcomes were billed by the first replica (its offsets are committed): not again.
    assert BILLABLE_EVENTS._value.get() == billed + 2
    assert [(a.events, a.warnings) for a in harness.alert_records()] == [(4, 4)]
    await second.close()

    third = await harness.start()  # replays the breach; the alert is read back, not repeated
    harness.produce([record("r-rst", FAILED, t0 + timedelta(minutes=10))])
    await harness.settled()
    assert len(recorder.messages) == 1
    assert len(harness.alert_records()) == 1
    assert third.aggregator.parts  # it owns the partitions and is ready


async def test_two_replicas_alert_once_per_rule(harness: Harness, smtp: tuple[SMTPTestServer, int]) -> None:
    recorder = smtp[0]
    rules = [f"r-{i}" for i in range(8)]
    for rule in rules:
        harness.provider.configs[rule] = warn_config(rule, count=2)
    one = await harness.start()
    two = await harness.start()
    # A cooperative-sticky member is ready with an empty assignment: wait until both own partitions.
    await wait_for(
        lambda: (
            len(one.aggregator.parts) + len(two.aggregator.parts) == 3
            and bool(one.aggregator.parts)
            and bool(two.aggregator.parts)
            and one.aggregator.ready
            and two.aggregator.ready
        ),
        "the partitions to be shared",
    )
    t0 = base_time()
    harness.produce([record(rule, FAILED, t0 + timedelta(seconds=i)) for i in range(4) for rule in rules])
    await wait_for(lambda: len(recorder.messages) >= len(rules), "one alert per rule")
    await harness.settled()
    alerts = harness.alert_records()
    assert sorted(a.rule_id for a in alerts) == rules
    assert sorted(m.message["X-Eventmail-Rule"] for m in recorder.messages) == rules
    assert {a.warnings for a in alerts} == {3}


async def test_a_failing_alert_connection_is_retried_counted_and_recorded(
    harness: Harness, smtp_server_factory: SMTPServerFactory
) -> None:
    # Every MAIL FROM is answered 421: each round of sending (ALERT_SEND_ROUNDS) makes the transport's
    # first try and its in-place retries, and each try is one SMTP transaction at the server.
    busy = smtp_server_factory("flaky", fail_code=421, fail_stage="mail", fail_times=None)
    harness.smtp_port = busy.port
    # The circuit breaker would refuse the last tries without connecting: keep it out of the count.
    harness.extra["smtp"] = {"in_place_retries": 1, "retry_base_seconds": 0.05, "circuit_failures": 100}
    harness.provider.configs["r-down"] = warn_config("r-down", count=0)
    before = ALERT_SEND_FAILURES._value.get()
    replica = await harness.start()
    harness.produce([record("r-down", FAILED, base_time())])
    await harness.settled()
    (alert,) = harness.alert_records()
    assert alert.email_sent is False
    assert alert.recipients == []
    tries_per_round = harness.settings().smtp.in_place_retries + 1
    assert busy.attempts == ALERT_SEND_ROUNDS * tries_per_round
    assert busy.messages == []
    assert ALERT_SEND_FAILURES._value.get() == before + 1
    assert not replica.task.done()  # the service goes on
    harness.produce([record("r-other", SENT, base_time())])
    await harness.settled()


async def test_a_rebalance_hands_rules_over_without_repeating_alerts(
    harness: Harness, smtp: tuple[SMTPTestServer, int]
) -> None:
    recorder = smtp[0]
    rules = [f"r-{i}" for i in range(6)]
    for rule in rules:
        harness.provider.configs[rule] = warn_config(rule, count=2)
    one = await harness.start()
    t0 = base_time()
    harness.produce([record(rule, FAILED, t0 + timedelta(seconds=i)) for i in range(3) for rule in rules])
    await wait_for(lambda: len(recorder.messages) == len(rules), "one alert per rule")
    await harness.settled()

    two = await harness.start()  # takes partitions over from the first replica, which hands them on
    await wait_for(
        lambda: (
            len(one.aggregator.parts) + len(two.aggregator.parts) == 3
            and bool(two.aggregator.parts)
            and one.aggregator.ready
            and two.aggregator.ready
        ),
        "the partitions to move",
    )
    harness.produce([record(rule, FAILED, t0 + timedelta(minutes=5)) for rule in rules])
    await harness.settled()
    assert len(recorder.messages) == len(rules)
    assert sorted(a.rule_id for a in harness.alert_records()) == rules


# --- transient broker errors, the end of a partition, event time ----------------------------------


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


async def test_a_leader_moving_during_assignment_is_retried(
    harness: Harness, smtp: tuple[SMTPTestServer, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = flaky_watermarks(failures=3)
    monkeypatch.setattr(service, "Consumer", flaky)  # the outcome consumer, and only it
    harness.provider.configs["r-pct"] = warn_config("r-pct", percent=20, timeframe=Timeframe.M5)
    replica = await harness.start()  # ready: the assign callback retried instead of giving up
    assert flaky.attempts == 3 + 3  # three refusals, then one read per partition
    assert replica.aggregator.fatal is None
    t0 = base_time()
    harness.produce([record("r-pct", FAILED, t0 + timedelta(seconds=i)) for i in range(2)])
    await wait_for(lambda: len(smtp[0].messages) == 1, "the alert")


async def test_a_replica_stuck_on_the_brokers_is_unhealthy_then_recovers(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = flaky_watermarks(failures=10**9)
    monkeypatch.setattr(service, "Consumer", flaky)
    settings = harness.settings()
    aggregator = Aggregator(settings, harness.provider, mailer_for(settings))
    stop = asyncio.Event()
    harness.replicas.append(Replica(aggregator, stop, asyncio.create_task(aggregator.run(stop))))
    await wait_for(lambda: flaky.attempts >= 3, "the watermark reads to be retried")
    await wait_for(lambda: not aggregator.healthy(stale_after=0.5)[0], "the replica to report it is stuck")
    ok, details = aggregator.healthy(stale_after=0.5)
    assert not ok
    retrying = details["retrying"]
    assert isinstance(retrying, dict)
    assert retrying["call"] == "watermark offsets"
    assert "NOT_LEADER_FOR_PARTITION" in str(retrying["error"])
    assert not aggregator.ready
    assert aggregator.fatal is None
    flaky.remaining = 0  # the leader is back
    await wait_for(lambda: aggregator.ready, "the replica to be ready")
    ok, details = aggregator.healthy(stale_after=5.0)
    assert ok, details


def produce_in_transaction(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Records written in one committed transaction: its commit marker takes the last offset."""
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": unique_name("tx")})
    producer.init_transactions(30)
    producer.begin_transaction()
    for key, value in records:
        producer.produce(topic, key=key, value=value, partition=0)
    producer.commit_transaction(30)


async def test_a_transaction_marker_at_the_end_does_not_keep_a_replica_rebuilding(
    harness: Harness, smtp: tuple[SMTPTestServer, int]
) -> None:
    harness.provider.configs["r-tx"] = warn_config("r-tx", count=0)
    produce_in_transaction(harness.bootstrap, harness.outcomes, [record("r-tx", FAILED, base_time())])
    # The coordinator writes the marker after the commit returns; read_committed ends say when it is.
    await wait_for(lambda: high_watermarks(harness.bootstrap, harness.outcomes)[0] == 2, "the commit marker")
    replica = await harness.start()
    assert replica.aggregator.parts[0].position == 1
    await wait_for(lambda: len(smtp[0].messages) == 1, "the alert of the replayed outcome")


async def test_the_brokers_away_at_start_are_waited_for(
    harness: Harness, smtp: tuple[SMTPTestServer, int], local_broker: LocalBroker
) -> None:
    harness.provider.configs["r-back"] = warn_config("r-back", count=0)
    settings = harness.settings()
    local_broker.stop()
    try:
        aggregator = Aggregator(settings, harness.provider, mailer_for(settings))
        aggregator.log.timeout = 2.0  # each metadata request gives up fast, and is retried
        stop = asyncio.Event()
        harness.replicas.append(Replica(aggregator, stop, asyncio.create_task(aggregator.run(stop))))
        await wait_for(lambda: aggregator.calls.retries >= 2, "the alerts read-back to be retried")
        assert not harness.replicas[-1].task.done()
    finally:
        local_broker.start()
    await wait_for(lambda: aggregator.ready, "the replica to be ready once the broker is back", timeout=90)
    harness.produce([record("r-back", FAILED, base_time())])
    await wait_for(lambda: len(smtp[0].messages) == 1, "the alert")


async def test_an_outcome_from_the_future_does_not_blind_the_partition(
    harness: Harness, smtp: tuple[SMTPTestServer, int]
) -> None:
    harness.provider.configs["r-clock"] = warn_config("r-clock", count=10, frequency=600)
    replica = await harness.start()
    now = datetime.now(UTC).replace(microsecond=0)
    harness.produce([record("r-clock", SENT, now + timedelta(days=1))])  # a sender's clock a day ahead
    harness.produce(
        [record("r-clock", FAILED, now - timedelta(minutes=5) + timedelta(seconds=i)) for i in range(50)]
    )
    await harness.settled()
    (alert,) = harness.alert_records()
    assert (alert.events, alert.warnings) == (12, 11)  # the future outcome counts, at its record's time
    (run,) = [r for r in replica.aggregator.parts.values() if r.state.rules]
    assert run.state.dropped == 0
    assert run.state.clock_ms is not None
    assert run.state.clock_ms <= (now + timedelta(minutes=5)).timestamp() * 1000


def config_error(rule: str, at: datetime, rules_offset: int) -> tuple[bytes, bytes]:
    outcome = Outcome(
        created=at,
        rule_id=rule,
        status=OutcomeStatus.CONFIG_ERROR,
        error="template: unknown placeholder",
        source=SourcePosition(topic="eventmail.rules", partition=0, offset=rules_offset),
        warnings_enabled=True,
    )
    return rule.encode(), encode_outcome(outcome)


async def test_an_invalid_rule_record_reported_by_every_replica_counts_once(
    harness: Harness, smtp: tuple[SMTPTestServer, int]
) -> None:
    harness.provider.configs["r-bad"] = warn_config("r-bad", count=1)
    await harness.start()
    t0 = base_time()
    # Three `run` replicas (or three restarts) report the same invalid record at offset 7.
    harness.produce([config_error("r-bad", t0 + timedelta(seconds=i), rules_offset=7) for i in range(3)])
    await harness.settled()
    assert smtp[0].messages == []  # one warning, not over the limit of 1
    harness.produce([config_error("r-bad", t0 + timedelta(seconds=5), rules_offset=9)])  # a new bad record
    await wait_for(lambda: len(smtp[0].messages) == 1, "the alert")
    await harness.settled()
    (alert,) = harness.alert_records()
    assert alert.warnings == 2


def produce_at(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, datetime]]) -> None:
    """Records with the given record timestamps (as written hours ago), all to partition 0."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value, at in records:
        producer.produce(topic, key=key, value=value, partition=0, timestamp=int(at.timestamp() * 1000))
    assert producer.flush(30) == 0


async def test_breaches_during_a_downtime_longer_than_the_largest_timeframe_are_decided(
    harness: Harness, smtp: tuple[SMTPTestServer, int]
) -> None:
    harness.provider.configs["r-away"] = warn_config("r-away", count=3, timeframe=Timeframe.M5)
    t0 = (datetime.now(UTC) - timedelta(hours=8)).replace(second=0, microsecond=0)
    first = record("r-away", SENT, t0 - timedelta(minutes=30))
    breach = [record("r-away", FAILED, t0 + timedelta(seconds=20 * i)) for i in range(24)]  # 8 minutes
    produce_at(
        harness.bootstrap,
        harness.outcomes,
        [
            (*first, t0 - timedelta(minutes=30)),
            *((k, v, t0 + timedelta(seconds=20 * i)) for i, (k, v) in enumerate(breach)),
        ],
    )
    # The replica that owned the partition had handled the first outcome, then was away for 8 hours.
    committer = Consumer(
        {"bootstrap.servers": harness.bootstrap, "group.id": aggregator_group(harness.settings())}
    )
    try:
        committer.commit(offsets=[TopicPartition(harness.outcomes, 0, 1)], asynchronous=False)
    finally:
        committer.close()
    await harness.start()
    await wait_for(lambda: len(smtp[0].messages) == 1, "the alert of the downtime's breach")
    await harness.settled()
    (alert,) = harness.alert_records()
    assert alert.kind is AlertKind.FIRED
    assert t0 + timedelta(minutes=5) <= alert.created <= t0 + timedelta(minutes=8)


def http_get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except urllib.error.URLError:
        return 0, {}  # not listening yet


def as_a_service(harness: Harness, topic_factory: TopicFactory) -> int:
    """Settings for ``run_aggregator`` (the whole service): an HTTP port, which is returned, and a
    rules topic (the service starts only once every topic it needs exists, its start-up gate)."""
    port = free_port()
    harness.extra["http"] = {"host": "127.0.0.1", "port": port}
    rules = topic_factory("rules", compacted=True)
    harness.extra["topics"] = {"outcomes": harness.outcomes, "alerts": harness.alerts, "rules": rules}
    return port


async def test_healthz_of_the_service_fails_while_the_brokers_are_retried(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, topic_factory: TopicFactory
) -> None:
    flaky = flaky_watermarks(failures=10**9)
    monkeypatch.setattr(service, "Consumer", flaky)
    monkeypatch.setattr(service, "STUCK_AFTER_SECONDS", 1.0)
    port = as_a_service(harness, topic_factory)
    stop = asyncio.Event()
    task = asyncio.create_task(run_aggregator(harness.settings(), stop, provider=harness.provider))
    try:
        answers: list[tuple[int, dict[str, Any]]] = []

        async def answer(path: str) -> tuple[int, dict[str, Any]]:
            answers.append(await asyncio.to_thread(http_get, port, path))
            return answers[-1]

        async def stuck() -> bool:
            code, body = await answer("/healthz")
            return code == 503 and "retrying" in body

        deadline = time.monotonic() + 45
        while not await stuck():
            assert time.monotonic() < deadline, f"/healthz never reported the retries: {answers[-1:]}"
            await asyncio.sleep(0.1)
        body = answers[-1][1]
        assert body["retrying"]["call"] == "watermark offsets"
        assert (await answer("/readyz"))[0] == 503
        flaky.remaining = 0  # the leader is back
        while (await answer("/readyz"))[0] != 200 or (await answer("/healthz"))[0] != 200:
            assert time.monotonic() < deadline + 45, f"not ready and healthy again: {answers[-2:]}"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 60) == 0


async def test_a_replica_stopped_while_retrying_the_brokers_stops_cleanly(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = flaky_watermarks(failures=10**9)
    monkeypatch.setattr(service, "Consumer", flaky)
    settings = harness.settings()
    aggregator = Aggregator(settings, harness.provider, mailer_for(settings))
    stop = asyncio.Event()
    replica = Replica(aggregator, stop, asyncio.create_task(aggregator.run(stop)))
    await wait_for(lambda: aggregator.calls.retrying is not None, "the watermark reads to be retried")
    started = time.monotonic()
    await replica.close()  # raises on a crash or a fatal error
    assert time.monotonic() - started < 15  # the retry ends at once, not after its 120 s limit
    assert not aggregator.ready


def rules_consumer(*, metadata_error: threading.Event, consume_error: threading.Event) -> type[Consumer]:
    """A real consumer for the rule store that, while told to, answers the rules topic's metadata
    with an error (as a broker restarting does for a while), or fails in ``consume``."""

    class RulesConsumer(Consumer):
        bad_answers = 0

        def list_topics(self, topic: str | None = None, *args: Any, **kwargs: Any) -> Any:
            metadata = super().list_topics(topic, *args, **kwargs)
            if topic is not None and metadata_error.is_set():
                type(self).bad_answers += 1
                found = metadata.topics[topic]
                found.error = KafkaError(KafkaError.LEADER_NOT_AVAILABLE, "injected: leader not available")
                found.partitions = {}
            return metadata

        def consume(self, *args: Any, **kwargs: Any) -> Any:
            if consume_error.is_set():
                raise RuntimeError("injected: the rule store's consumer broke")
            return super().consume(*args, **kwargs)

    return RulesConsumer


async def until_answer(
    port: int, path: str, condition: Any, what: str, timeout: float = 45.0
) -> tuple[int, dict[str, Any]]:
    """The first answer of ``path`` that ``condition`` holds for; fails naming ``what`` and the last."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await asyncio.to_thread(http_get, port, path)
        if condition(answer):
            return answer
        assert time.monotonic() < deadline, f"timed out waiting for {what}: last {path} {answer}"
        await asyncio.sleep(0.1)


@pytest.fixture
def service_with_rule_store(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, topic_factory: TopicFactory
) -> tuple[Settings, int, type[Consumer], threading.Event, threading.Event]:
    """Settings of ``eventmail aggregate`` reading its warnings from a rules topic (the rule store),
    its HTTP port, and the store's consumer class with its two injected faults."""
    metadata_error, consume_error = threading.Event(), threading.Event()
    consumer_class = rules_consumer(metadata_error=metadata_error, consume_error=consume_error)
    monkeypatch.setattr(store_module, "Consumer", consumer_class)
    monkeypatch.setattr(store_module, "_PARTITION_CHECK_SECONDS", 0.1)
    port = as_a_service(harness, topic_factory)
    return harness.settings(), port, consumer_class, metadata_error, consume_error


async def test_a_failed_check_for_new_rule_partitions_leaves_the_service_healthy(
    service_with_rule_store: tuple[Settings, int, type[Consumer], threading.Event, threading.Event],
) -> None:
    """A soak found /healthz failing for good after one broker restart: the rule store's check for
    new partitions of the rules topic (every 30 s) met the metadata error a restarting broker answers
    for a while, and kept it as the store's failure while the store went on following the topic."""
    settings, port, consumer_class, metadata_error, _ = service_with_rule_store
    stop = asyncio.Event()
    task = asyncio.create_task(run_aggregator(settings, stop))
    try:
        await until_answer(port, "/readyz", lambda a: a[0] == 200, "the service to be ready")
        metadata_error.set()
        started = consumer_class.bad_answers
        await wait_for(
            lambda: consumer_class.bad_answers >= started + 3,  # three checks met the error
            "the rule store to go on checking for new partitions",
        )
        code, body = await asyncio.to_thread(http_get, port, "/healthz")
        assert (code, body.get("rules")) == (200, True), body
        metadata_error.clear()
        assert (await asyncio.to_thread(http_get, port, "/healthz"))[0] == 200
        assert not task.done()
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 60) == 0


async def test_a_rule_store_that_stopped_fails_healthz(
    service_with_rule_store: tuple[Settings, int, type[Consumer], threading.Event, threading.Event],
) -> None:
    """The store's thread stopping on an error leaves the service without rule changes: not healthy
    (a restart reads the topic again), and /healthz says why."""
    settings, port, _, _, consume_error = service_with_rule_store
    stop = asyncio.Event()
    task = asyncio.create_task(run_aggregator(settings, stop))
    try:
        await until_answer(port, "/healthz", lambda a: a[0] == 200, "the service to be healthy")
        consume_error.set()
        _, body = await until_answer(port, "/healthz", lambda a: a[0] == 503, "/healthz to fail")
        assert body["rules"] is False, body
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def blocking_sync_commits(release: threading.Event) -> type[Consumer]:
    """A real consumer whose synchronous commits wait until ``release``, as librdkafka's wait for a
    group coordinator does while a broker restarts (or longer: a soak saw the loop stop for good)."""

    class BlockingCommits(Consumer):
        blocked = 0

        def commit(self, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("asynchronous") is False and not release.is_set():
                type(self).blocked += 1
                release.wait(120)
            return super().commit(*args, **kwargs)

    return BlockingCommits


async def test_the_loop_goes_on_while_no_commit_is_answered(
    harness: Harness, smtp: tuple[SMTPTestServer, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    consumer_class = blocking_sync_commits(release)
    monkeypatch.setattr(service, "Consumer", consumer_class)
    harness.provider.configs["r-commit"] = warn_config("r-commit", count=2)
    try:
        replica = await harness.start()
        t0 = base_time()
        harness.produce([record("r-commit", FAILED, t0 + timedelta(seconds=i)) for i in range(3)])
        await wait_for(lambda: len(smtp[0].messages) == 1, "the alert while commits are not answered")
        await harness.settled()
        ends = high_watermarks(harness.bootstrap, harness.outcomes)
        group = aggregator_group(harness.settings())

        def committed_to_the_end() -> bool:
            reader = Consumer({"bootstrap.servers": harness.bootstrap, "group.id": group})
            try:
                asked = [TopicPartition(harness.outcomes, p) for p in ends]
                done = {tp.partition: tp.offset for tp in reader.committed(asked, timeout=10)}
            finally:
                reader.close()
            return all(done.get(p, -1) >= end for p, end in ends.items() if end > 0)

        await wait_for(committed_to_the_end, "the periodic commits to reach the end")
        assert consumer_class.blocked == 0, "the loop waited on a synchronous commit"
        ok, details = replica.aggregator.healthy(stale_after=5.0)
        assert ok, details
    finally:
        release.set()  # the commit at the stop waits for its answer, as it should
