"""The outcome read-back after an assignment, and the retry hand-off's transactions, on the real broker.

- Outcomes are told apart by their ``eventmail.source`` header, without decoding; outcomes without
  it (written before it existed) are still decoded and counted.
- A read-back that runs out of time returns what it read and logs it: never an exception that
  fails the assignment (which crash-loops the group).
- A hand-off transaction left open by a killed process is aborted as soon as a process with the same
  (stable) transactional id starts, so the outcomes behind it are read at once, not after the
  transaction timeout.
- A hand-off cancelled while its transaction thread runs does not let the next one begin meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest
from confluent_kafka import Producer

from consumer.events.codec import EventDecoder
from consumer.outcomes.codec import encode_outcome
from consumer.outcomes.model import Outcome, OutcomeStatus, SourcePosition
from consumer.pipeline.dedup import read_delivered
from consumer.pipeline.deliver import MailDeliverer
from consumer.pipeline.handoff import TRANSACTION_TIMEOUT_MS, RetryHandoff
from consumer.pipeline.outcome_writer import source_header
from consumer.pipeline.producer import AsyncProducer
from consumer.pipeline.records import RecordProcessor
from consumer.pipeline.service import Pipeline
from consumer.rules.matching import RuleIndex
from consumer.settings import Settings
from tests.chaos_support import open_hanging_transaction, read_topic
from tests.support.kafka import TopicFactory
from tests.support.service import Deployment

SOURCE = "lms.events"


def _outcome(rule: str, partition: int, offset: int, status: OutcomeStatus = OutcomeStatus.SENT) -> Outcome:
    return Outcome(
        event_id=f"ev-{partition}-{offset}",
        rule_id=rule,
        status=status,
        source=SourcePosition(topic=SOURCE, partition=partition, offset=offset),
    )


def _write(
    bootstrap: str, topic: str, outcomes: list[Outcome], headers: bool = True, partition: int = 0
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1_000_000})
    for outcome in outcomes:
        producer.produce(
            topic,
            key=outcome.rule_id.encode(),
            value=encode_outcome(outcome),
            headers=source_header(outcome.source) if headers else None,
            partition=partition,
        )
        producer.poll(0)
    assert producer.flush(60) == 0


def test_outcomes_are_selected_by_their_source_header_and_old_ones_decoded(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory("outcomes", 2)
    _write(kafka_bootstrap, topic, [_outcome("r-a", 0, n) for n in range(0, 40)])  # partition 0: 0..39
    _write(kafka_bootstrap, topic, [_outcome("r-b", 1, n) for n in range(0, 40)], partition=1)  # not ours
    _write(kafka_bootstrap, topic, [_outcome("r-old", 0, 30)], headers=False)  # before the header existed
    _write(kafka_bootstrap, topic, [_outcome("r-cfg", 0, 35, OutcomeStatus.CONFIG_ERROR)], headers=False)
    found = read_delivered({"bootstrap.servers": kafka_bootstrap}, topic, {(SOURCE, 0): 25}, 600)
    assert set(found) == {(SOURCE, 0)}
    assert sorted(found[(SOURCE, 0)]) == list(range(25, 40))
    assert found[(SOURCE, 0)][30] == {"r-a", "r-old"}
    assert found[(SOURCE, 0)][35] == {"r-a"}


def test_a_read_back_out_of_time_returns_what_it_read_and_says_so(
    kafka_bootstrap: str, topic_factory: TopicFactory, caplog: pytest.LogCaptureFixture
) -> None:
    topic = topic_factory("outcomes-many", 1)
    _write(kafka_bootstrap, topic, [_outcome("r", 0, n) for n in range(20_000)])
    with caplog.at_level(logging.INFO, logger="consumer.pipeline.dedup"):
        found = read_delivered(
            {"bootstrap.servers": kafka_bootstrap}, topic, {(SOURCE, 0): 0}, 600, timeout=0.05
        )
    assert len(found.get((SOURCE, 0), {})) < 20_000
    assert any("did not finish in time" in r.getMessage() for r in caplog.records)
    started = time.monotonic()
    found = read_delivered({"bootstrap.servers": kafka_bootstrap}, topic, {(SOURCE, 0): 0}, 600)
    elapsed = time.monotonic() - started
    assert len(found[(SOURCE, 0)]) == 20_000
    print(f"read-back of 20,000 outcomes (all of the assigned partition): {elapsed:.2f}s")


KILLED_TRANSACTION = textwrap.dedent(
    """
    import os, signal, sys
    from confluent_kafka import Producer
    from consumer.outcomes.codec import encode_outcome
    from consumer.outcomes.model import Outcome, OutcomeStatus, SourcePosition
    bootstrap, topic, tx_id = sys.argv[1:4]
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": tx_id, "linger.ms": 0})
    producer.init_transactions(30)
    producer.begin_transaction()
    outcome = Outcome(rule_id="r-open", status=OutcomeStatus.RETRYING,
                      source=SourcePosition(topic="lms.events", partition=0, offset=1))
    producer.produce(topic, key=b"r-open", value=encode_outcome(outcome), partition=0)
    producer.flush(30)
    print("open", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_transaction_left_open_by_a_killed_process_is_fenced_by_its_successor(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory("outcomes-tx", 1)
    tx_id = f"g-{uuid.uuid4().hex[:8]}.retry.host.1"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_TRANSACTION, kafka_bootstrap, topic, tx_id],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert killed.stdout.strip() == "open", killed.stderr
    _write(kafka_bootstrap, topic, [_outcome("r-later", 0, n) for n in range(2, 12)])  # behind the open one
    config = {"bootstrap.servers": kafka_bootstrap}
    started = time.monotonic()
    successor = RetryHandoff(config, "unused", tx_id=tx_id)  # the restarted process: same id
    try:
        found: dict[int, set[str]] = {}
        while time.monotonic() - started < 12:  # well inside the broker's default 60 s timeout
            found = read_delivered(config, topic, {(SOURCE, 0): 0}, 600, timeout=2).get((SOURCE, 0), {})
            if len(found) >= 10:
                break
        assert sorted(found) == list(range(2, 12))
        assert 1 not in found  # the killed process's outcome was aborted, never committed
    finally:
        successor.close()


def test_a_read_back_waits_for_a_transaction_nobody_fences_and_reads_what_lies_behind_it(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    """A hand-off transaction left open by a process that never comes back under its id (another
    host) hides the outcomes written after it from ``read_committed`` readers until the broker aborts
    it. The read-back reads to the end the partition had when it began (its high watermark, not the
    end a ``read_committed`` reader is shown, which stops at the open transaction), so it waits for the
    abort and then has the outcomes behind it (before, it ended at once without them: each of those
    mails was sent again by a new owner)."""
    topic = topic_factory("outcomes-hung", 1)
    opened = open_hanging_transaction(kafka_bootstrap, topic, "g-hung", "r-open", [(SOURCE, 0, 1)])
    _write(kafka_bootstrap, topic, [_outcome("r-later", 0, n) for n in range(2, 12)])  # behind the open one
    found = read_delivered({"bootstrap.servers": kafka_bootstrap}, topic, {(SOURCE, 0): 0}, 600, timeout=90)
    waited = time.time() - opened
    assert sorted(found.get((SOURCE, 0), {})) == list(range(2, 12)), f"after {waited:.1f}s"
    assert waited >= TRANSACTION_TIMEOUT_MS / 1000 - 1  # it did wait for the abort
    print(f"read-back behind a transaction nobody fences: {waited:.1f}s")


def test_a_cancelled_hand_off_does_not_let_the_next_one_begin_meanwhile(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    outcomes, retry = topic_factory("outcomes-c", 1), topic_factory("retry-c", 1)
    handoff = RetryHandoff({"bootstrap.servers": kafka_bootstrap}, f"g-{uuid.uuid4().hex[:8]}")

    async def scenario() -> None:
        for n in range(5):
            first = asyncio.create_task(
                handoff.handoff((retry, b"k", f"r{n}a".encode()), (outcomes, b"k", f"o{n}a".encode()))
            )
            await asyncio.sleep(0)  # let it start its transaction thread
            await asyncio.sleep(0)
            first.cancel()
            await handoff.handoff((retry, b"k", f"r{n}b".encode()), (outcomes, b"k", f"o{n}b".encode()))

    try:
        asyncio.run(scenario())
    finally:
        handoff.close()
    values = {m.value() for m in read_topic(kafka_bootstrap, outcomes)}
    assert {f"o{n}b".encode() for n in range(5)} <= values


# --- incremental across assignments ------------------------------------------------------------------
#: The look-back window of the test: WINDOW outcomes already there (20 s at 3,000 outcomes/s), then
#: NEW more before each re-assignment (1 s at 3,000 outcomes/s).
WINDOW = 60_000
NEW = 3_000
SOURCES = 6  # source partitions named in the outcomes; the replica owns 0 and 1


class _Pipe:
    """A real :class:`Pipeline` (record processor, producers, its loop in a thread) whose rebalance
    callbacks the test calls in librdkafka's order; each read-back's ``scanned`` count is logged."""

    def __init__(self, bootstrap: str, topic_factory: TopicFactory) -> None:
        deployment = Deployment.create(bootstrap, topic_factory, partitions=SOURCES)
        self.settings = Settings(
            kafka={"bootstrap_servers": bootstrap},
            group_id=deployment.group_id,
            topics=deployment.topics,
            esp_connections={},
            pipeline={"drain_timeout_seconds": 5, "dedup_lookback_seconds": 600},
        )
        self.source = self.settings.topics.lms
        self.outcomes = self.settings.topics.outcomes
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()
        config = self.settings.kafka_config()
        self.producer = AsyncProducer(config, name="outcomes")
        self.handoff = RetryHandoff(config, self.settings.group_id)
        self.deliverer = MailDeliverer(self.settings)
        processor = RecordProcessor(
            self.settings,
            EventDecoder(self.settings.pipeline.input_format, None),
            lambda: RuleIndex([]),
            self.deliverer,
            self.producer,
            self.handoff,
            lambda tp, offset: self.pipeline.already_delivered(tp, offset),
        )
        self.pipeline = Pipeline(self.settings, self.loop, processor)

    def write(self, first: int, count: int) -> dict[tuple[int, int], set[str]]:
        """``count`` outcomes of source offsets ``first``... spread over every source partition and
        every outcome partition (keyed by rule id); what was written, by (partition, offset)."""
        written: dict[tuple[int, int], set[str]] = {}
        producer = Producer({"bootstrap.servers": self.settings.kafka.bootstrap_servers, "linger.ms": 20})
        for n in range(first, first + count):
            partition, offset, rule = n % SOURCES, n // SOURCES, f"r-{n % 7}"
            outcome = Outcome(
                rule_id=rule,
                status=OutcomeStatus.SENT,
                source=SourcePosition(topic=self.source, partition=partition, offset=offset),
            )
            written.setdefault((partition, offset), set()).add(rule)
            value, headers = encode_outcome(outcome), source_header(outcome.source)
            producer.produce(self.outcomes, key=rule.encode(), value=value, headers=headers)
            producer.poll(0)
        assert producer.flush(60) == 0
        return written

    def assign(self, committed: dict[int, int], caplog: pytest.LogCaptureFixture) -> tuple[int, float]:
        """``on_assigned`` for these source partitions: (outcomes scanned, seconds)."""
        caplog.clear()
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="consumer.pipeline.dedup"):
            self.pipeline.on_assigned({(self.source, p): o for p, o in committed.items()})
        elapsed = time.monotonic() - started
        done = [r for r in caplog.records if r.getMessage() == "outcome read-back done"]
        assert len(done) == 1, [r.getMessage() for r in caplog.records]
        return int(getattr(done[0], "scanned")), elapsed  # noqa: B009

    def revoke(self, partitions: set[int]) -> None:
        keys = {(self.source, p) for p in partitions}
        self.pipeline.drain(keys, 5)
        self.pipeline.on_revoked(keys)

    def skipped(self, partition: int, offsets: range) -> dict[int, set[str]]:
        """What the pipeline would skip as already delivered, per offset (each asked once)."""
        found = {o: self.pipeline.already_delivered((self.source, partition), o) for o in offsets}
        return {o: rules for o, rules in found.items() if rules}

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.deliverer.close(), self.loop).result(10)
        self.producer.close(10)
        self.handoff.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _expected(written: dict[tuple[int, int], set[str]], partition: int, since: int) -> dict[int, set[str]]:
    return {o: rules for (p, o), rules in written.items() if p == partition and o >= since}


def test_a_reassignment_reads_only_the_new_outcomes_and_skips_every_delivered_mail(
    kafka_bootstrap: str, topic_factory: TopicFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A partition given back to the same process reads the outcomes written since its last
    read-back, not its whole window again, and still knows every delivered mail of its uncommitted
    records: those of the first read (kept) and those written meanwhile (read now). A committed offset
    further on drops what lies below it; one further back (the group rewound) reads the window again."""
    pipe = _Pipe(kafka_bootstrap, topic_factory)
    try:
        written = pipe.write(0, WINDOW)
        top = WINDOW // SOURCES  # offsets per source partition so far
        scanned, first = pipe.assign({0: 100, 1: -1001}, caplog)  # 1: nothing committed yet
        assert scanned == WINDOW
        assert pipe.skipped(0, range(top)) == _expected(written, 0, 100)
        assert pipe.skipped(1, range(top)) == _expected(written, 1, 0)
        figures = [f"first assignment: {WINDOW:,} outcomes in {first * 1000:.0f} ms"]
        for round_ in range(3):  # revoked, NEW more outcomes, assigned again: nothing committed since
            pipe.revoke({0, 1})
            written.update(pipe.write(WINDOW + round_ * NEW, NEW))
            top = (WINDOW + (round_ + 1) * NEW) // SOURCES
            scanned, seconds = pipe.assign({0: 100, 1: -1001}, caplog)
            assert scanned == NEW, f"re-assignment {round_ + 1} scanned {scanned:,}, not the {NEW:,} new"
            assert pipe.skipped(0, range(top)) == _expected(written, 0, 100)
            assert pipe.skipped(1, range(top)) == _expected(written, 1, 0)
            figures.append(f"re-assignment {round_ + 1}: {scanned:,} outcomes in {seconds * 1000:.0f} ms")
        pipe.revoke({0, 1})
        scanned, _ = pipe.assign({0: 5_000, 1: 2_000}, caplog)  # another member committed meanwhile
        assert scanned == 0
        assert pipe.skipped(0, range(top)) == _expected(written, 0, 5_000)
        assert pipe.skipped(1, range(top)) == _expected(written, 1, 2_000)
        pipe.revoke({0, 1})
        scanned, _ = pipe.assign({0: 50, 1: 2_000}, caplog)  # rewound below what was kept: read again
        assert scanned == WINDOW + 3 * NEW
        assert pipe.skipped(0, range(top)) == _expected(written, 0, 50)
        assert pipe.skipped(1, range(top)) == _expected(written, 1, 2_000)
        print("read-back per assignment | " + "; ".join(figures))
    finally:
        pipe.close()
