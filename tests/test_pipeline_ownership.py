"""The pipeline's partition ownership on real parts (Kafka, an SMTP server, the record processor):
what a revoke, a lost partition and a reassignment do to offsets and to the work in progress.

The source's rebalance callbacks are called directly, with a real (unsubscribed) consumer of the
test broker, in the order librdkafka calls them; the pipeline's loop runs in a thread of its own.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from consumer.events.codec import EventDecoder, encode_json
from consumer.events.registry import registry_lookup
from consumer.outcomes.model import SourcePosition
from consumer.pipeline.deliver import MailDeliverer
from consumer.pipeline.handoff import RetryHandoff
from consumer.pipeline.producer import AsyncProducer
from consumer.pipeline.records import RecordProcessor
from consumer.pipeline.retry import RetryRecord
from consumer.pipeline.service import Pipeline
from consumer.pipeline.source import SourceConsumer
from consumer.rules.matching import RuleIndex, compile_rule
from consumer.rules.model import Rule
from consumer.settings import Settings
from tests.chaos_support import read_topic
from tests.factories import make_event
from tests.pipeline_support import esp, rule_doc
from tests.support.kafka import LocalBroker, TopicFactory
from tests.support.service import Deployment
from tests.support.smtp import SMTPServerFactory, SMTPTestServer

RULE = "r-own"


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout}s")
        time.sleep(0.01)


@dataclass
class Harness:
    settings: Settings
    pipeline: Pipeline
    source: SourceConsumer
    loop: asyncio.AbstractEventLoop
    fatal: list[str]

    @property
    def retry_tp(self) -> tuple[str, int]:
        return (self.settings.topics.retry, 0)

    @property
    def lms_tp(self) -> tuple[str, int]:
        return (self.settings.topics.lms, 0)

    def assign(self, *tps: tuple[str, int]) -> None:
        listed = [TopicPartition(t, p) for t, p in tps]
        self.source._consumer.incremental_assign(listed)
        self.source._on_assign(self.source._consumer, listed)

    def revoke(self, *tps: tuple[str, int]) -> None:
        listed = [TopicPartition(t, p) for t, p in tps]
        self.source._on_revoke(self.source._consumer, listed)
        self.source._consumer.incremental_unassign(listed)

    def lose(self, *tps: tuple[str, int]) -> None:
        listed = [TopicPartition(t, p) for t, p in tps]
        self.source._on_lost(self.source._consumer, listed)
        self.source._consumer.incremental_unassign(listed)

    def _group_member(self) -> Consumer:
        return Consumer(
            {"bootstrap.servers": self.settings.kafka.bootstrap_servers, "group.id": self.settings.group_id}
        )

    def commit_elsewhere(self, tp: tuple[str, int], offset: int) -> None:
        """What another member of the group does when it advanced the partition."""
        member = self._group_member()
        try:
            member.commit(offsets=[TopicPartition(tp[0], tp[1], offset)], asynchronous=False)
        finally:
            member.close()

    def committed(self, tp: tuple[str, int]) -> int:
        member = self._group_member()
        try:
            return int(member.committed([TopicPartition(tp[0], tp[1])], timeout=10)[0].offset)
        finally:
            member.close()

    def retry_record(self, offset: int, due_in: float, rule_id: str = RULE, lead: str = "L") -> Message:
        now = datetime.now(UTC)
        record = RetryRecord(
            event=make_event(lead_id=f"{lead}{offset}"),
            rule_id=rule_id,
            attempts=1,
            due_at=now + timedelta(seconds=due_in),
            first_failed_at=now,
            origin=SourcePosition(topic=self.settings.topics.lms, partition=0, offset=offset),
            last_error="451 try later",
        )
        topic, partition = self.retry_tp
        return Message(topic=topic, partition=partition, offset=offset, value=record.encode(), key=b"k")

    def event_record(self, offset: int, lead: str = "E") -> Message:
        value = encode_json(make_event(lead_id=f"{lead}{offset}"))
        topic, partition = self.lms_tp
        return Message(topic=topic, partition=partition, offset=offset, value=value, key=b"k")


@pytest.fixture
def make_harness(kafka_bootstrap: str, topic_factory: TopicFactory) -> Iterator[Callable[..., Harness]]:
    cleanups: list[Callable[[], None]] = []

    def make(server: SMTPTestServer | None = None, rules: bool = True, **pipeline: Any) -> Harness:
        deployment = Deployment.create(kafka_bootstrap, topic_factory, partitions=1)
        settings = Settings(
            kafka={"bootstrap_servers": kafka_bootstrap},
            group_id=deployment.group_id,
            topics=deployment.topics,
            esp_connections={"default": esp(server)} if server is not None else {},
            pipeline={"drain_timeout_seconds": 10, **pipeline},
        )
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="test-loop", daemon=True)
        thread.start()
        compiled = [compile_rule(Rule.model_validate(rule_doc(RULE)))] if rules else []
        index = RuleIndex(compiled)
        producer = AsyncProducer(settings.kafka_config(), name="outcomes")
        handoff = RetryHandoff(settings.kafka_config(), settings.group_id)
        deliverer = MailDeliverer(settings)
        processor = RecordProcessor(
            settings,
            EventDecoder(settings.pipeline.input_format, registry_lookup(settings.schema_registry)),
            lambda: index,
            deliverer,
            producer,
            handoff,
            lambda tp, offset: pipeline_.already_delivered(tp, offset),
        )
        pipeline_ = Pipeline(settings, loop, processor)
        fatal: list[str] = []
        source = SourceConsumer(
            settings.kafka_config(**{"group.id": settings.group_id}),
            [settings.topics.lms, settings.topics.call_logic],
            settings.topics.retry,
            pipeline_,
            max_pending=settings.pipeline.max_in_flight,
            max_retry_pending=settings.pipeline.max_retry_pending,
            commit_interval=1.0,
            drain_timeout=settings.pipeline.drain_timeout_seconds,
            on_fatal=fatal.append,
        )

        def cleanup() -> None:
            asyncio.run_coroutine_threadsafe(deliverer.close(), loop).result(10)
            producer.close(10)
            handoff.close()
            source._consumer.close()
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

        cleanups.append(cleanup)
        return Harness(settings, pipeline_, source, loop, fatal)

    yield make
    for cleanup in cleanups:
        cleanup()


def test_a_partition_given_back_further_on_commits_its_new_records(
    make_harness: Callable[..., Harness],
) -> None:
    """Revoked at offset 100 (a retry there waiting for its due time, abandoned by the revoke) and
    given back at 5000 after another member advanced it: 5000-5099 finishing makes 5100 committable
    (before, the abandoned offset 100 stayed pending: nothing was committed again, or 100, a rewind)."""
    h = make_harness()
    tp = h.retry_tp
    h.assign(tp)
    h.pipeline.on_records([h.retry_record(o, due_in=-1, rule_id="deleted") for o in range(100)])
    wait_for(lambda: h.pipeline.committable({tp}) == {tp: 100}, 60, "offsets 0-99 done")
    h.pipeline.on_records([h.retry_record(100, due_in=3600)])
    wait_for(lambda: h.pipeline.in_flight() == 1, 10, "the retry at 100 waiting")
    h.revoke(tp)
    assert h.committed(tp) == 100
    assert h.pipeline.in_flight() == 0, "the waiting retry was not abandoned by the revoke"
    h.commit_elsewhere(tp, 5000)  # another member did 100-4999
    h.assign(tp)
    h.pipeline.on_records([h.retry_record(o, due_in=-1, rule_id="deleted") for o in range(5000, 5100)])
    wait_for(lambda: h.pipeline.backlog() == (0, 0), 60, "5000-5099 done")
    assert h.pipeline.committable({tp}) == {tp: 5100}
    assert h.fatal == []


def test_a_revoke_waits_for_the_mail_being_sent_and_abandons_only_the_waiting_retry(
    make_harness: Callable[..., Harness], smtp_server_factory: SMTPServerFactory
) -> None:
    """A revoke while a retry and an event are sending (the server takes 1.5 s to answer DATA) and
    another retry waits for its due time: the first two are finished (their mails, their outcomes
    written, their offsets committed), the third abandoned (before, the retries were all cancelled
    and the mail in DATA was sent again by the next owner)."""
    server = smtp_server_factory("plain", data_reply_delay=1.5)
    h = make_harness(server)
    retry_tp, lms_tp = h.retry_tp, h.lms_tp
    h.assign(retry_tp, lms_tp)
    h.pipeline.on_records([h.retry_record(0, due_in=-1), h.retry_record(1, due_in=3600), h.event_record(0)])
    wait_for(lambda: h.pipeline.in_flight() == 3, 10, "three tasks running")
    server.wait_until(lambda: server.attempts >= 2, 10, "both mails on the wire")
    h.revoke(retry_tp, lms_tp)
    assert len(server.messages) == 2, "the mails being sent were not finished"
    assert h.committed(retry_tp) == 1, "the sent retry's offset was not committed on revoke"
    assert h.committed(lms_tp) == 1, "the sent event's offset was not committed on revoke"
    assert h.pipeline.in_flight() == 0
    assert h.fatal == []


def test_a_lost_partition_cancels_its_waiting_work(
    make_harness: Callable[..., Harness], smtp_server_factory: SMTPServerFactory
) -> None:
    """Lost (another member owns it already): a retry sleeping until its due time and deliveries
    queued for a mail slot are cancelled at once and send nothing (before, they kept running, and
    old and new owner both sent them); the mail already being sent is finished."""
    server = smtp_server_factory("plain", data_reply_delay=1.0)
    h = make_harness(server, max_in_flight=1)
    retry_tp, lms_tp = h.retry_tp, h.lms_tp
    h.assign(retry_tp, lms_tp)
    h.pipeline.on_records([h.event_record(o) for o in range(3)])  # one sends, two wait for the slot
    h.pipeline.on_records([h.retry_record(0, due_in=2.0)])  # due while the loss is being handled
    wait_for(lambda: h.pipeline.in_flight() == 4, 10, "four tasks")
    h.lose(retry_tp, lms_tp)
    wait_for(lambda: h.pipeline.in_flight() <= 1, 5, "the waiting work cancelled")
    wait_for(lambda: h.pipeline.in_flight() == 0, 30, "the mail being sent finished")
    assert len(server.messages) == 1, f"{len(server.messages)} mails sent for a lost partition"
    outcomes = read_topic(h.settings.kafka.bootstrap_servers, h.settings.topics.outcomes)
    assert len(outcomes) == 1, f"{len(outcomes)} outcomes: the mail being sent must get its own, alone"
    assert h.pipeline.committable() == {}, "a lost partition has nothing to commit"
    assert h.fatal == []


def test_an_assignment_during_a_broker_restart_is_retried_and_completes(
    make_harness: Callable[..., Harness], local_broker: LocalBroker
) -> None:
    """The assign callback's reads (committed offsets, outcome read-back) meet the broker away: they
    are retried, the service reports itself stuck meanwhile, and the assignment completes once the
    broker is back (before, the error was raised out of the callback)."""
    h = make_harness(rules=False)
    tp = h.lms_tp
    errors: list[BaseException] = []

    def assign() -> None:
        try:
            h.assign(tp)
        except BaseException as exc:
            errors.append(exc)

    local_broker.stop()
    worker = threading.Thread(target=assign)
    try:
        worker.start()
        wait_for(
            lambda: bool(errors) or _retries(h) > 0,
            60,
            "a retried broker call",
        )
        assert not errors, f"the assign callback raised: {errors[0]!r}"
        wait_for(lambda: not h.source.alive(stale_after=1.0), 30, "the service reported as stuck")
    finally:
        local_broker.start()
    worker.join(120)
    assert not worker.is_alive(), "the assignment never completed after the broker came back"
    assert not errors, f"the assign callback raised: {errors[0]!r}"
    assert h.fatal == []
    assert h.source.assignment_received.is_set()
    assert tp in h.pipeline.spans()
    assert h.source.alive(stale_after=1.0)


def _retries(h: Harness) -> int:
    """Broker calls retried so far by the source's callbacks and the pipeline's start-up reads."""
    return sum(
        getattr(getattr(o, name, None), "retries", 0)
        for o, name in ((h.source, "calls"), (h.pipeline, "reads"))
    )


class _CountingCondition(threading.Condition):
    """A condition that counts the notifications that woke a waiting thread."""

    wakes = 0

    def notify(self, n: int = 1) -> None:
        if n and self._waiters:  # type: ignore[attr-defined]
            self.wakes += 1
        super().notify(n)


def test_the_source_waiting_for_room_is_woken_once_there_is_room_not_per_finished_record(
    make_harness: Callable[..., Harness], smtp_server_factory: SMTPServerFactory
) -> None:
    """The source thread waits for fewer than 3 pending records while 12 are sent one at a time: it
    is woken once, when the third-last finishes (before, every finished record woke it to find the
    pipeline still full, a thread switch per mail under load)."""
    server = smtp_server_factory("plain", data_reply_delay=0.2)
    h = make_harness(server, max_in_flight=1)
    h.assign(h.lms_tp)
    counting = _CountingCondition(h.pipeline._lock)
    h.pipeline._room = counting
    h.pipeline.on_records([h.event_record(o) for o in range(12)])
    room: list[bool] = []
    waiter = threading.Thread(target=lambda: room.append(h.pipeline.wait_for_room(3, 60)))
    waiter.start()
    waiter.join(60)
    assert room == [True]
    assert h.pipeline.backlog()[0] < 3
    assert counting.wakes == 1, f"the waiting source was woken {counting.wakes} times"
    wait_for(lambda: h.pipeline.in_flight() == 0, 30, "every mail sent")
    assert len(server.messages) == 12
    assert h.fatal == []
