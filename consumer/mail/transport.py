"""The mail transport: send one message through a pooled SMTP connection and say what happened.

``Transport.send(params, message, sender, recipients)`` takes a session from the pool of ``params``
(opening one when needed), runs the transaction and returns a :class:`SendResult`. Transient failures
(4xx replies, dropped connections, timeouts) are retried in place up to ``in_place_retries`` times
with exponential backoff and full jitter, then raised as :class:`TransientSendError` for the caller to
retry later; permanent ones (5xx) are raised at once as :class:`PermanentSendError`. Recipients
refused while others were accepted are reported in the result. A per-connection token bucket spaces
sends when ``rate_limit_per_second`` is set, and a circuit breaker per server (host, port and login:
rules naming the same server share it, different servers never do) fails fast
(:class:`CircuitOpenError`) while that server keeps failing.

A retry after the final "." of DATA was sent (a timeout waiting for the reply) can deliver a message
twice; its ``Message-ID`` is the same each time, so receivers can tell (docs/delivery.md lists every
duplicate window). Metrics are labelled with the connection's name only (bounded, see
:mod:`consumer.mail.params`). The EHLO name is ``EVENTMAIL_SMTP__EHLO_HOSTNAME``, else this host's name.
This module never logs or raises a password.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage

from aiosmtplib import SMTP, SMTPResponseException
from aiosmtplib.email import flatten_message
from prometheus_client import Histogram

from consumer.mail.circuit import CircuitBreaker, CircuitState
from consumer.mail.errors import PermanentSendError, Refusal, SendError, TransientSendError
from consumer.mail.message import BuiltMessage
from consumer.mail.params import ConnectionParams, default_tls_context
from consumer.mail.pool import PooledSession, SessionPool
from consumer.mail.ratelimit import TokenBucket
from consumer.mail.session import Delivered, Timeouts, Trace, classify, open_session, reset, transaction
from consumer.observability.metrics import SMTP_SEND_SECONDS
from consumer.settings import Encryption, SmtpSettings

__all__ = ["ConnectionParams", "SendResult", "TlsContextFactory", "Transport"]

#: Transient failures that say nothing about the server's health (one mailbox greylisting us).
_NOT_A_SERVER_FAILURE = frozenset({"recipients_4xx"})
TlsContextFactory = Callable[[ConnectionParams], ssl.SSLContext]


@dataclass(frozen=True)
class SendResult:
    """What the server said about one accepted message."""

    connection: str
    #: The reply to DATA (250 when accepted).
    code: int
    reply: str
    accepted: tuple[str, ...]
    #: Recipients the server refused while it accepted others: address -> (code, message).
    refused: dict[str, Refusal] = field(default_factory=dict)
    #: Attempts made in place (1 when the first one went through).
    attempts: int = 1
    duration_seconds: float = 0.0


@dataclass
class _Route:
    """Everything the transport keeps per connection."""

    params: ConnectionParams
    pool: SessionPool
    circuit: CircuitBreaker
    bucket: TokenBucket | None
    send_seconds: Histogram
    tls_context: ssl.SSLContext | None = None


class Transport:
    """Pools, circuits and rate limits per :class:`ConnectionParams`; one per process is enough."""

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        tls_context: TlsContextFactory | None = None,
        noop_after_seconds: float = 5.0,
        local_hostname: str | None = None,
        trace: Trace | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.timeouts = Timeouts.from_settings(settings)
        self._tls_factory = tls_context or default_tls_context
        self.noop_after_seconds = noop_after_seconds
        self.local_hostname = local_hostname or settings.ehlo_hostname or _local_hostname()
        self._trace = trace
        self._clock = clock
        self._routes: dict[ConnectionParams, _Route] = {}
        self._circuits: dict[tuple[str, int, str | None], CircuitBreaker] = {}
        self._closed = False

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def _route(self, params: ConnectionParams) -> _Route:
        route = self._routes.get(params)
        if route is None:
            if self._closed:
                raise RuntimeError("the transport is closed")
            s = self.settings
            route = _Route(
                params=params,
                pool=SessionPool(
                    lambda: self._open(params),
                    max_size=params.max_connections,
                    idle_timeout=s.idle_timeout_seconds,
                    noop_after=self.noop_after_seconds,
                    command_timeout=s.command_timeout_seconds,
                ),
                circuit=self._circuit(params),
                bucket=TokenBucket(params.rate_limit_per_second) if params.rate_limit_per_second else None,
                send_seconds=SMTP_SEND_SECONDS.labels(params.name),
            )
            self._routes[params] = route
        return route

    def _circuit(self, params: ConnectionParams) -> CircuitBreaker:
        """The breaker of the server of ``params`` (one per host, port and login)."""
        circuit = self._circuits.get(params.server_key)
        if circuit is None:
            s = self.settings
            server = params.address + (f" as {params.login}" if params.login else "")
            circuit = CircuitBreaker(
                params.name, s.circuit_failures, s.circuit_open_seconds, self._clock, server=server
            )
            self._circuits[params.server_key] = circuit
        return circuit

    def circuit_state(self, params: ConnectionParams) -> CircuitState:
        """The state of the circuit of the server of ``params`` (closed when never used)."""
        circuit = self._circuits.get(params.server_key)
        return circuit.state if circuit is not None else CircuitState.CLOSED

    async def _open(self, params: ConnectionParams) -> SMTP:
        route = self._routes[params]
        if route.tls_context is None and params.encryption is not Encryption.NONE:
            try:
                route.tls_context = await asyncio.to_thread(self._tls_factory, params)
            except (OSError, ValueError, ssl.SSLError) as exc:
                raise PermanentSendError(
                    f"cannot set up TLS: {exc}", connection=params.name, reason="tls"
                ) from None
        return await open_session(
            params,
            self.timeouts,
            route.tls_context,
            self.local_hostname,
            self._trace or _silent,
            pipelining=self.settings.pipelining,
        )

    async def send(
        self,
        params: ConnectionParams,
        message: BuiltMessage | EmailMessage | bytes,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
    ) -> SendResult:
        """Send ``message`` to ``recipients`` (the envelope; Bcc included) through ``params``.

        For a :class:`BuiltMessage` the envelope defaults to the message's own.
        """
        if isinstance(message, BuiltMessage):
            sender = message.sender if sender is None else sender
            recipients = message.recipients if recipients is None else recipients
            message = message.data
        if sender is None or not recipients:
            raise PermanentSendError("no sender or no recipients", connection=params.name, reason="invalid")
        smtputf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
        data = message if isinstance(message, bytes) else _flatten(message, smtputf8)
        route = self._route(params)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                route.circuit.before()
            except SendError as exc:
                exc.attempts = attempt - 1
                raise
            try:
                delivered = await self._attempt(route, data, sender, recipients, smtputf8)
            except TransientSendError as exc:
                if exc.reason in _NOT_A_SERVER_FAILURE:
                    route.circuit.success()
                else:
                    route.circuit.failure(str(exc))
                exc.attempts = attempt
                if attempt > self.settings.in_place_retries:
                    raise
                await asyncio.sleep(self._backoff(attempt))
                continue
            except SendError as exc:  # permanent: the server answered, so it is up
                route.circuit.success()
                exc.attempts = attempt
                raise
            except BaseException:
                route.circuit.abandon()
                raise
            route.circuit.success()
            return SendResult(
                connection=params.name,
                code=delivered.code,
                reply=delivered.reply,
                accepted=delivered.accepted,
                refused=delivered.refused,
                attempts=attempt,
                duration_seconds=time.monotonic() - started,
            )

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.settings.retry_max_seconds, self.settings.retry_base_seconds * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)

    async def _attempt(
        self, route: _Route, data: bytes, sender: str, recipients: Sequence[str], smtputf8: bool
    ) -> Delivered:
        params = route.params
        if route.bucket is not None:
            await route.bucket.acquire()
        session: PooledSession = await route.pool.acquire()
        began = time.monotonic()
        reusable = False
        try:
            delivered = await transaction(
                session.client, params, self.timeouts, sender, recipients, data, smtputf8
            )
            reusable = True
        except SMTPResponseException as exc:
            # The server answered: the session survives unless it said it is closing (421).
            reusable = exc.code != 421 and await reset(session.client, self.timeouts)
            raise classify(exc, params) from None
        except SendError as exc:
            reusable = exc.code is not None and exc.code != 421 and session.client.is_connected
            raise
        except Exception as exc:
            raise classify(exc, params) from None
        finally:
            route.send_seconds.observe(time.monotonic() - began)
            route.pool.release(session, reusable=reusable)
        if self._trace is not None:
            self._trace(f"accepted: {delivered.code} {delivered.reply}".strip())
        return delivered

    def pool_size(self, params: ConnectionParams) -> int:
        """Sessions open to ``params`` now (idle + in use)."""
        route = self._routes.get(params)
        return route.pool.size if route else 0

    async def close(self) -> None:
        """Close every pooled session of every connection."""
        self._closed = True
        routes, self._routes = list(self._routes.values()), {}
        await asyncio.gather(*(route.pool.close() for route in routes), return_exceptions=True)
        circuits, self._circuits = list(self._circuits.values()), {}
        for circuit in circuits:
            circuit.close()


def _flatten(message: EmailMessage, smtputf8: bool) -> bytes:
    return flatten_message(message, utf8=smtputf8, cte_type="7bit")


def _silent(_: str) -> None:
    return None


_HOSTNAME: str | None = None


def _local_hostname() -> str:
    """This host's name for EHLO, without a DNS lookup (``socket.getfqdn`` can hang)."""
    global _HOSTNAME
    if _HOSTNAME is None:
        name = socket.gethostname() or "localhost"
        _HOSTNAME = name if name.isascii() else "localhost"
    return _HOSTNAME
