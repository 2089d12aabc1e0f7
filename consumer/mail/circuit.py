"""A circuit breaker per SMTP connection: stop hammering a server that keeps failing.

Closed: sends go through. After ``failures`` consecutive transient failures (timeouts, dropped
connections, 4xx replies to the session) it opens: sends fail at once with :class:`CircuitOpenError`
for ``open_seconds``. Then it is half-open: exactly one send (the probe) goes through; its success
closes the circuit, its failure opens it again. A permanent error (a 5xx reply) proves the server
answers, so it counts as a success here. The ``eventmail_smtp_circuit_open`` gauge is raised while the
circuit is open or half-open. This module never sleeps and never talks to a server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

from consumer.mail.errors import CircuitOpenError
from consumer.observability.metrics import SMTP_CIRCUIT_OPEN


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        failures: int,
        open_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.threshold = max(1, failures)
        self.open_seconds = open_seconds
        self._clock = clock
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    def before(self) -> bool:
        """Admit one send or raise :class:`CircuitOpenError`; True when this send is the probe."""
        if self.state is CircuitState.CLOSED:
            return False
        if self.state is CircuitState.OPEN:
            remaining = self._opened_at + self.open_seconds - self._clock()
            if remaining > 0:
                raise CircuitOpenError(self.name, remaining)
            self.state = CircuitState.HALF_OPEN
        if self._probe_in_flight:
            raise CircuitOpenError(self.name, self.open_seconds)
        self._probe_in_flight = True
        return True

    def success(self) -> None:
        self._probe_in_flight = False
        self.consecutive_failures = 0
        if self.state is not CircuitState.CLOSED:
            self.state = CircuitState.CLOSED
            SMTP_CIRCUIT_OPEN.labels(self.name).dec()

    def failure(self) -> None:
        self._probe_in_flight = False
        self.consecutive_failures += 1
        if self.state is CircuitState.HALF_OPEN:
            self._open()
        elif self.state is CircuitState.CLOSED and self.consecutive_failures >= self.threshold:
            SMTP_CIRCUIT_OPEN.labels(self.name).inc()
            self._open()

    def abandon(self) -> None:
        """The send admitted by :meth:`before` ended without a verdict (cancelled): free the probe."""
        self._probe_in_flight = False

    def _open(self) -> None:
        self.state = CircuitState.OPEN
        self._opened_at = self._clock()

    def close(self) -> None:
        """Forget the state (the transport is shutting down); lowers the gauge if it was raised."""
        if self.state is not CircuitState.CLOSED:
            SMTP_CIRCUIT_OPEN.labels(self.name).dec()
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self._probe_in_flight = False
