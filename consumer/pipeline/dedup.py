"""No mail twice after a crash: before a newly assigned partition is processed, read back the recent
outcomes and remember which (source offset, rule) pairs already have a durable result.

Outcomes are keyed by rule id, so the outcomes of one source partition are spread over every
outcome partition: the read-back scans all of them from ``now - lookback`` to their current end
(``offsets_for_times``), keeping the entries whose source is an assigned partition at or after its
committed offset. What remains possible is documented in docs/delivery.md: a crash after the SMTP
server accepted a mail and before its outcome was acknowledged sends that mail again (with the same
Message-ID, so receivers can recognise it).

The read-back is incremental within a process (:class:`ReadbackMemory`): what it found for a source
partition is kept (bounded), with the outcome offsets it read up to, so a partition given back later
(a rebalance) reads only the outcomes written since, as long as nothing was rewound (the group's
committed offset is not behind the one of the last read, no outcome partition ends before where the
last read stopped).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer.errors import CodecError
from consumer.kafka.fetching import FETCH_DEFAULTS
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


@dataclass
class _Kept:
    """What the read-backs found for one source partition."""

    #: Entries are complete for the source offsets from here (the committed offset of the last read).
    since: int
    #: source offset -> rule ids with a durable outcome.
    entries: dict[int, set[str]]
    #: outcome partition -> the offset the read-backs read it up to (exclusive).
    read_to: dict[int, int]
    size: int


class ReadbackMemory:
    """What the outcome read-backs of this process found, per source partition, so that a partition
    assigned again reads only the outcomes written since the last read. Bounded: at most
    ``max_entries`` (source offset, rule) pairs over all partitions kept; past that the partitions
    read longest ago are forgotten (their next read-back reads the whole window again). Used by one
    thread (the source's rebalance callbacks)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._kept: OrderedDict[TopicPartitionKey, _Kept] = OrderedDict()
        self._size = 0

    def resumable(self, key: TopicPartitionKey, committed: int) -> _Kept | None:
        """The kept state of ``key`` when a read may go on from it: nothing rewound (the committed
        offset is not behind the one it was kept for)."""
        kept = self._kept.get(key)
        if kept is None or max(0, committed) < kept.since:
            return None
        return kept

    def forget(self, key: TopicPartitionKey) -> None:
        kept = self._kept.pop(key, None)
        if kept is not None:
            self._size -= kept.size

    def keep(
        self, key: TopicPartitionKey, since: int, entries: dict[int, set[str]], read_to: dict[int, int]
    ) -> None:
        """Keep ``entries`` (taken over, not copied: neither it nor its sets may change afterwards)."""
        self.forget(key)
        size = sum(len(rules) for rules in entries.values())
        self._kept[key] = _Kept(since, entries, read_to, size)
        self._size += size
        while self._size > self.max_entries and self._kept:
            self.forget(next(iter(self._kept)))

    @property
    def size(self) -> int:
        return self._size

    def __contains__(self, key: object) -> bool:
        return key in self._kept


def read_delivered(
    config: dict[str, Any],
    outcomes_topic: str,
    committed: dict[TopicPartitionKey, int],
    lookback_seconds: float,
    timeout: float = READBACK_BUDGET_SECONDS,
    memory: ReadbackMemory | None = None,
) -> Delivered:
    """Scan the outcome topic for results of records at or after the committed offsets.

    With ``memory``, a partition read before (and not rewound since) reads only the outcomes after
    the ones it read then, and its earlier findings are added from the memory; the memory keeps what
    this read found.

    Never raises for the broker's sake: a read-back that cannot finish within ``timeout`` (a huge
    outcome rate, a broker away) logs a warning and returns what it found (the consumer goes on, with
    the duplicate window of the outcomes it did not read), rather than failing the assignment and
    crash-looping the group. Outcomes are filtered by their ``eventmail.source`` header, undecoded;
    outcomes written before the header existed are decoded. Each partition is read to its high
    watermark when the scan starts: a transaction still open there (a hand-off of a process killed
    mid-way that nobody fences) is waited for (up to ``timeout``) until it commits or the broker aborts
    it, and the outcomes behind it are read then.
    """
    out: Delivered = defaultdict(lambda: defaultdict(set))
    if not committed:
        return out
    started = time.monotonic()
    deadline = started + timeout
    kept = {
        key: None if memory is None else memory.resumable(key, offset) for key, offset in committed.items()
    }
    reader = Consumer(
        {
            **FETCH_DEFAULTS,
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
    reached: dict[int, int] = {}
    try:
        try:
            # The ends are the high watermarks, asked by a read_uncommitted client: a read_committed
            # one is told the end stops at the first transaction still open, and would not wait for it.
            bounds = Consumer(
                {
                    **config,
                    "group.id": f"eventmail-readback-{uuid.uuid4().hex}",
                    "isolation.level": "read_uncommitted",
                }
            )
            try:
                window, ends = _scan_bounds(bounds, outcomes_topic, lookback_seconds, deadline)
            finally:
                bounds.close()
        except KafkaException as exc:
            log.warning(
                "outcome read-back could not start; going on without it",
                extra={"error": str(exc)[:300], "partitions": len(committed)},
            )
            return out
        for key, state in kept.items():
            # An outcome partition that now ends before where the last read stopped was rewound.
            if state is not None and any(ends.get(p, 0) < at for p, at in state.read_to.items()):
                kept[key] = None
        starts = _read_from(window, ends, kept)
        reached = dict(starts)
        assign = [TopicPartition(outcomes_topic, p, at) for p, at in starts.items() if at < ends[p]]
        if assign:
            reader.assign(assign)
            remaining = {tp.partition for tp in assign}
        wanted = _starts(committed)
        while remaining and time.monotonic() < deadline:
            # A batch comes back when full or at the timeout: short, or each read waits for it at its end.
            for msg in reader.consume(num_messages=5000, timeout=0.02):
                error = msg.error()
                partition = msg.partition()
                if partition is None:
                    continue
                offset = msg.offset() or 0
                if error is not None:
                    # At the end of what may be read: done, unless a transaction still open holds the rest.
                    if error.code() == KafkaError._PARTITION_EOF:
                        reached[partition] = max(reached[partition], offset)
                        if offset >= ends[partition]:
                            remaining.discard(partition)
                    continue
                reached[partition] = offset + 1
                if offset >= ends[partition] - 1:
                    remaining.discard(partition)
                scanned += 1
                _collect(msg, wanted, out)
    finally:
        reader.close()
    for key, state in kept.items():
        since = max(0, committed[key])
        found: dict[int, set[str]] = dict(out.pop(key, {}))
        if state is not None:  # what earlier reads found; sets are never changed once kept (shared)
            for offset, rules in state.entries.items():
                if offset >= since:
                    read = found.get(offset)
                    found[offset] = rules if read is None else rules | read
        if found:
            out[key] = dict(found)  # the caller's own dict
        if memory is None:
            continue
        read_to = dict(reached)
        if state is not None:  # a scan that started earlier for another partition may have ended earlier
            for partition, at in state.read_to.items():
                read_to[partition] = max(read_to.get(partition, 0), at)
        memory.keep(key, since, found, read_to)
    elapsed = time.monotonic() - started
    if remaining:
        log.warning(
            "outcome read-back did not finish in time; deliveries of outcomes not read may repeat",
            extra={"unread_partitions": sorted(remaining), "seconds": round(elapsed, 1), "scanned": scanned},
        )
    else:
        log.info(
            "outcome read-back done",
            extra={
                "scanned": scanned,
                "partitions": len(committed),
                "resumed": sum(1 for state in kept.values() if state is not None),
                "seconds": round(elapsed, 2),
            },
        )
    return out


def _read_from(
    window: dict[int, int], ends: dict[int, int], kept: dict[TopicPartitionKey, _Kept | None]
) -> dict[int, int]:
    """Where to begin in each outcome partition: the look-back window's start for a partition read
    for the first time, else where its last read stopped (never before the window: what lies before
    it would not be read either way)."""
    fresh = any(state is None for state in kept.values())
    starts: dict[int, int] = {}
    for partition, begin in window.items():
        at = ends[partition]
        for state in kept.values():
            stopped = None if state is None else state.read_to.get(partition)
            at = min(at, begin if fresh or stopped is None else max(begin, stopped))
        starts[partition] = at
    return starts


def _scan_bounds(
    reader: Consumer, topic: str, lookback_seconds: float, deadline: float
) -> tuple[dict[int, int], dict[int, int]]:
    """Per outcome partition: where the look-back window begins (``now - lookback``) and where the
    partition ends now."""
    delay = 0.2
    while True:
        try:
            metadata = reader.list_topics(topic, timeout=10).topics.get(topic)
            if metadata is None or metadata.error is not None:
                return {}, {}
            since_ms = int((time.time() - lookback_seconds) * 1000)
            wanted = [TopicPartition(topic, p, since_ms) for p in metadata.partitions]
            found = reader.offsets_for_times(wanted, timeout=10)
            window: dict[int, int] = {}
            ends: dict[int, int] = {}
            for tp in found:
                _, high = reader.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
                window[tp.partition] = (
                    tp.offset if tp.offset >= 0 else high
                )  # -1: nothing newer than since_ms
                ends[tp.partition] = high
            return window, ends
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
