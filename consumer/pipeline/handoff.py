"""The retry hand-off: the retry record and its ``retrying`` outcome are written in one Kafka
transaction, so either both exist or neither does. (If only the outcome existed, a restart would
skip the mail as "handled" and lose it; if only the retry record existed, the mail could be sent
twice.) Transactions are serialised and run in a worker thread: hand-offs are rare, sends are not.

A transaction left open by a process killed mid-way hides every later record of its partitions
from ``read_committed`` readers (the outcome read-back among them) until it is aborted. So the
``transactional.id`` is stable for a process slot (host name and PID: the same for a container
restarted in its pod), and the producer is initialised at start: a restarted process fences its
predecessor and aborts its open transaction at once. A process that comes back under another name
cannot fence: the short ``transaction.timeout.ms`` bounds how long the broker keeps such a
transaction open (``EVENTMAIL_PIPELINE__HANDOFF_TRANSACTION_TIMEOUT_SECONDS``, 15 s by default).

A hand-off is never given up on while the service runs (a broker outage of any length is waited
out; the deliveries behind it wait for their mail slots meanwhile). librdkafka caps the messages
of a transaction at that timeout, so an outage longer than it fails the transaction; what follows
depends on the error (docs/reliability.md, "A broker outage longer than the hand-off's transaction
timeout"):

- *retriable* (a call timed out; the commit or abort goes on in the background): the same call is
  made again;
- *abortable* (``txn_requires_abort``: a message timed out, the coordinator gave up on the
  transaction): the transaction is aborted (nothing of it is visible to ``read_committed``
  readers) and the hand-off is written again in a new one;
- *fatal* (the producer is unusable, e.g. ``INVALID_TXN_STATE`` when aborting a transaction the
  coordinator already aborted on its own): the producer is closed and a new one made with the same
  ``transactional.id``; its ``init_transactions`` fences the old one and completes whatever it left
  open (aborted, or committed if its commit had reached the coordinator). Only when every record of
  the failed transaction had been acknowledged could it have been committed: then the retry record
  is looked up with a ``read_committed`` reader, and the hand-off is written again only if it is
  not there. So a hand-off is written once, visibly, whatever failed.

Before each attempt the pipeline is asked whether the record is still its own (``abandoned``): a
hand-off whose partition was lost or revoked while it waited for the broker is given up
(HandoffAbandonedError; nothing of it is visible) instead of written while the partition's next
owner does the record again, which would send its mail twice.

Serialisation is by a thread lock around the transaction itself, not only by the caller's asyncio
lock: a hand-off cancelled while its thread still commits must not let the next one begin (librdkafka
allows one transaction at a time and would refuse it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumer.observability.metrics import KAFKA_ERRORS, KAFKA_PRODUCERS_RECREATED

log = logging.getLogger(__name__)

#: (topic, key, value) of one record.
Record = tuple[str, bytes, bytes]
Headers = Sequence[tuple[str, str | bytes | None]]
#: How long the broker keeps a hand-off transaction of a vanished producer open (ms), by default.
TRANSACTION_TIMEOUT_MS = 15_000
#: How long one call of the transactional API may block the hand-off thread (a retriable timeout
#: is called again, so this only bounds how soon a closed hand-off notices it is closed).
CALL_TIMEOUT_SECONDS = 10.0
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0
#: Where the topic/partition/offset of an acknowledged record of the transaction is kept.
Position = tuple[str, int, int]


class HandoffClosedError(RuntimeError):
    """The hand-off was closed before its transaction was committed."""


class HandoffAbandonedError(RuntimeError):
    """The hand-off's record stopped being this process's (its partition was lost or revoked) before
    the hand-off was written: nothing of it is visible, and the partition's next owner does the record."""


def transactional_id(group_id: str) -> str:
    """The hand-off producer's ``transactional.id``: stable across restarts of the same process slot."""
    host = os.environ.get("HOSTNAME") or socket.gethostname() or "localhost"
    return f"{group_id}.retry.{host}.{os.getpid()}"


def _error(exc: KafkaException) -> KafkaError | None:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else None


def _fatal(error: KafkaError | None) -> bool:
    # produce() on a producer that raised a fatal error answers _FATAL, whose own fatal() is False
    return error is not None and (error.fatal() or error.code() == KafkaError._FATAL)


def _name(error: KafkaError | None) -> str:
    return error.name() if error is not None else "unknown"


