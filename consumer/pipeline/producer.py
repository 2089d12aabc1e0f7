"""An idempotent producer (``acks=all``) whose deliveries can be awaited from asyncio.

``send`` returns only when the broker acknowledged the record: that is what makes an outcome
"durable" before its source offset is committed. Retriable failures (broker down, queue full) are
retried until the record is acknowledged or the producer is closed.

A fatal error (the idempotent producer lost its guarantees, e.g. ``OUT_OF_ORDER_SEQUENCE_NUMBER``
after a long broker outage) leaves the librdkafka instance unusable for good: it is counted and
logged (``eventmail_kafka_errors_total``, "fatal producer error" naming it), and the instance is
replaced by a new one (``eventmail_kafka_producers_recreated_total``). The records the old instance
had not acknowledged are purged from it and each waiting ``send`` produces its record again on the
new one, so callers still get their acknowledgement. A record that the broker had in fact written
before the error can so appear twice in its topic (for outcomes: the same outcome, same ``id``,
twice; docs/delivery.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from consumer.observability.metrics import KAFKA_ERRORS, KAFKA_PRODUCERS_RECREATED

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes | str]]
#: How long the old instance may take to hand back the records it still held.
PURGE_SECONDS = 5.0


class ProducerClosedError(RuntimeError):
    """The producer was closed while a record was still unacknowledged."""


class ProducerReplacedError(RuntimeError):
    """The instance a record was given to was replaced before it acknowledged the record."""


class AsyncProducer:
    def __init__(self, config: dict[str, Any], name: str = "producer") -> None:
        self.name = name
        self._config = {
            "compression.type": "lz4",
            **config,
            "enable.idempotence": True,
            "acks": "all",
        }
        self._closed = threading.Event()
        #: The fatal error of the current instance, until it is replaced.
        self.fatal: KafkaError | None = None
        #: Instances made after a fatal error (the first one not counted).
        self.recreated = 0
        #: Per instance (its generation), the records it has not acknowledged yet: (loop, future)
        #: of the waiting send. The lock also makes "take the current instance" and "replace it" atomic.
        self._waiting: dict[int, set[tuple[asyncio.AbstractEventLoop, asyncio.Future[Message]]]] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self._producer = self._new_instance()
        self._thread = threading.Thread(target=self._poll_loop, name=f"{name}-poll", daemon=True)
        self._thread.start()

    def _new_instance(self) -> Producer:
        generation = self._generation
        return Producer({**self._config, "error_cb": lambda error: self._on_error(error, generation)})

    def _on_error(self, error: KafkaError, generation: int | None = None) -> None:
        """librdkafka's error callback of the instance of ``generation`` (None: the current one)."""
        KAFKA_ERRORS.labels(code=error.name()).inc()
        if not _fatal(error):
            log.warning("producer error", extra={"kafka_error": error.str()})
        elif generation in (None, self._generation):  # a replaced instance may still say it is broken
            self.fatal = error
            log.error(
                "fatal producer error; replacing the producer",
                extra={"kafka_error": error.str(), "code": error.name(), "producer": self.name},
            )

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            try:
                self._producer.poll(0.05)
            except KafkaException as exc:  # the poll thread must not die: it serves every ack
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and _fatal(error) and self.fatal is None:
                    self._on_error(error)
                else:
                    log.warning("producer poll failed", extra={"error": str(exc)[:300]})
            if self.fatal is not None and not self._closed.is_set():
                self._replace()

    def _replace(self) -> None:
        """A new instance for the one that failed fatally; what it held is sent again by its senders."""
        error = self.fatal
        with self._lock:
            old, old_generation = self._producer, self._generation
            self._generation += 1
            self._producer = self._new_instance()
            self.fatal = None
            left = self._waiting.pop(old_generation, set())
        self.recreated += 1
        KAFKA_PRODUCERS_RECREATED.labels(producer=self.name).inc()
        with contextlib.suppress(Exception):
            old.purge(in_queue=True, in_flight=True, blocking=False)
        with contextlib.suppress(Exception):
            old.flush(PURGE_SECONDS)  # serves the delivery reports (errors) of what it held
        for loop, future in left:  # each produced again on the new instance (if not acknowledged)
            with contextlib.suppress(RuntimeError):  # a loop closed meanwhile
                loop.call_soon_threadsafe(_replaced, future)
        log.warning(
            "producer replaced after a fatal error; unacknowledged records are produced again",
            extra={
                "producer": self.name,
                "code": error.name() if error is not None else "unknown",
                "unacknowledged": len(left),
            },
        )
        with contextlib.suppress(Exception):
            old.close()

    async def send(
        self, topic: str, value: bytes | None, key: bytes | str | None = None, headers: Headers | None = None
    ) -> Message:
        """Produce one record and wait for its acknowledgement (retrying until it is acknowledged)."""
        loop = asyncio.get_running_loop()
        delay = 0.1
        while True:
            if self._closed.is_set():
                raise ProducerClosedError(f"producer closed before a record to {topic} was acknowledged")
            future: asyncio.Future[Message] = loop.create_future()

            def report(
                err: KafkaError | None, msg: Message, future: asyncio.Future[Message] = future
            ) -> None:
                loop.call_soon_threadsafe(_settle, future, err, msg)

            waiting = (loop, future)
            with self._lock:
                producer, generation = self._producer, self._generation
                self._waiting.setdefault(generation, set()).add(waiting)
            try:
                try:
                    producer.produce(
                        topic, value=value, key=key, headers=list(headers or ()), on_delivery=report
                    )
                except BufferError:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                except (KafkaException, RuntimeError) as exc:
                    if generation == self._generation and not _fatal(exc.args[0] if exc.args else None):
                        raise
                    await asyncio.sleep(delay)  # the poll thread replaces the instance meanwhile
                    delay = min(delay * 2, 2.0)
                    continue
                try:
                    return await future
                except ProducerReplacedError:
                    continue  # produced again at once, on the new instance
                except KafkaException as exc:
                    error = exc.args[0] if exc.args else None
                    failed = generation != self._generation or self.fatal is not None or _fatal(error)
                    if (  # (when its instance failed, it is produced again on the new one)
                        not failed
                        and isinstance(error, KafkaError)
                        and not error.retriable()
                        and error.code() != KafkaError._MSG_TIMED_OUT
                    ):
                        raise
                    log.warning(
                        "record not acknowledged, producing again",
                        extra={"topic": topic, "error": str(exc)},
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            finally:
                with self._lock:
                    held = self._waiting.get(generation)
                    if held is not None:
                        held.discard(waiting)
                        if not held and generation != self._generation:
                            del self._waiting[generation]

    def flush(self, timeout: float = 30.0) -> int:
        return int(self._producer.flush(timeout))

    def close(self, timeout: float = 30.0) -> None:
        with contextlib.suppress(Exception):
            self._producer.flush(timeout)
        self._closed.set()
        self._thread.join(timeout=5)


def _fatal(error: object) -> bool:
    # produce() on an instance that raised a fatal error answers _FATAL, whose own fatal() is False
    return isinstance(error, KafkaError) and (error.fatal() or error.code() == KafkaError._FATAL)


def _settle(future: asyncio.Future[Message], err: KafkaError | None, msg: Message) -> None:
    if future.done():
        return
    if err is not None:
        future.set_exception(KafkaException(err))
    else:
        future.set_result(msg)


def _replaced(future: asyncio.Future[Message]) -> None:
    if not future.done():
        future.set_exception(ProducerReplacedError("the producer was replaced before acknowledging"))
