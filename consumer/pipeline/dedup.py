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

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer.errors import CodecError
from consumer.outcomes.codec import decode_outcome
from consumer.outcomes.model import OutcomeStatus
from consumer.pipeline.offsets import TopicPartitionKey
from consumer.pipeline.outcome_writer import SOURCE_HEADER, parse_source_header

log = logging.getLogger(__name__)

#: (topic, partition) -> source offset -> rule ids that already have a durable outcome.
Delivered = dict[TopicPartitionKey, dict[int, set[str]]]

_DURABLE = frozenset({OutcomeStatus.SENT, OutcomeStatus.FAILED, OutcomeStatus.RETRYING})


#: How long a read-back may take before the assignment goes on without the rest (a warning says so).
READBACK_BUDGET_SECONDS = 120.0


def read_delivered(
    config: dict[str, Any],
    outcomes_topic: str,
    committed: dict[TopicPartitionKey, int],
    lookback_seconds: float,
    timeout: float = READBACK_BUDGET_SECONDS,
) -> Delivered:
    """Scan the outcome topic for results of records at or after the committed offsets.

    Never raises for the broker's sake: a read-back that cannot finish within ``timeout`` (a huge
    outcome rate, a broker away) logs a warning and returns what it found (the consumer goes on, with
    the duplicate window of the outcomes it did not read), rather than failing the assignment and
    crash-looping the group. Outcomes are filtered by their ``eventmail.source`` header, undecoded;
    outcomes written before the header existed are decoded. Transactions still open when the scan
    starts are waited for (up to ``timeout``): the outcomes behind them are read once they commit.
    """
    out: Delivered = defaultdict(lambda: defaultdict(set))
    if not committed:
        return out
    started = time.monotonic()
    deadline = started + timeout
    reader = Consumer(
        {
            **config,
            "group.id": f"eventmail-readback-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.max.bytes": 52_428_800,
            "max.partition.fetch.bytes": 4_194_304,
        }
    )
    scanned = 0
    remaining: set[int] = set()
    try:
        try:
            assign, ends = _scan_bounds(reader, outcomes_topic, lookback_seconds, deadline)
        except KafkaException as exc:
            log.warning(
                "outcome read-back could not start; going on without it",
                extra={"error": str(exc)[:300], "partitions": len(committed)},
            )
            return out
        if not assign:
            return out
        reader.assign(assign)
        remaining = set(ends)
        starts = _starts(committed)
        while remaining and time.monotonic() < deadline:
            for msg in reader.consume(num_messages=5000, timeout=0.2):
                error = msg.error()
                partition = msg.partition()
                if partition is None:
                    continue
                if error is not None:
                    # At the end of what may be read: done, unless a transaction still open holds the rest.
                    if error.code() == KafkaError._PARTITION_EOF and (msg.offset() or 0) >= ends[partition]:
                        remaining.discard(partition)
                    continue
                offset = msg.offset() or 0
                if offset >= ends[partition] - 1:
                    remaining.discard(partition)
                scanned += 1
                _collect(msg, starts, out)
    finally:
        reader.close()
    elapsed = time.monotonic() - started
    if remaining:
        log.warning(
            "outcome read-back did not finish in time; deliveries of outcomes not read may repeat",
            extra={"unread_partitions": sorted(remaining), "seconds": round(elapsed, 1), "scanned": scanned},
        )
    else:
        log.info(
            "outcome read-back done",
            extra={"scanned": scanned, "partitions": len(committed), "seconds": round(elapsed, 2)},
        )
    return out


def _scan_bounds(
    reader: Consumer, topic: str, lookback_seconds: float, deadline: float
) -> tuple[list[TopicPartition], dict[int, int]]:
    """Where to start in each outcome partition (``now - lookback``) and where its end is now."""
    delay = 0.2
    while True:
        try:
            metadata = reader.list_topics(topic, timeout=10).topics.get(topic)
            if metadata is None or metadata.error is not None:
                return [], {}
            since_ms = int((time.time() - lookback_seconds) * 1000)
            wanted = [TopicPartition(topic, p, since_ms) for p in metadata.partitions]
            starts = reader.offsets_for_times(wanted, timeout=10)
            ends: dict[int, int] = {}
            assign: list[TopicPartition] = []
            for tp in starts:
                _, high = reader.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
                start = tp.offset if tp.offset >= 0 else high  # -1: nothing newer than since_ms
                if start < high:
                    ends[tp.partition] = high
                    assign.append(TopicPartition(topic, tp.partition, start))
            return assign, ends
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retriable = isinstance(error, KafkaError) and (error.retriable() or error.code() in _TRANSIENT)
            if not retriable or time.monotonic() + delay >= deadline:
                raise
            time.sleep(delay)  # a leader moving (rolling broker restart): ask again
            delay = min(delay * 2, 5.0)


_TRANSIENT = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
    }
)


def _starts(committed: dict[TopicPartitionKey, int]) -> dict[str, dict[int, int]]:
    """topic -> partition -> the first source offset of interest (the committed one, 0 for none)."""
    starts: dict[str, dict[int, int]] = defaultdict(dict)
    for (topic, partition), offset in committed.items():
        starts[topic][partition] = max(0, offset)
    return starts


def _collect(msg: Message, starts: dict[str, dict[int, int]], out: Delivered) -> None:
    headers = msg.headers() or []
    for name, raw in headers if isinstance(headers, list) else headers.items():
        if name == SOURCE_HEADER and raw is not None:
            source = parse_source_header(raw if isinstance(raw, bytes) else raw.encode())
            if source is None:
                break
            topic, partition, offset = source
            start = starts.get(topic, {}).get(partition)
            key = msg.key()
            if start is None or offset < start or key is None:
                return  # another partition's, or already committed: not decoded at all
            out[(topic, partition)][offset].add(key.decode(errors="replace"))
            return
    _collect_decoded(msg.value(), starts, out)


def _collect_decoded(value: bytes | None, starts: dict[str, dict[int, int]], out: Delivered) -> None:
    if not value:
        return
    try:
        outcome = decode_outcome(value)
    except CodecError:
        return
    source = outcome.source
    if source is None or outcome.status not in _DURABLE:
        return
    start = starts.get(source.topic, {}).get(source.partition)
    if start is None or source.offset < start:
        return
    out[(source.topic, source.partition)][source.offset].add(outcome.rule_id)
