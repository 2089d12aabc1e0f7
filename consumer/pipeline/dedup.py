"""No mail twice after a crash: before a newly assigned partition is processed, read back the recent
outcomes and remember which (source offset, rule) pairs already have a durable result.

Outcomes are keyed by rule id, so the outcomes of one source partition are spread over every
outcome partition: the read-back scans all of them from ``now - lookback`` to their current end
(``offsets_for_times``), keeping the entries whose source is an assigned partition at or after its
committed offset. What remains possible is documented in docs/delivery.md: a crash after the SMTP
server accepted a mail and before its outcome was acknowledged sends that mail again (with the same
Message-ID, so receivers can recognise it).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from consumer.errors import CodecError
from consumer.outcomes.codec import decode_outcome
from consumer.outcomes.model import OutcomeStatus
from consumer.pipeline.offsets import TopicPartitionKey, position

log = logging.getLogger(__name__)

#: (topic, partition) -> source offset -> rule ids that already have a durable outcome.
Delivered = dict[TopicPartitionKey, dict[int, set[str]]]

_DURABLE = frozenset({OutcomeStatus.SENT, OutcomeStatus.FAILED, OutcomeStatus.RETRYING})


def read_delivered(
    config: dict[str, Any],
    outcomes_topic: str,
    committed: dict[TopicPartitionKey, int],
    lookback_seconds: float,
    timeout: float = 60.0,
) -> Delivered:
    """Scan the outcome topic for results of records at or after the committed offsets."""
    out: Delivered = defaultdict(lambda: defaultdict(set))
    if not committed:
        return out
    reader = Consumer(
        {
            **config,
            "group.id": f"eventmail-readback-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        metadata = reader.list_topics(outcomes_topic, timeout=10).topics.get(outcomes_topic)
        if metadata is None or metadata.error is not None:
            return out
        since_ms = int((time.time() - lookback_seconds) * 1000)
        wanted = [TopicPartition(outcomes_topic, p, since_ms) for p in metadata.partitions]
        starts = reader.offsets_for_times(wanted, timeout=10)
        ends: dict[int, int] = {}
        assign: list[TopicPartition] = []
        for tp in starts:
            _, high = reader.get_watermark_offsets(TopicPartition(outcomes_topic, tp.partition), timeout=10)
            start = tp.offset if tp.offset >= 0 else high  # -1: nothing newer than since_ms
            if start < high:
                ends[tp.partition] = high
                assign.append(TopicPartition(outcomes_topic, tp.partition, start))
        if not assign:
            return out
        reader.assign(assign)
        remaining = set(ends)
        deadline = time.monotonic() + timeout
        scanned = 0
        while remaining and time.monotonic() < deadline:
            for msg in reader.consume(num_messages=1000, timeout=0.2):
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        remaining.discard(msg.partition())
                    continue
                _, partition, offset = position(msg)
                if offset >= ends[partition] - 1:
                    remaining.discard(partition)
                scanned += 1
                _collect(msg.value(), committed, out)
        if remaining:
            raise TimeoutError(
                f"outcome read-back did not reach the end of {sorted(remaining)} in {timeout}s"
            )
        log.info("outcome read-back done", extra={"scanned": scanned, "partitions": len(committed)})
        return out
    finally:
        reader.close()


def _collect(value: bytes | None, committed: dict[TopicPartitionKey, int], out: Delivered) -> None:
    if not value:
        return
    try:
        outcome = decode_outcome(value)
    except CodecError:
        return
    source = outcome.source
    if source is None or outcome.status not in _DURABLE:
        return
    key = (source.topic, source.partition)
    if key not in committed:
        return
    start = committed[key]
    if start >= 0 and source.offset < start:
        return
    out[key][source.offset].add(outcome.rule_id)
