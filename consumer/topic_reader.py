"""Reading a whole topic from a point in time: every partition from ``offsets_for_times(since)`` to
the end it had when reading started (or on, with ``follow``). Used by the CLI (``logs``, ``usage``)
and by services that rebuild state from a log. Read-only: it never commits offsets.

A partition is read "to the end" when its end-of-partition event arrives (or a record at the end
offset it had is read): a transaction's commit marker takes the last offset and is never delivered.
Broker calls retry transient errors (a leader moving) with backoff, within ``timeout``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer.errors import EventmailError
from consumer.kafka.fetching import FETCH_DEFAULTS
from consumer.kafka.readers import unused_group_error
from consumer.kafka_retry import BrokerCalls


class TopicReadError(EventmailError, ConnectionError):
    """The topic could not be read (missing, or the brokers did not answer)."""


def read_since(
    config: dict[str, Any],
    topic: str,
    since_ms: int | None,
    *,
    follow: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    timeout: float = 30.0,
    calls: BrokerCalls | None = None,
) -> Iterator[Message]:
    """Records of ``topic`` from ``since_ms`` (None: the beginning), partition order preserved."""
    calls = calls or BrokerCalls(give_up_after=timeout)
    reader = Consumer(
        {
            **FETCH_DEFAULTS,
            **config,
            "group.id": f"eventmail-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        try:
            metadata = calls.call("metadata", lambda: reader.list_topics(topic, timeout=timeout)).topics.get(
                topic
            )
        except KafkaException as exc:
            raise TopicReadError(f"cannot reach Kafka to read {topic}: {exc}") from None
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise TopicReadError(f"topic {topic} does not exist")
        partitions = sorted(metadata.partitions)
        ends: dict[int, int] = {}
        starts: dict[int, int] = {}
        try:
            for p in partitions:
                low, high = calls.watermarks(reader, topic, p, timeout)
                ends[p], starts[p] = high, low
            found = (
                calls.call(
                    "offsets by time",
                    lambda: reader.offsets_for_times(
                        [TopicPartition(topic, p, since_ms) for p in partitions], timeout=timeout
                    ),
                )
                if since_ms is not None
                else []
            )
        except KafkaException as exc:
            raise TopicReadError(f"cannot read the offsets of {topic}: {exc}") from None
        if since_ms is not None:
            for tp in found:
                starts[tp.partition] = tp.offset if tp.offset >= 0 else ends[tp.partition]
        reader.assign([TopicPartition(topic, p, starts[p]) for p in partitions])
        remaining = {p for p in partitions if starts[p] < ends[p]}
        while follow or remaining:
            if should_stop():
                return
            for msg in reader.consume(num_messages=500, timeout=0.2):
                error = msg.error()
                partition = msg.partition()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        remaining.discard(partition if partition is not None else -1)
                        continue
                    if unused_group_error(error):
                        continue  # the throwaway group.id is never used: no group ACL needed
                    if error.retriable() and not error.fatal():
                        continue  # librdkafka reconnects and fetches again by itself
                    raise TopicReadError(f"reading {topic}: {error.str()}")
                offset = msg.offset()
                if partition is not None and offset is not None and offset >= ends[partition] - 1:
                    remaining.discard(partition)
                yield msg
    finally:
        reader.close()


def since_to_ms(seconds: float | None, now: float | None = None) -> int | None:
    if seconds is None:
        return None
    return int(((now if now is not None else time.time()) - seconds) * 1000)
