"""The errors of the mail action: rendering, building a message and sending it.

Every class derives from :class:`consumer.errors.MailError` and from the closest stdlib error, so a
caller can catch either. Send errors say whether retrying can help: :class:`TransientSendError`
(4xx replies, dropped connections, timeouts, an open circuit) or :class:`PermanentSendError`
(5xx replies, refused TLS or credentials). Messages name the connection and the field or step at fault;
they never contain a password, and their ``reason`` is a short, bounded label fit for metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

from consumer.errors import MailError


class RenderError(MailError, ValueError):
    """A subject or body template could not be rendered (syntax, forbidden access, size or time limit)."""


class MessageError(MailError, ValueError):
    """A message could not be built: the message names the field (``subject``, ``to[0].email`` ...)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


@dataclass(frozen=True)
class Refusal:
    """A server's refusal of one recipient (or of the whole transaction)."""

    code: int
    message: str

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return f"{self.code} {self.message}".strip()


class SendError(MailError):
    """Sending failed. ``code`` and ``reply`` are the server's last reply, when there was one."""

    #: Bounded reason label, e.g. ``smtp_4xx``, ``smtp_5xx``, ``timeout``, ``connection``.
    reason: str = "send"

    def __init__(
        self,
        message: str,
        *,
        connection: str,
        code: int | None = None,
        reply: str = "",
        reason: str | None = None,
        attempts: int = 1,
        refused: dict[str, Refusal] | None = None,
    ) -> None:
        super().__init__(f"{connection}: {message}")
        self.connection = connection
        self.code = code
        self.reply = reply
        if reason is not None:
            self.reason = reason
        self.attempts = attempts
        #: Per-recipient refusals when every recipient was refused.
        self.refused: dict[str, Refusal] = dict(refused or {})


class TransientSendError(SendError):
    """Worth retrying later: a 4xx reply, a dropped connection, a timeout or an open circuit."""

    reason = "transient"


class PermanentSendError(SendError):
    """Retrying will not help: a 5xx reply, failed authentication, TLS that cannot be verified."""

    reason = "permanent"


class SendTimeoutError(TransientSendError, TimeoutError):
    """Connecting or a command did not complete within its configured timeout."""

    reason = "timeout"


class ConnectionDroppedError(TransientSendError, ConnectionError):
    """The server could not be reached or closed the connection mid-transaction."""

    reason = "connection"


class CircuitOpenError(TransientSendError):
    """The connection failed repeatedly; sends are refused until ``retry_after`` seconds pass."""

    reason = "circuit_open"

    def __init__(self, connection: str, retry_after: float) -> None:
        super().__init__(
            f"circuit open after repeated failures; next attempt in {retry_after:.1f}s",
            connection=connection,
            attempts=0,
        )
        self.retry_after = retry_after


def is_transient(exc: BaseException) -> bool:
    """True when retrying later may succeed (the pipeline's retry-or-fail decision)."""
    return isinstance(exc, TransientSendError)
