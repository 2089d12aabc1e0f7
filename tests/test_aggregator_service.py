"""The aggregator against a real broker and a real SMTP server: alerts, frequency, restarts, replicas.

Outcomes carry synthetic ``created`` values (event time), so frequency periods pass without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from consumer.aggregator.config import StaticWarnings, WarningConfig
from consumer.aggregator.runner import mailer_for
from consumer.aggregator.service import Aggregator
from consumer.aggregator.thresholds import Thresholds
from consumer.aggregator.windows import Timeframe
from consumer.devtools.process import free_port
from consumer.observability.metrics import ALERT_SEND_FAILURES, BILLABLE_EVENTS
from consumer.outcomes.codec import decode_alert, encode_outcome
from consumer.outcomes.model import Alert, AlertKind, Outcome, OutcomeStatus
from consumer.settings import Settings
from tests.support.kafka import TopicFactory, consume_all, produce, unique_name
from tests.support.smtp import SMTPTestServer

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
        self.stop.set()
        await asyncio.wait_for(self.task, 60)


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
        for replica in h.replicas:
            with contextlib.suppress(Exception):
                await replica.close()


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
    await wait_for(
        lambda: len(one.aggregator.parts) + len(two.aggregator.parts) == 3 and one.aggregator.ready,
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


async def test_a_failing_alert_connection_is_retried_counted_and_recorded(harness: Harness) -> None:
    harness.smtp_port = free_port()  # nothing listens there
    harness.provider.configs["r-down"] = warn_config("r-down", count=0)
    before = ALERT_SEND_FAILURES._value.get()
    replica = await harness.start()
    harness.produce([record("r-down", FAILED, base_time())])
    await harness.settled()
    (alert,) = harness.alert_records()
    assert alert.email_sent is False
    assert alert.recipients == []
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
