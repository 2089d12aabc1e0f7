"""A broker outage longer than the retry hand-off's transaction timeout is waited out, not fatal.

librdkafka caps the messages of a transaction at ``transaction.timeout.ms``: a hand-off in progress
while the broker is away longer than that fails (abortable, then ``INVALID_TXN_STATE`` when the
abort reaches a coordinator that already aborted it on its own, a fatal error of the producer). It
used to stop the replica. Here: the whole service through such an outage, and the two recovery
paths on their own (a fenced hand-off producer, a fatal error of the outcome producer), each on the
real broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Producer
from prometheus_client import REGISTRY

from consumer.outcomes.model import OutcomeStatus
from consumer.pipeline.handoff import RetryHandoff
from consumer.pipeline.producer import AsyncProducer
from tests.chaos_support import FAST, QUICK_RETRIES, group_lag, read_outcomes, read_topic, wait_until
from tests.factories import make_event
from tests.pipeline_support import apply_rules, esp, publish, rule_doc
from tests.support.kafka import LocalBroker, TopicFactory
from tests.support.service import Deployment, LogRecord, ServiceProcess
from tests.support.smtp import SMTPServerFactory, SMTPTestServer

#: The hand-off's transaction timeout in this test (seconds): the outage lasts longer.
TIMEOUT = 3
IN_FLIGHT = 32


def _copies(server: SMTPTestServer, expected: int) -> int:
    """Every mail at the server, each at most twice: the number of second copies."""
    counts = Counter(server.message_ids)
    assert len(counts) == expected, f"{expected - len(counts)} mails missing"
    assert max(counts.values()) <= 2, f"mails sent three times or more: {counts.most_common(3)}"
    return sum(n - 1 for n in counts.values())


def _handoff_failed(record: LogRecord) -> bool:
    """A hand-off that failed a second time while the broker was away (or, before the fix, the
    record's failure that stopped the service at the first)."""
    msg, attempts = record.get("msg"), record.get("failed_attempts", 0)
    return (msg == "hand-off transaction failed again" and attempts >= 2) or (
        msg == "record processing failed; stopping"
    )


def test_a_broker_outage_longer_than_the_handoff_timeout_is_waited_out(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    local_broker: LocalBroker,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
) -> None:
    deployment = Deployment.create(kafka_bootstrap, topic_factory)
    flaky = smtp_server_factory("plain", fail_code=451, fail_times=None)  # 451 until told otherwise
    # one slow connection: the mail taken before the outage is still being sent (and its outcomes
    # written) while the broker is away
    steady = smtp_server_factory("plain", reply_delay=0.1)
    deployment.with_esp({"default": esp(flaky), "other": esp(steady, max_connections=1)})
    apply_rules(
        deployment,
        tmp_path,
        rule_doc("r-retried"),
        rule_doc(
            "r-steady",
            product_id="p-2",
            action={"connection": {"type": "esp", "name": "other"}, "subject": "steady {{ lead_id }}"},
        ),
    )
    env = deployment.env(
        **FAST,
        **QUICK_RETRIES,
        EVENTMAIL_SMTP__IN_PLACE_RETRIES="0",
        EVENTMAIL_PIPELINE__MAX_IN_FLIGHT=str(IN_FLIGHT),
        EVENTMAIL_PIPELINE__HANDOFF_TRANSACTION_TIMEOUT_SECONDS=str(TIMEOUT),
    )
    service = ServiceProcess("run", env, tmp_path).start()
    retried = [make_event(lead_id=f"R{i}") for i in range(20)]
    steady_events = [make_event(lead_id=f"S{i}", product_id="p-2") for i in range(60)]
    try:
        service.wait_ready(timeout=120)
        publish(deployment, retried)
        service.wait_metric("eventmail_mails_retried_total", lambda n: n >= 2 * len(retried), timeout=90)
        publish(deployment, steady_events)
        steady.wait_until(lambda: len(steady.messages) >= 4, timeout=60, what="4 steady mails")
        down_at = time.monotonic()
        local_broker.stop()
        mails_at_stop = len(steady.messages)
        # Down until hand-offs failed on the transaction timeout (twice: the outage is longer than
        # two timeouts) and mail went on meanwhile.
        service.wait_log(_handoff_failed, "a hand-off failed twice", timeout=90)
        steady.wait_until(
            lambda: len(steady.messages) > mails_at_stop, timeout=60, what="mail during the outage"
        )
        flaky.fail_times = flaky.attempts  # from now on the retried mails are taken
        downtime = time.monotonic() - down_at
        local_broker.start()
        assert downtime > TIMEOUT
        flaky.wait_until(
            lambda: len(set(flaky.message_ids)) >= len(retried), timeout=120, what="every retried mail"
        )
        steady.wait_until(
            lambda: len(set(steady.message_ids)) >= len(steady_events), timeout=120, what="every mail"
        )
        expected = {e.event_id for e in retried + steady_events}

        def all_sent() -> bool:
            sent = {o.event_id for o in read_outcomes(deployment) if o.status is OutcomeStatus.SENT}
            return expected <= sent

        wait_until(all_sent, 120, "a sent outcome for every event", every=1.0, running=[service])
        topics = [deployment.topics[t] for t in ("lms", "call_logic", "retry")]
        wait_until(
            lambda: all(n == 0 for n in group_lag(kafka_bootstrap, deployment.group_id, topics).values()),
            60,
            "committed offsets at the end of every partition",
            every=1.0,
            running=[service],
        )
        service.check_alive()
        assert service.get("/healthz")[0] == 200, service.tail()
        assert service.terminate() == 0, service.tail()
    finally:
        if not local_broker.is_running():
            local_broker.start()
        service.stop()
    copies = _copies(flaky, len(retried)) + _copies(steady, len(steady_events))
    # The only copies allowed are those of docs/delivery.md, "Lost partitions": the outage (stop and
    # start of the broker included) outlasts the group session, and a record in flight then (its
    # mail, or the hand-off after it) is done again by the new assignment: at most one per record in
    # flight.
    lost = service.logged("partitions lost")
    assert copies == 0 or lost, f"{copies} copies though no partition was lost"
    assert copies <= IN_FLIGHT, copies


def test_a_fenced_handoff_producer_is_replaced_and_writes_its_transaction_once(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    retry, outcomes = topic_factory("retry-fenced", 1), topic_factory("outcomes-fenced", 1)
    tx_id = f"g-{uuid.uuid4().hex[:8]}.retry.host.1"
    config = {"bootstrap.servers": kafka_bootstrap}
    handoff = RetryHandoff(config, "unused", tx_id=tx_id, transaction_timeout_ms=10_000)
    rival = Producer({**config, "transactional.id": tx_id})
    try:
        asyncio.run(handoff.handoff((retry, b"k", b"r0"), (outcomes, b"k", b"o0")))
        rival.init_transactions(30)  # a new epoch for the id: the hand-off's producer is fenced (fatal)
        asyncio.run(handoff.handoff((retry, b"k", b"r1"), (outcomes, b"k", b"o1")))
        assert handoff.recreated >= 1
        asyncio.run(handoff.handoff((retry, b"k", b"r2"), (outcomes, b"k", b"o2")))
    finally:
        handoff.close()
    assert [m.value() for m in read_topic(kafka_bootstrap, retry)] == [b"r0", b"r1", b"r2"]
    assert [m.value() for m in read_topic(kafka_bootstrap, outcomes)] == [b"o0", b"o1", b"o2"]


def test_a_hand_off_fenced_between_its_records_and_its_commit_is_looked_up_and_written_once(
    kafka_bootstrap: str, topic_factory: TopicFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Every record acknowledged, then the producer fenced before its commit: the transaction may
    have been committed, so the new producer's hand-off looks the retry record up first (here it
    was aborted by the fencing) and writes it once."""
    retry, outcomes = topic_factory("retry-lookup", 1), topic_factory("outcomes-lookup", 1)
    tx_id = f"g-{uuid.uuid4().hex[:8]}.retry.host.1"
    config = {"bootstrap.servers": kafka_bootstrap}
    handoff = RetryHandoff(config, "unused", tx_id=tx_id, transaction_timeout_ms=10_000)
    rival = Producer({**config, "transactional.id": tx_id})
    commit = handoff._commit
    fenced: list[bool] = []

    def fence_then_commit() -> None:
        if not fenced:
            fenced.append(True)
            assert handoff._producer.flush(30) == 0  # both records of the transaction acknowledged
            rival.init_transactions(30)  # aborts the open transaction and fences the producer
        commit()

    handoff._commit = fence_then_commit  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.INFO, logger="consumer.pipeline.handoff"):
            asyncio.run(handoff.handoff((retry, b"k", b"r1"), (outcomes, b"k", b"o1")))
        assert handoff.recreated == 1
        looked_up = [
            r for r in caplog.records if r.getMessage() == "hand-off looked up after its producer failed"
        ]
        assert [getattr(r, "committed", None) for r in looked_up] == [False]
    finally:
        handoff.close()
    assert [m.value() for m in read_topic(kafka_bootstrap, retry)] == [b"r1"]
    assert [m.value() for m in read_topic(kafka_bootstrap, outcomes)] == [b"o1"]


def test_a_fatal_outcome_producer_error_replaces_the_producer_and_every_send_is_acknowledged(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory("outcomes-fatal", 3)
    producer = AsyncProducer({"bootstrap.servers": kafka_bootstrap}, name="outcomes")
    labels = {"producer": "outcomes"}
    before = REGISTRY.get_sample_value("eventmail_kafka_producers_recreated_total", labels) or 0.0
    errors_before = (
        REGISTRY.get_sample_value("eventmail_kafka_errors_total", {"code": "OUT_OF_ORDER_SEQUENCE_NUMBER"})
        or 0.0
    )
    fatal = KafkaError(
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "ProduceRequest failed: skipped sequence numbers", fatal=True
    )

    async def scenario() -> None:
        await producer.send(topic, b"first")
        sends = [asyncio.create_task(producer.send(topic, f"v{n}".encode(), key=f"k{n}")) for n in range(300)]
        await asyncio.sleep(0)  # every send has produced its record and waits for the ack
        producer._on_error(fatal)  # what librdkafka's error callback reports: this instance is unusable
        acked = await asyncio.gather(*sends)
        assert all(m.error() is None for m in acked)
        await producer.send(topic, b"after")  # the new instance takes records

    try:
        asyncio.run(asyncio.wait_for(scenario(), 120))
        assert producer.recreated == 1
    finally:
        producer.close()
    after = REGISTRY.get_sample_value("eventmail_kafka_producers_recreated_total", labels)
    assert after == before + 1
    errors = REGISTRY.get_sample_value(
        "eventmail_kafka_errors_total", {"code": "OUT_OF_ORDER_SEQUENCE_NUMBER"}
    )
    assert errors == errors_before + 1
    values = Counter(m.value() for m in read_topic(kafka_bootstrap, topic))
    expected = {b"first", b"after", *(f"v{n}".encode() for n in range(300))}
    assert set(values) == expected  # each at least once (one not acknowledged before may be twice)
