"""The rules topic as a table: every partition read from the beginning, then followed live.

:class:`RuleStore` assigns all partitions of the compacted rules topic (no consumer group, no commits),
reads to the high watermarks it found at start, and only then reports :attr:`~RuleStore.ready`.
After that a background thread applies updates as they arrive (a fetch wait of 100 ms: a change is in
force well within a second). The thread suits a service whose main loop is asyncio: the loop never
blocks on Kafka, and reads :attr:`~RuleStore.index`, an immutable :class:`RuleIndex` that is replaced
by one assignment per batch of records, so a reader sees the whole of an update or none of it.

A tombstone deletes a rule. An invalid record is reported (a log line, ``eventmail_rule_errors_total``
and the ``on_error(rule_id, message, topic, partition, offset)`` callback, called from the store's
thread) and the last valid version of that rule stays in force. During the initial read a bad record
that a later record of the same id supersedes is not reported.

Known limit: compaction keeps only the newest record of a key, so once a bad record has been compacted
over the last good one, a restarted store no longer has that rule (it reports the bad record again).

Broker calls at start (metadata, watermarks) retry transient errors with backoff
(:mod:`consumer.kafka_retry`); a partition counts as read to its end when its end-of-partition
event arrives, so a transaction marker at the end of a partition is no wait.

The store never writes to Kafka and never logs a rule document (it may carry a sealed password).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer.errors import RuleError
from consumer.kafka.fetching import FETCH_DEFAULTS
from consumer.kafka.permissions import topic_problem
from consumer.kafka.readers import unused_group_error
from consumer.kafka_retry import BrokerCalls, RetryStopped
from consumer.observability.metrics import RULE_ERRORS, RULES_LOADED
from consumer.rules.checks import RuleContext
from consumer.rules.codec import decode_rule
from consumer.rules.matching import CompiledRule, RuleIndex, compile_rule
from consumer.settings import Settings

log = logging.getLogger(__name__)

ErrorCallback = Callable[[str, str, str, int, int], None]
ChangeCallback = Callable[[RuleIndex], None]
_METADATA_RETRY_SECONDS = 2.0
_PARTITION_CHECK_SECONDS = 30.0


@dataclass(frozen=True)
class RecordError:
    """An invalid record of the rules topic."""

    rule_id: str
    message: str
    topic: str
    partition: int
    offset: int


class RuleStore:
    """The live set of rules of a deployment (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_error: ErrorCallback | None = None,
        on_change: ChangeCallback | None = None,
        context: RuleContext | None = None,
    ) -> None:
        self.topic = settings.topics.rules
        self._config = FETCH_DEFAULTS | settings.kafka_config(
            **{
                "group.id": f"eventmail-rules-{uuid.uuid4().hex}",  # required by librdkafka; never joined
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 100,
                "error_cb": self._kafka_error,
            }
        )
        self._context = context or RuleContext.for_topic(settings)
        self._on_error = on_error
        self._on_change = on_change
        self._rules: dict[str, CompiledRule] = {}
        self._errors: dict[str, RecordError] = {}
        self._errors_lock = threading.Lock()  # written by the store's thread, read by owners
        self._index = RuleIndex()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._partitions: set[int] = set()
        #: Why the topic cannot be read yet (cleared once it is assigned), or why the thread stopped.
        self.failure: str | None = None
        #: Set when the store's thread stopped on an error: its rules are no longer followed.
        self.stopped: str | None = None
        self.calls = BrokerCalls(give_up_after=30.0, stop=self._stop)

    # --- what owners use --------------------------------------------------------------------------------
    @property
    def index(self) -> RuleIndex:
        """The current snapshot (empty until ready)."""
        return self._index

    @property
    def ready(self) -> bool:
        """True once the topic was read up to the high watermarks found at start, while the store's
        thread (when started) keeps following it."""
        return self._ready.is_set() and (self._thread is None or self._thread.is_alive())

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    @property
    def errors(self) -> dict[str, RecordError]:
        """Rule id -> its newest record, when that record is invalid (the last valid version is in force)."""
        with self._errors_lock:
            return dict(self._errors)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> RuleStore:
        """Read and follow the topic from a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="eventmail-rules", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def load(self, timeout: float = 30.0) -> RuleIndex:
        """Read the topic to its high watermarks once, without a thread (for the CLI). Raises RuleError."""
        consumer = Consumer(self._config)
        self.calls.give_up_after = min(self.calls.give_up_after, timeout)  # transient errors: within it
        try:
            deadline = time.monotonic() + timeout
            ends = self._assign(consumer, retry=False)
            self._catch_up(consumer, ends, deadline)
            return self._index
        finally:
            consumer.close()

    # --- the thread -------------------------------------------------------------------------------------
    def _run(self) -> None:
        consumer = Consumer(self._config)
        try:
            ends = self._assign(consumer, retry=True)
            if ends is None:
                return
            self._catch_up(consumer, ends, None)
            log.info("rules loaded", extra={"rules": len(self._index), "topic": self.topic})
            checked = time.monotonic()
            while not self._stop.is_set():
                self._apply_batch(consumer.consume(num_messages=500, timeout=0.1), live=True)
                if time.monotonic() - checked > _PARTITION_CHECK_SECONDS:
                    checked = time.monotonic()
                    self._follow_new_partitions(consumer)
        except RetryStopped:
            return  # closed while the brokers were being retried
        except Exception as exc:  # the service's health shows it; the loop must not die silently
            self.failure = self.stopped = f"rule store stopped: {type(exc).__name__}: {exc}"
            log.exception("rule store stopped", extra={"topic": self.topic})
        finally:
            consumer.close()

    def _partitions_of(self, consumer: Consumer) -> list[int] | str:
        """The topic's partitions, or why they cannot be read (a sentence naming the topic)."""
        try:
            metadata = self.calls.call(
                "rules topic metadata", lambda: consumer.list_topics(self.topic, timeout=5)
            ).topics.get(self.topic)
        except KafkaException as exc:
            return f"cannot read the metadata of {self.topic}: {exc}"
        if metadata is None or metadata.error is not None or not metadata.partitions:
            # Not allowed is not missing: the reason names the permission when that is it.
            error = metadata.error if metadata is not None else None
            return topic_problem(self.topic, error, "rules topic", need="READ")
        return sorted(metadata.partitions)

    def _assign(self, consumer: Consumer, retry: bool) -> dict[int, int] | None:
        """Assign every partition from the beginning; the high watermarks to read up to.

        With ``retry`` a missing topic or an unreachable broker is logged and tried again until
        :meth:`close`; without, it raises :class:`RuleError`.
        """
        while True:
            ends = self._try_assign(consumer)
            if ends is not None:
                self.failure = None
                return ends
            if not retry:
                raise RuleError(self.failure or f"cannot read {self.topic}")
            log.error("rules topic not readable yet, retrying", extra={"error": self.failure})
            if self._stop.wait(_METADATA_RETRY_SECONDS):
                return None

    def _try_assign(self, consumer: Consumer) -> dict[int, int] | None:
        partitions = self._partitions_of(consumer)
        if isinstance(partitions, str):
            self.failure = partitions
            return None
        ends: dict[int, int] = {}
        try:
            for partition in partitions:
                low, high = self.calls.watermarks(consumer, self.topic, partition, 10)
                if high > low:
                    ends[partition] = high
        except KafkaException as exc:
            self.failure = f"cannot read the end offsets of {self.topic}: {exc}"
            return None
        self._partitions = set(partitions)
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        return ends

    def _catch_up(self, consumer: Consumer, ends: dict[int, int] | None, deadline: float | None) -> None:
        remaining = dict(ends or {})
        while remaining and not self._stop.is_set():
            if deadline is not None and time.monotonic() > deadline:
                raise RuleError(f"timed out reading {self.topic} to its end")
            for msg in consumer.consume(num_messages=1000, timeout=0.2):
                problem = msg.error()
                partition = msg.partition()
                if problem is not None:
                    if problem.code() == KafkaError._PARTITION_EOF:
                        remaining.pop(partition if partition is not None else -1, None)
                    else:
                        self._log_kafka_error(problem)
                    continue
                self._apply(msg, deferred=True)
                offset = msg.offset()
                if partition in remaining and offset is not None and offset >= remaining[partition] - 1:
                    del remaining[partition]
        if self._stop.is_set():
            return
        self._publish()
        for failed in sorted(self.errors.values(), key=lambda e: (e.partition, e.offset)):
            self._report(failed)
        self._ready.set()

    def _apply_batch(self, messages: list[Message], live: bool) -> None:
        changed = False
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    self._log_kafka_error(error)
                continue
            changed = self._apply(msg, deferred=not live) or changed
        if changed:
            self._publish()

    def _apply(self, msg: Message, deferred: bool) -> bool:
        """Apply one record to the table; True when the set of valid rules changed."""
        key: bytes | None = msg.key()
        value: bytes | None = msg.value()
        rule_id = key.decode("utf-8", "replace") if key else "?"
        if value is None:
            self._forget_error(rule_id)
            removed = self._rules.pop(rule_id, None) is not None
            if removed and not deferred:
                log.info("rule deleted", extra={"rule_id": rule_id})
            return removed
        try:
            rule = decode_rule(key, value, self._context)
        except RuleError as exc:
            failed = RecordError(
                rule_id, str(exc), msg.topic() or self.topic, msg.partition() or 0, msg.offset() or 0
            )
            with self._errors_lock:
                self._errors[rule_id] = failed
            if not deferred:
                self._report(failed)
            return False
        self._forget_error(rule.id)
        compiled = compile_rule(
            rule, version=hashlib.sha256(value).hexdigest()[:16], record_offset=msg.offset()
        )
        previous = self._rules.get(rule.id)
        if previous is not None and previous.version == compiled.version:
            return False
        self._rules[rule.id] = compiled
        if not deferred:
            log.info("rule updated", extra={"rule_id": rule.id, "version": compiled.version})
        return True

    def _forget_error(self, rule_id: str) -> None:
        with self._errors_lock:
            self._errors.pop(rule_id, None)

    def _publish(self) -> None:
        index = RuleIndex(self._rules.values(), generation=self._index.generation + 1)
        self._index = index  # one reference swap: readers see the old snapshot or the new one
        RULES_LOADED.set(index.enabled_count)
        if self._on_change is not None:
            try:
                self._on_change(index)
            except Exception:
                log.exception("rule change callback failed")

    def _report(self, error: RecordError) -> None:
        kept = "the previous version stays in force" if error.rule_id in self._rules else "no valid version"
        log.warning(
            f"invalid rule record ({kept})",
            extra={
                "rule_id": error.rule_id,
                "error": error.message,
                "topic": error.topic,
                "partition": error.partition,
                "offset": error.offset,
            },
        )
        RULE_ERRORS.inc()
        if self._on_error is not None:
            try:
                self._on_error(error.rule_id, error.message, error.topic, error.partition, error.offset)
            except Exception:
                log.exception("rule error callback failed", extra={"rule_id": error.rule_id})

    def _follow_new_partitions(self, consumer: Consumer) -> None:
        """Assign partitions added to the topic since the last check. A check that fails (a broker
        restarting answers a topic's metadata with an error for a while) is not a failure of the
        store, which goes on reading the partitions it has: it is logged and made again later."""
        partitions = self._partitions_of(consumer)
        if isinstance(partitions, str):
            log.warning(
                "rules topic: cannot check for new partitions; checking again later",
                extra={"error": partitions, "topic": self.topic},
            )
            return
        new = sorted(set(partitions) - self._partitions)
        if new:
            consumer.incremental_assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in new])
            self._partitions.update(new)
            log.info("following new partitions of the rules topic", extra={"partitions": new})

    def _kafka_error(self, error: KafkaError) -> None:
        self._log_kafka_error(error)

    def _log_kafka_error(self, error: Any) -> None:
        if unused_group_error(error):
            return  # its throwaway group.id is never used: no group ACL needed
        log.warning("rules topic: kafka error", extra={"error": str(error), "topic": self.topic})
