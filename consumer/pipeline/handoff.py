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
transaction open.

Serialisation is by a thread lock around the transaction itself, not only by the caller's asyncio
lock: a hand-off cancelled while its thread still commits must not let the next one begin (librdkafka
allows one transaction at a time and would refuse it).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaException, Producer

#: (topic, key, value) of one record.
Record = tuple[str, bytes, bytes]
Headers = Sequence[tuple[str, str | bytes | None]]
#: How long the broker keeps a hand-off transaction of a vanished producer open (ms).
TRANSACTION_TIMEOUT_MS = 15_000


def transactional_id(group_id: str) -> str:
    """The hand-off producer's ``transactional.id``: stable across restarts of the same process slot."""
    host = os.environ.get("HOSTNAME") or socket.gethostname() or "localhost"
    return f"{group_id}.retry.{host}.{os.getpid()}"


class RetryHandoff:
    def __init__(self, config: dict[str, Any], group_id: str, tx_id: str | None = None) -> None:
        self.transactional_id = tx_id or transactional_id(group_id)
        self._producer = Producer(
            {
                **config,
                "transactional.id": self.transactional_id,
                "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
                "linger.ms": 0,
            }
        )
        self._lock = asyncio.Lock()
        self._tx_lock = threading.Lock()
        self._initialised = False
        # Fence a predecessor with this id now, not at the first hand-off (which may come much later).
        threading.Thread(target=self._init_early, name="handoff-init", daemon=True).start()

    def _init_early(self) -> None:
        with self._tx_lock:
            if self._initialised:
                return
            try:
                self._producer.init_transactions(60)
                self._initialised = True
            except KafkaException:
                pass  # tried again by the first hand-off, which reports the error

    async def handoff(self, retry: Record, outcome: Record, outcome_headers: Headers | None = None) -> None:
        """Write ``retry`` and ``outcome`` (each ``(topic, key, value)``) in one transaction."""
        async with self._lock:
            await asyncio.to_thread(self._transaction, (retry, outcome), list(outcome_headers or ()))

    def _transaction(
        self, records: tuple[Record, Record], outcome_headers: list[tuple[str, str | bytes | None]]
    ) -> None:
        with self._tx_lock:
            if not self._initialised:
                self._producer.init_transactions(60)
                self._initialised = True
            self._producer.begin_transaction()
            try:
                retry, outcome = records
                self._producer.produce(retry[0], key=retry[1], value=retry[2])
                self._producer.produce(outcome[0], key=outcome[1], value=outcome[2], headers=outcome_headers)
                self._producer.commit_transaction(60)
            except KafkaException:
                try:
                    self._producer.abort_transaction(30)
                except KafkaException:
                    self._initialised = False  # the next hand-off starts a fresh session
                raise

    def close(self) -> None:
        self._producer.flush(10)
