"""Broker calls that survive transient errors: a leader moving, a broker restarting, a timeout.

Start-up reads and rebalance callbacks ask the brokers for metadata, watermarks, committed offsets
and offsets by time. During a rolling broker restart those calls fail for a few seconds with
``NOT_LEADER_FOR_PARTITION``, ``LEADER_NOT_AVAILABLE``, a timeout or a transport error. Such an
error is retried with a growing delay (:class:`BrokerCalls`); any other error, or one that lasts
past ``give_up_after`` seconds, is raised to the caller, which decides whether the service is
stuck (not healthy) or the request is wrong (a clear error naming it).

:attr:`BrokerCalls.retrying` says what is being retried and since when, so a health check can
report a service that waits on the brokers instead of hanging silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Errors that go away by themselves when a leader is elected or a broker comes back.
RETRIABLE_CODES = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.OFFSET_NOT_AVAILABLE,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.KAFKA_STORAGE_ERROR,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._WAIT_COORD,
    }
)


class RetryStopped(Exception):
    """The owner stopped while a broker call was being retried."""


def is_retriable(exc: BaseException) -> bool:
    """True for a broker error that is expected to clear by itself."""
    if not isinstance(exc, KafkaException) or not exc.args:
        return False
    error = exc.args[0]
    if not isinstance(error, KafkaError):
        return False
    if error.fatal():
        return False
    return error.retriable() or error.code() in RETRIABLE_CODES


@dataclass(frozen=True)
class Retrying:
    """A broker call being retried: what, since when (monotonic), how many attempts, the last error."""

    what: str
    since: float
    attempts: int
    error: str


class BrokerCalls:
    """Runs broker calls, retrying retriable errors with exponential backoff.

    ``stop`` ends a retry early (:class:`RetryStopped`). One instance per client; calls from one
    thread at a time (as the client itself requires).
    """

    def __init__(
        self,
        *,
        give_up_after: float = 120.0,
        base_delay: float = 0.1,
        max_delay: float = 5.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.give_up_after = give_up_after
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.stop = stop or threading.Event()
        self.retrying: Retrying | None = None
        self.retries = 0  # retriable errors met, over the instance's life

    def call(self, what: str, fn: Callable[[], T], give_up_after: float | None = None) -> T:
        """``fn()``; a retriable error is retried until ``give_up_after`` seconds, then raised."""
        limit = self.give_up_after if give_up_after is None else give_up_after
        started = time.monotonic()
        attempts = 0
        delay = self.base_delay
        try:
            while True:
                attempts += 1
                try:
                    return self.attempt(what, fn)
                except KafkaException as exc:
                    if not is_retriable(exc):
                        raise
                    self.retries += 1
                    waited = time.monotonic() - started
                    self.retrying = Retrying(what, started, attempts, str(exc.args[0]))
                    if waited + delay > limit:
                        raise
                    log.warning(
                        "broker call failed, retrying",
                        extra={"call": what, "error": str(exc.args[0]), "attempt": attempts},
                    )
                    if self.stop.wait(delay):
                        raise RetryStopped(what) from exc
                    delay = min(delay * 2, self.max_delay)
        finally:
            self.retrying = None

    def watermarks(self, client: Consumer, topic: str, partition: int, timeout: float) -> tuple[int, int]:
        """``(low, high)`` watermarks of one partition, retried like :meth:`call`."""

        def ask() -> tuple[int, int]:
            answer = client.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
            if answer is None:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "no watermark offsets"))
            return int(answer[0]), int(answer[1])

        return self.call("watermark offsets", ask)

    def attempt(self, what: str, fn: Callable[[], T]) -> T:
        """One try of ``fn`` (the seam where tests inject broker errors)."""
        _ = what
        return fn()

    def stuck_for(self) -> float:
        """Seconds the current call has been retried (0 when none is)."""
        retrying = self.retrying
        return 0.0 if retrying is None else time.monotonic() - retrying.since
