"""The retry hand-off: the retry record and its ``retrying`` outcome are written in one Kafka
transaction, so either both exist or neither does. (If only the outcome existed, a restart would
skip the mail as "handled" and lose it; if only the retry record existed, the mail could be sent
twice.) Transactions are serialised and run in a worker thread: hand-offs are rare, sends are not.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from confluent_kafka import KafkaException, Producer

#: (topic, key, value) of one record.
Record = tuple[str, bytes, bytes]


class RetryHandoff:
    def __init__(self, config: dict[str, Any], group_id: str) -> None:
        self._producer = Producer(
            {**config, "transactional.id": f"{group_id}.retry.{uuid.uuid4().hex}", "linger.ms": 0}
        )
        self._lock = asyncio.Lock()
        self._initialised = False

    async def handoff(self, retry: Record, outcome: Record) -> None:
        """Write ``retry`` and ``outcome`` (each ``(topic, key, value)``) in one transaction."""
        async with self._lock:
            await asyncio.to_thread(self._transaction, (retry, outcome))

    def _transaction(self, records: tuple[Record, ...]) -> None:
        if not self._initialised:
            self._producer.init_transactions(60)
            self._initialised = True
        self._producer.begin_transaction()
        try:
            for topic, key, value in records:
                self._producer.produce(topic, key=key, value=value)
            self._producer.commit_transaction(60)
        except KafkaException:
            try:
                self._producer.abort_transaction(30)
            except KafkaException:
                self._initialised = False  # the next hand-off starts a fresh session
            raise

    def close(self) -> None:
        self._producer.flush(10)