class RetryHandoff:
    #: Asked (in the hand-off's thread, in the context of the caller) before each attempt: True when
    #: the record is no longer this process's, so the hand-off is given up (HandoffAbandonedError)
    #: rather than written while the partition's next owner does the record again.
    abandoned: Callable[[], bool] | None = None

    def __init__(
        self,
        config: dict[str, Any],
        group_id: str,
        tx_id: str | None = None,
        transaction_timeout_ms: int = TRANSACTION_TIMEOUT_MS,
    ) -> None:
        self.transactional_id = tx_id or transactional_id(group_id)
        self._config = config
        self._producer_config = {
            **config,
            "transactional.id": self.transactional_id,
            "transaction.timeout.ms": transaction_timeout_ms,
            "linger.ms": 0,
        }
        self._producer = Producer(self._producer_config)
        #: Producers made after a fatal error (the first one not counted).
        self.recreated = 0
        self._lock = asyncio.Lock()
        self._tx_lock = threading.Lock()
        self._closed = threading.Event()
        self._initialised = False
        # Fence a predecessor with this id now, not at the first hand-off (which may come much later).
        threading.Thread(target=self._init_early, name="handoff-init", daemon=True).start()

    def _init_early(self) -> None:
        with self._tx_lock, contextlib.suppress(HandoffClosedError):
            self._initialise()

    async def handoff(self, retry: Record, outcome: Record, outcome_headers: Headers | None = None) -> None:
        """Write ``retry`` and ``outcome`` (each ``(topic, key, value)``) in one transaction; returns
        once it is committed, however long the broker is away (HandoffClosedError if closed first)."""
        async with self._lock:
            await asyncio.to_thread(self._transaction, (retry, outcome), list(outcome_headers or ()))

    # --- the hand-off thread --------------------------------------------------------------------------
    def _transaction(
        self, records: tuple[Record, Record], outcome_headers: list[tuple[str, str | bytes | None]]
    ) -> None:
        with self._tx_lock:
            delay = FIRST_BACKOFF_SECONDS
            failures = 0
            while True:
                self._check_open()
                self._initialise()
                if self.abandoned is not None and self.abandoned():
                    # only ever between attempts, when the last one is known not to be committed
                    log.info(
                        "hand-off given up: its partition is no longer ours",
                        extra={"failed_attempts": failures},
                    )
                    raise HandoffAbandonedError("the record's partition is no longer this process's")
                try:
                    self._attempt(records, outcome_headers)
                except _AttemptFailed as failed:
                    failures += 1
                    self._report(failed.error, failures, failed.stage)
                    self._wait(delay)
                    delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                    continue
                if failures:
                    log.warning(
                        "hand-off committed after failed attempts", extra={"failed_attempts": failures}
                    )
                return

    def _attempt(
        self, records: tuple[Record, Record], outcome_headers: list[tuple[str, str | bytes | None]]
    ) -> None:
        """One transaction of the hand-off: returns once it is committed; _AttemptFailed once it is
        known not to be (aborted, or left by a fenced producer and not visible)."""
        acked: dict[int, Position | KafkaError] = {}

        def report(index: int, err: KafkaError | None, msg: Message) -> None:
            acked[index] = (
                err if err is not None else (msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
            )

        stage = "begin"
        try:
            self._producer.begin_transaction()
            stage = "produce"
            retry, outcome = records
            self._producer.produce(
                retry[0], key=retry[1], value=retry[2], on_delivery=lambda e, m: report(0, e, m)
            )
            self._producer.produce(
                outcome[0],
                key=outcome[1],
                value=outcome[2],
                headers=outcome_headers,
                on_delivery=lambda e, m: report(1, e, m),
            )
            stage = "commit"
            self._commit()
            return
        except KafkaException as exc:
            error = _error(exc)
        with contextlib.suppress(KafkaException):  # (a producer in a fatal state raises it here too)
            self._producer.poll(0)  # the delivery reports not served yet
        committed = self._settle(error, acked)
        if committed:
            log.warning(
                "hand-off transaction was committed before its producer failed; not written again",
                extra={"kafka_error": _name(error)},
            )
            return
        raise _AttemptFailed(error, stage)

    def _commit(self) -> None:
        while True:
            try:
                self._producer.commit_transaction(CALL_TIMEOUT_SECONDS)
                return
            except KafkaException as exc:
                error = _error(exc)
                if error is None or _fatal(error) or error.txn_requires_abort() or not error.retriable():
                    raise
                KAFKA_ERRORS.labels(code=error.name()).inc()
                self._check_open()  # the commit goes on in the background: ask again for its result

    def _settle(self, error: KafkaError | None, acked: dict[int, Position | KafkaError]) -> bool:
        """After a failed transaction: leave the producer ready for the next one. True when the
        transaction turned out to be committed after all."""
        if not _fatal(error):
            abort_error = self._abort()
            if abort_error is None:
                return False  # aborted: nothing of it is visible
            error = abort_error
        # Unusable producer: a new one with the same id completes the old one's open transaction.
        self._recreate(error)
        retry, outcome = acked.get(0), acked.get(1)
        if not isinstance(retry, tuple) or not isinstance(outcome, tuple):
            return False  # a record was never acknowledged: the commit was never sent
        visible = self._visible(retry)
        log.info(
            "hand-off looked up after its producer failed",
            extra={"committed": visible, "topic": retry[0], "partition": retry[1], "offset": retry[2]},
        )
        return visible

    def _abort(self) -> KafkaError | None:
        """Abort the current transaction: None once aborted, else the error that makes the producer
        unusable (fatal, or a state the transaction cannot be aborted from)."""
        delay = FIRST_BACKOFF_SECONDS
        while True:
            try:
                self._producer.abort_transaction(CALL_TIMEOUT_SECONDS)
                return None
            except KafkaException as exc:
                error = _error(exc)
                if error is not None and error.retriable() and not _fatal(error):
                    KAFKA_ERRORS.labels(code=error.name()).inc()
                    self._wait(delay)
                    delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                    continue
                return error or KafkaError(KafkaError._FAIL)

    def _initialise(self) -> None:
        """``init_transactions`` until it succeeds (a fatal answer gets a new producer first)."""
        delay = FIRST_BACKOFF_SECONDS
        while not self._initialised:
            self._check_open()
            try:
                self._producer.init_transactions(CALL_TIMEOUT_SECONDS)
                self._initialised = True
                return
            except KafkaException as exc:
                error = _error(exc)
                KAFKA_ERRORS.labels(code=_name(error)).inc()
                if error is None or _fatal(error) or not error.retriable():
                    self._recreate(error)
                else:
                    log.info("hand-off producer not initialised yet", extra={"kafka_error": _name(error)})
                self._wait(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    def _recreate(self, error: KafkaError | None) -> None:
        """Close the producer and make a new one with the same ``transactional.id``; it is initialised
        (fencing the old one and completing its open transaction) before the next transaction."""
        old = self._producer
        KAFKA_PRODUCERS_RECREATED.labels(producer="handoff").inc()
        log.error(
            "hand-off producer failed fatally; replacing it (same transactional id)",
            extra={"kafka_error": error.str() if error is not None else "unknown", "code": _name(error)},
        )
        with contextlib.suppress(Exception):
            old.purge(in_queue=True, in_flight=True, blocking=False)
            old.poll(0)
        del old  # (not close(): it would try to abort and flush on an unusable instance)
        self._producer = Producer(self._producer_config)
        self._initialised = False
        self.recreated += 1
        self._initialise()

    def _visible(self, position: Position) -> bool:
        """Whether the record at ``position`` is committed (read_committed). Asked only after a new
        producer was initialised with the same id, so its transaction is complete by now."""
        topic, partition, offset = position
        delay = FIRST_BACKOFF_SECONDS
        while True:
            self._check_open()
            reader = Consumer(
                {
                    **self._config,
                    "group.id": f"eventmail-handoff-check-{uuid.uuid4().hex}",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "enable.partition.eof": True,
                }
            )
            try:
                reader.assign([TopicPartition(topic, partition, offset)])
                while True:
                    self._check_open()
                    msg = reader.poll(1.0)
                    if msg is None:
                        continue
                    err = msg.error()
                    if err is None:
                        return msg.offset() == offset  # a later record: ours was aborted
                    if err.code() == KafkaError._PARTITION_EOF:
                        if (msg.offset() or 0) > offset:
                            return False  # the committed end is past it and it was not read
                        continue  # the end is still before it: the transaction is being completed
                    raise KafkaException(err)
            except KafkaException as exc:
                log.info("hand-off check not answered yet", extra={"error": str(exc)[:300]})
            finally:
                reader.close()
            self._wait(delay)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    def _report(self, error: KafkaError | None, failures: int, stage: str) -> None:
        KAFKA_ERRORS.labels(code=_name(error)).inc()
        details = {
            "kafka_error": error.str() if error is not None else "unknown",
            "code": _name(error),
            "stage": stage,
            "failed_attempts": failures,
        }
        if failures == 1:
            log.warning("hand-off transaction failed; writing it again", extra=details)
        else:  # repeats at info level: warnings that repeat are held back by the log filter
            log.info("hand-off transaction failed again", extra=details)

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise HandoffClosedError("the retry hand-off was closed before its transaction was committed")

    def _wait(self, seconds: float) -> None:
        if self._closed.wait(seconds):
            self._check_open()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(Exception):
            self._producer.flush(10)


class _AttemptFailed(Exception):
    def __init__(self, error: KafkaError | None, stage: str) -> None:
        super().__init__(_name(error))
        self.error = error
        self.stage = stage
