"""Retries of the consumer's own broker calls (rebalance callbacks, start-up reads) that fail with a
transient error, such as a partition whose leader moves during a rolling broker restart.

A call is retried with growing pauses while its error is transient, each failure logged; a stuck
call is visible (``stuck_since``) so that ``/healthz`` fails; after ``budget`` seconds the last error
is raised to the caller, which decides (never from inside a librdkafka callback).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Errors that a later attempt can get past: leadership moving, a coordinator loading, a timeout.
TRANSIENT_CODES = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._WAIT_COORD,
        KafkaError._IN_PROGRESS,
        KafkaError._RETRY,
    }
)


def is_transient(error: BaseException | KafkaError) -> bool:
    if isinstance(error, KafkaError):
        return error.code() in TRANSIENT_CODES or bool(error.retriable())
    if isinstance(error, KafkaException):
        inner = error.args[0] if error.args else None
        return isinstance(inner, KafkaError) and is_transient(inner)
    return isinstance(error, TimeoutError)


class TransientRetry:
    """Runs calls with retries; one per thread that makes the calls (its ``stuck_since`` is read by
    the health check from another thread)."""

    def __init__(
        self,
        budget: float = 300.0,
        first_pause: float = 0.2,
        max_pause: float = 5.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.budget = budget
        self.first_pause = first_pause
        self.max_pause = max_pause
        self._stop = stop or threading.Event()
        #: time.monotonic() of the first failure of the call being retried now (None: not retrying).
        self.stuck_since: float | None = None
        self.retries = 0

    def call(self, what: str, fn: Callable[[], T]) -> T:
        pause = self.first_pause
        started = time.monotonic()
        try:
            while True:
                try:
                    return fn()
                except Exception as exc:
                    waited = time.monotonic() - started
                    if not is_transient(exc) or waited + pause > self.budget or self._stop.is_set():
                        raise
                    if self.stuck_since is None:
                        self.stuck_since = started
                    self.retries += 1
                    log.warning(
                        "transient broker error; retrying",
                        extra={"call": what, "error": str(exc)[:300], "retry_in": round(pause, 2)},
                    )
                    # A pause between attempts (not a synchronisation): stop cuts it short.
                    self._stop.wait(pause)
                    pause = min(pause * 2, self.max_pause)
        finally:
            self.stuck_since = None
