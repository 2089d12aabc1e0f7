"""The alerts topic read back: the last decision (fired or resolved) and the last firing per rule.

An aggregator replica reads it on start and again whenever it is assigned outcome partitions, so a
restarted replica, or the new owner of a rule, neither repeats an alert inside the frequency period
nor forgets that one is active. Read-only: it never writes or commits.

Broker calls retry transient errors (:mod:`consumer.kafka_retry`), and a partition counts as read
once its end-of-partition event arrives, so a transaction marker at the end is no wait.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from consumer.aggregator.records import to_ms
from consumer.aggregator.thresholds import AlertState
from consumer.errors import CodecError
from consumer.kafka.fetching import FETCH_DEFAULTS
from consumer.kafka.readers import unused_group_error
from consumer.kafka_retry import BrokerCalls
from consumer.outcomes.codec import decode_alert
from consumer.outcomes.model import Alert, AlertKind
from consumer.topic_reader import TopicReadError

log = logging.getLogger(__name__)


class DecisionLog:
    """Earlier alert decisions per rule, kept up to date by :meth:`refresh`."""

    def __init__(
        self, config: dict[str, Any], topic: str, timeout: float = 30.0, calls: BrokerCalls | None = None
    ) -> None:
        self.topic = topic
        self.timeout = timeout
        self.calls = calls or BrokerCalls()
        self._consumer = Consumer(
            {
                **FETCH_DEFAULTS,
                **config,
                "group.id": f"eventmail-alerts-reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,
            }
        )
        self._positions: dict[int, int] = {}
        self._states: dict[str, AlertState] = {}
        self._lock = threading.Lock()
        self.loaded = False
        self.records = 0

    def state_for(self, rule_id: str) -> AlertState:
        """A copy of what the log says about ``rule_id`` (a fresh state when nothing)."""
        with self._lock:
            known = self._states.get(rule_id)
            if known is None:
                return AlertState()
            return AlertState(known.last_fired_ms, known.active, known.decided_until_ms)

    def remember(self, alert: Alert) -> None:
        with self._lock:
            state = self._states.setdefault(alert.rule_id, AlertState())
            state.remember(alert.kind is AlertKind.FIRED, to_ms(alert))

    def refresh(self) -> int:
        """Read every partition from where the last refresh stopped to its current end."""
        consumer = self._consumer
        try:
            metadata = self.calls.call(
                "alerts topic metadata", lambda: consumer.list_topics(self.topic, timeout=self.timeout)
            ).topics.get(self.topic)
        except KafkaException as exc:
            raise TopicReadError(f"cannot reach Kafka to read {self.topic}: {exc}") from None
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise TopicReadError(f"topic {self.topic} does not exist")
        todo: dict[int, int] = {}
        starts: dict[int, int] = {}
        for p in sorted(metadata.partitions):
            low, high = self.calls.watermarks(consumer, self.topic, p, self.timeout)
            start = max(self._positions.get(p, low), low)
            self._positions[p] = start
            if start < high:
                todo[p], starts[p] = high, start
        read = 0
        if todo:
            self._consumer.assign([TopicPartition(self.topic, p, starts[p]) for p in todo])
            deadline = time.monotonic() + self.timeout
            while todo:
                if time.monotonic() > deadline:
                    raise TopicReadError(f"reading {self.topic} did not reach its end in {self.timeout:.0f}s")
                for msg in self._consumer.consume(num_messages=500, timeout=0.2):
                    error = msg.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            todo.pop(msg.partition() or 0, None)
                            end = msg.offset()
                            if end is not None and end >= 0:
                                self._positions[msg.partition() or 0] = end
                        elif unused_group_error(error):
                            pass  # its throwaway group.id is never used: no group ACL needed
                        elif error.fatal() or not error.retriable():
                            raise TopicReadError(f"reading {self.topic}: {error.str()}")
                        else:
                            log.warning("reading the alerts topic", extra={"kafka_error": error.str()})
                        continue
                    partition, offset = msg.partition() or 0, msg.offset() or 0
                    self._positions[partition] = offset + 1
                    if partition in todo and offset + 1 >= todo[partition]:
                        del todo[partition]
                    read += 1
                    try:
                        self.remember(decode_alert(msg.value() or b""))
                    except CodecError as exc:
                        log.warning(
                            "skipping an undecodable alert record",
                            extra={"partition": partition, "offset": offset, "error": str(exc)},
                        )
            self._consumer.unassign()
        self.records += read
        self.loaded = True
        return read

    def close(self) -> None:
        self._consumer.close()
