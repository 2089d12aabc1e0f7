"""A circuit breaker per SMTP server: stop hammering a server that keeps failing.

Closed: sends go through. After ``failures`` consecutive transient failures (timeouts, dropped
connections, 4xx replies to the session) it opens: sends fail at once with :class:`CircuitOpenError`
for ``open_seconds``. Then it is half-open: exactly one send (the probe) goes through; its success
closes the circuit, its failure opens it again. A permanent error (a 5xx reply) proves the server
answers, so it counts as a success here. The ``eventmail_smtp_circuit_open`` gauge is raised while the
circuit is open or half-open.

Every change of state is logged once (opened with the last error, half-open, closed), never every
attempt, so an operator tailing the logs sees an outage begin and end. This module never sleeps and
never talks to a server; its clock is injectable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum

from consumer.mail.errors import CircuitOpenError
from consumer.observability.metrics import SMTP_CIRCUIT_OPEN

log = logging.getLogger(__name__)
_MAX_ERROR_CHARS = 300


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
        *,
        server: str = "",
    ) -> None:
        #: The connection's metric label (also the ``connection`` of its errors).
        self.name = name
        #: ``host:port`` (and login) of the server, for the log lines.
        self.server = server
        self.threshold = max(1, failures)
        self.open_seconds = open_seconds
        self._clock = clock
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self.last_error = ""
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
            log.info(f"SMTP circuit of {self._who()} half-open: sending one probe", extra=self._fields())
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
            log.info(f"SMTP circuit of {self._who()} closed: the server answers again", extra=self._fields())

    def failure(self, error: str = "") -> None:
        self._probe_in_flight = False
        self.consecutive_failures += 1
        if error:
            self.last_error = error[:_MAX_ERROR_CHARS]
        if self.state is CircuitState.HALF_OPEN:
            self._open("opened again: the probe failed")
        elif self.state is CircuitState.CLOSED and self.consecutive_failures >= self.threshold:
            SMTP_CIRCUIT_OPEN.labels(self.name).inc()
            self._open(f"opened after {self.consecutive_failures} consecutive failures")

    def abandon(self) -> None:
        """The send admitted by :meth:`before` ended without a verdict (cancelled): free the probe."""
        self._probe_in_flight = False

    def _open(self, message: str) -> None:
        self.state = CircuitState.OPEN
        self._opened_at = self._clock()
        log.warning(
            f"SMTP circuit of {self._who()} {message}; sends fail at once for {self.open_seconds:g}s; "
            f"last error: {self.last_error or 'unknown'}",
            extra={**self._fields(), "error": self.last_error},
        )

    def _who(self) -> str:
        return f"{self.name} ({self.server})" if self.server else self.name

    def _fields(self) -> dict[str, object]:
        return {"connection": self.name, "server": self.server, "circuit": self.state.value}

    def close(self) -> None:
        """Forget the state (the transport is shutting down); lowers the gauge if it was raised."""
        if self.state is not CircuitState.CLOSED:
            SMTP_CIRCUIT_OPEN.labels(self.name).dec()
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self._probe_in_flight = False
