"""The demo's traffic: a thread that publishes the planned records, and one that watches what comes
out (outcomes, alerts, dead letters) and keeps the tally the terminal shows.

Both talk to Kafka only through their own client, never block the caller, and stop when asked.
The watcher reads committed records only (outcomes may be written in transactions), from the
beginning of the demo's own topics, and counts a delivery once however often its outcome appears.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition

from consumer.demo.plan import Record
from consumer.demo.stack import client_config
from consumer.errors import CodecError
from consumer.events.triggers import Platform
from consumer.outcomes.codec import decode_alert, decode_outcome
from consumer.outcomes.model import Alert, AlertKind, Outcome, OutcomeStatus

FINAL = (OutcomeStatus.SENT, OutcomeStatus.FAILED)


class Publisher(threading.Thread):
    """Publishes ``records`` at ``rate`` per second (0: as fast as the broker takes them)."""

    def __init__(
        self, bootstrap: str, topics: dict[Platform, str], records: list[Record], rate: float
    ) -> None:
        super().__init__(name="demo-publisher", daemon=True)
        self.topics = topics
        self.records = records
        self.rate = rate
        self.config = client_config(bootstrap, **{"enable.idempotence": True, "acks": "all", "linger.ms": 5})
        self.acknowledged = 0
        self.errors: list[str] = []
        self.finished = threading.Event()
        self._halt = threading.Event()

    def _delivered(self, error: Any, _msg: Message) -> None:
        if error is None:
            self.acknowledged += 1
        else:
            self.errors.append(str(error))

    def run(self) -> None:
        producer = Producer(self.config)  # lives and dies with this thread
        start = time.monotonic()
        try:
            for n, record in enumerate(self.records):
                if self._halt.is_set():
                    break
                if self.rate > 0:
                    delay = start + n / self.rate - time.monotonic()
                    if delay > 0 and self._halt.wait(delay):
                        break
                producer.produce(
                    self.topics[record.platform],
                    key=record.key,
                    value=record.value,
                    headers=list(record.headers),
                    on_delivery=self._delivered,
                )
                producer.poll(0)
            remaining = producer.flush(5 if self._halt.is_set() else 60)
            if remaining and not self._halt.is_set():
                self.errors.append(f"{remaining} records not acknowledged within 60s")
        finally:
            self.finished.set()

    def stop(self) -> None:
        self._halt.set()
        self.join(15)


@dataclass
class Tally:
    """What the demo has seen come out so far."""

    outcomes: deque[Outcome] = field(default_factory=lambda: deque(maxlen=200))
    records: Counter[str] = field(default_factory=Counter)  # outcome records by status
    finals: dict[tuple[str, str], str] = field(default_factory=dict)  # (event id, rule id) -> status
    alerts: list[Alert] = field(default_factory=list)
    dead_letters: int = 0
    dead_letter_errors: Counter[str] = field(default_factory=Counter)
    undecodable: int = 0
    seen: int = 0  # outcomes seen in total (the position of the newest in the stream)

    def final(self, status: str) -> int:
        return sum(1 for s in self.finals.values() if s == status)

    def alerts_of(self, kind: AlertKind) -> list[Alert]:
        return [a for a in self.alerts if a.kind is kind]

    def copy(self) -> Tally:
        return Tally(
            deque(self.outcomes, maxlen=self.outcomes.maxlen),
            Counter(self.records),
            dict(self.finals),
            list(self.alerts),
            self.dead_letters,
            Counter(self.dead_letter_errors),
            self.undecodable,
            self.seen,
        )


class Watcher(threading.Thread):
    """Reads the demo's outcome, alert and dead-letter topics from their beginning."""

    def __init__(self, bootstrap: str, outcomes: str, alerts: str, dlq: str) -> None:
        super().__init__(name="demo-watcher", daemon=True)
        self.topics = {"outcomes": outcomes, "alerts": alerts, "dlq": dlq}
        self.consumer = Consumer(
            client_config(
                bootstrap,
                **{
                    "group.id": f"eventmail-demo-watcher-{uuid.uuid4().hex}",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                },
            )
        )
        self._tally = Tally()
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.error: str | None = None

    def snapshot(self) -> Tally:
        with self._lock:
            return self._tally.copy()

    def run(self) -> None:
        try:
            partitions: list[TopicPartition] = []
            metadata = self.consumer.list_topics(timeout=30).topics
            for topic in self.topics.values():
                for p in metadata[topic].partitions:
                    partitions.append(TopicPartition(topic, p, OFFSET_BEGINNING))
            self.consumer.assign(partitions)
            while not self._halt.is_set():
                batch = self.consumer.consume(num_messages=500, timeout=0.2)
                if batch:
                    with self._lock:
                        for msg in batch:
                            self._take(msg)
        except Exception as exc:  # shown in the summary; the demo goes on without a tally
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.consumer.close()

    def _take(self, msg: Message) -> None:
        error = msg.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                self.error = error.str()
            return
        tally, topic = self._tally, msg.topic()
        if topic == self.topics["dlq"]:
            tally.dead_letters += 1
            headers = dict(msg.headers() or [])
            reason = headers.get("eventmail.error") or b"?"
            text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
            tally.dead_letter_errors[text] += 1
            return
        try:
            if topic == self.topics["alerts"]:
                tally.alerts.append(decode_alert(msg.value() or b""))
                return
            outcome = decode_outcome(msg.value() or b"")
        except CodecError:
            tally.undecodable += 1
            return
        tally.seen += 1
        tally.outcomes.append(outcome)
        tally.records[outcome.status.value] += 1
        if outcome.status in FINAL and outcome.event_id is not None:
            tally.finals.setdefault((outcome.event_id, outcome.rule_id), outcome.status.value)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
