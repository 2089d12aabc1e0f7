"""An idempotent producer (``acks=all``) whose deliveries can be awaited from asyncio.

``send`` returns only when the broker acknowledged the record: that is what makes an outcome
"durable" before its source offset is committed. Retriable failures (broker down, queue full) are
retried until the record is acknowledged or the producer is closed; a fatal error (the idempotent
producer lost its guarantees) is raised so the service stops loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from consumer.observability.metrics import KAFKA_ERRORS

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes | str]]


class ProducerClosedError(RuntimeError):
    """The producer was closed while a record was still unacknowledged."""


class AsyncProducer:
    def __init__(self, config: dict[str, Any], name: str = "producer") -> None:
        self._producer = Producer(
            {
                # An outcome waits for no batch: the time from the SMTP server's acceptance to the
                # outcome reaching the broker is the window in which a crash can send a mail twice
                # (docs/delivery.md). Under load, records still batch behind the requests in flight.
                "linger.ms": 0,
                "compression.type": "lz4",
                **config,
                "enable.idempotence": True,
                "acks": "all",
                "error_cb": self._on_error,
            }
        )
        self._closed = threading.Event()
        self.fatal: KafkaError | None = None
        self._thread = threading.Thread(target=self._poll_loop, name=f"{name}-poll", daemon=True)
        self._thread.start()

    def _on_error(self, error: KafkaError) -> None:
        KAFKA_ERRORS.labels(code=error.name()).inc()
        if error.fatal():
            self.fatal = error
            log.error("fatal producer error", extra={"kafka_error": error.str()})
        else:
            log.warning("producer error", extra={"kafka_error": error.str()})

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)

    async def send(
        self, topic: str, value: bytes | None, key: bytes | str | None = None, headers: Headers | None = None
    ) -> Message:
        """Produce one record and wait for its acknowledgement (retrying until it is acknowledged)."""
        loop = asyncio.get_running_loop()
        delay = 0.1
        while True:
            if self.fatal is not None:
                raise KafkaException(self.fatal)
            if self._closed.is_set():
                raise ProducerClosedError(f"producer closed before a record to {topic} was acknowledged")
            future: asyncio.Future[Message] = loop.create_future()

            def report(
                err: KafkaError | None, msg: Message, future: asyncio.Future[Message] = future
            ) -> None:
                loop.call_soon_threadsafe(_settle, future, err, msg)

            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=list(headers or ()), on_delivery=report
                )
            except BufferError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            try:
                return await future
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if (
                    isinstance(error, KafkaError)
                    and (error.fatal() or not error.retriable())
                    and (error.code() != KafkaError._MSG_TIMED_OUT)
                ):
                    raise
                log.warning(
                    "record not acknowledged, producing again", extra={"topic": topic, "error": str(exc)}
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def flush(self, timeout: float = 30.0) -> int:
        return int(self._producer.flush(timeout))

    def close(self, timeout: float = 30.0) -> None:
        with contextlib.suppress(Exception):
            self._producer.flush(timeout)
        self._closed.set()
        self._thread.join(timeout=5)


def _settle(future: asyncio.Future[Message], err: KafkaError | None, msg: Message) -> None:
    if future.done():
        return
    if err is not None:
        future.set_exception(KafkaException(err))
    else:
        future.set_result(msg)
