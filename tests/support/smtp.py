"""Real SMTP servers for the tests: plain, STARTTLS, implicit TLS, AUTH, and misbehaving ones.

Each :class:`SMTPTestServer` is an aiosmtpd ``SMTP`` server (or, for ``kind="silent"``, a raw TCP
server that never answers) listening on 127.0.0.1. It runs its own asyncio loop in a daemon thread,
so sync tests and async tests (whose loop sends the mail) use it alike. Every accepted message is
recorded as a :class:`ReceivedMessage` in a thread-safe list; :meth:`SMTPTestServer.wait_for` and
:meth:`SMTPTestServer.wait_for_async` block until enough have arrived, woken by each arrival.

A server binds a free port on its first :meth:`~SMTPTestServer.start` and keeps that port across
:meth:`~SMTPTestServer.stop` / :meth:`~SMTPTestServer.start`, so outage tests can take a relay down
and bring it back where the client expects it. Stopping aborts the open connections.

Kinds (``kind=``) are presets; every option combines with every kind (e.g. ``kind="starttls"``
with ``users=...`` and ``fail_code=421``):

=============== =====================================================================================
``plain``       accepts everything
``starttls``    offers STARTTLS (``require_starttls=True``: refuses mail before it, 530)
``ssl``         implicit TLS from the first byte (SMTPS, port-465 style)
``auth``        AUTH PLAIN/LOGIN against ``users`` (default :data:`DEFAULT_USERS`), required;
                a wrong password gets ``535 5.7.8``
``flaky``       ``fail_code=451`` at ``fail_stage="data"`` for the first ``fail_times=1``
                transactions, then accepts (421 also closes the connection, as RFC 5321 says)
``reject``      ``fail_code=550`` for every transaction (``fail_times=None``)
``reject_rcpt`` ``550 5.1.1`` on RCPT for the addresses in ``reject_rcpt``, accepts the others
``drop``        after ``354`` it reads one line of the message and aborts the TCP connection
``hang``        receives the whole message, then never answers the end of DATA
``silent``      accepts TCP connections and never sends a byte (no greeting)
=============== =====================================================================================

In an async test over TLS, ``await server.wait_idle_async()`` before the test returns: the client's
TLS shutdown then completes in the test's own loop instead of being cut off when that loop closes.

Options of every kind include ``smtputf8=False`` (the server does not offer SMTPUTF8, as many MTAs
do not), ``pipelining=False`` (the server does not offer PIPELINING, RFC 2920; it is offered by
default, as MTAs and ESPs do) and the records' ``ehlo`` (the name the client greeted with).

The "first N" of ``fail_times`` / ``drop_times`` / ``hang_times`` counts transactions, i.e. MAIL
commands received by this server since it was created (``server.attempts``); ``None`` means all.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal, cast

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from consumer.devtools.smtp_sink import ehlo_reply

Kind = Literal["plain", "starttls", "ssl", "auth", "flaky", "reject", "reject_rcpt", "drop", "hang", "silent"]
Stage = Literal["mail", "rcpt", "data"]
TlsMode = Literal["none", "starttls", "ssl"]

KINDS: tuple[str, ...] = (
    "plain",
    "starttls",
    "ssl",
    "auth",
    "flaky",
    "reject",
    "reject_rcpt",
    "drop",
    "hang",
    "silent",
)
#: Login table of ``kind="auth"`` when no ``users`` are given.
DEFAULT_USERS: Mapping[str, str] = {"user": "secret"}
#: Host name the test servers announce in their greeting (and the name their certificate holds).
SERVER_HOSTNAME = "localhost"

_DEFAULT_REPLIES = {
    421: "421 4.3.2 Service not available, closing transmission channel",
    450: "450 4.2.1 Mailbox busy, try again later",
    451: "451 4.3.0 Temporary local problem, try again later",
    452: "452 4.3.1 Insufficient system storage",
    550: "550 5.7.1 Message rejected",
    552: "552 5.3.4 Message too big",
    554: "554 5.7.1 Transaction failed",
}


def default_reply(code: int) -> str:
    """A realistic reply line for ``code``."""
    if code in _DEFAULT_REPLIES:
        return _DEFAULT_REPLIES[code]
    return f"{code} {code // 100}.0.0 Injected failure"


@dataclass(frozen=True)
class ReceivedMessage:
    """One message a test server accepted (250 to the end of DATA)."""

    mail_from: str
    rcpt_tos: list[str]
    #: The message as received (CRLF line ends).
    data: bytes
    #: ``data`` parsed (``email.policy.default``, line ends normalised to LF).
    message: EmailMessage
    message_id: str | None
    #: ``"starttls"`` or ``"ssl"`` if the session was encrypted, else None.
    tls: str | None
    #: e.g. ``"TLSv1.3"``; None without TLS.
    tls_version: str | None
    #: The login the session authenticated as; None without AUTH.
    auth_login: str | None
    #: 1-based number of the TCP connection on this server (equal numbers: one reused connection).
    connection: int
    #: 0-based transaction number on this server (see ``SMTPTestServer.attempts``).
    transaction: int
    peer: tuple[str, int]
    mail_options: list[str]
    received_at: float
    #: The name the client gave with EHLO (or HELO).
    ehlo: str | None = None

    @property
    def subject(self) -> str | None:
        value = self.message["Subject"]
        return None if value is None else str(value)


@dataclass(frozen=True)
class AuthAttempt:
    mechanism: str
    login: str
    success: bool


class CertificateAuthority:
    """A throwaway CA (trustme) and a server certificate for 127.0.0.1 / localhost, on disk and in memory."""

    def __init__(
        self, directory: Path, identities: Iterable[str] = ("127.0.0.1", "localhost", "::1")
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert(*identities)
        #: The CA certificate (PEM): what a client trusts, e.g. aiosmtplib's ``cert_bundle=``.
        self.ca_pem = directory / "smtp-test-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem))
        #: The server's certificate chain and private key (PEM), for servers in other processes.
        self.server_cert_pem = directory / "smtp-test-server.pem"
        self.server_key_pem = directory / "smtp-test-server.key"
        self.server_cert.private_key_pem.write_to_path(str(self.server_key_pem))
        with self.server_cert_pem.open("wb") as out:
            for blob in self.server_cert.cert_chain_pems:
                out.write(blob.bytes())

    def client_context(self) -> ssl.SSLContext:
        """A client context that verifies the test servers (hostname checked) against this CA only."""
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_pem))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(context)
        return context


@dataclass
class _Waiters:
    """Wakes sync waiters (a Condition) and async waiters (an asyncio.Event in their loop) on change."""

    condition: threading.Condition = field(default_factory=lambda: threading.Condition(threading.RLock()))
    async_events: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=set)

    def notify(self) -> None:
        with self.condition:
            self.condition.notify_all()
            events = list(self.async_events)
        for loop, event in events:
            with contextlib.suppress(RuntimeError):  # that loop is closed: its waiter is gone
                loop.call_soon_threadsafe(event.set)


class _TestSMTP(SMTP):
    """aiosmtpd's SMTP with the test server's connection tracking, delays and faults."""

    def __init__(self, owner: SMTPTestServer, **kwargs: Any) -> None:
        super().__init__(owner._handler, **kwargs)
        self.owner = owner
        self.connection_number = 0
        self.next_reply_delay: float | None = None
        self._in_multiline_reply = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        starttls_upgrade = self._original_transport is not None
        super().connection_made(transport)
        if not starttls_upgrade:
            self.connection_number = self.owner._connected(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.owner._disconnected(self)
        super().connection_lost(error)

    @property
    def tls_mode(self) -> str | None:
        if self._tls_protocol is not None:
            return "starttls"
        if self.transport is not None and self.transport.get_extra_info("ssl_object") is not None:
            return "ssl"
        return None

    @property
    def tls_version(self) -> str | None:
        if self.transport is None:
            return None
        ssl_object = self.transport.get_extra_info("ssl_object")
        return None if ssl_object is None else cast(str | None, ssl_object.version())

    async def push(self, status: Any) -> None:
        text = status.decode() if isinstance(status, bytes) else str(status)
        if not self._in_multiline_reply:  # delays come before a reply, not between its lines
            delay = self.next_reply_delay if self.next_reply_delay is not None else self.owner.reply_delay
            self.next_reply_delay = None
            if delay > 0:
                await asyncio.sleep(delay)
        self._in_multiline_reply = text[3:4] == "-"
        await super().push(status)
        if text.startswith("421") and self.transport is not None:
            self.transport.close()  # 421: the server closes the channel

    async def smtp_DATA(self, arg: str) -> None:
        envelope = self.envelope
        if (
            envelope is not None
            and envelope.rcpt_tos
            and not arg
            and self.owner._take_fault("drop", envelope_transaction(envelope))
        ):
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader.readuntil(b"\r\n"), timeout=5)
            if isinstance(self.transport, asyncio.Transport):
                self.transport.abort()
            return
        await super().smtp_DATA(arg)


def envelope_transaction(envelope: Envelope) -> int:
    return cast(int, getattr(envelope, "test_transaction", -1))


class _Handler:
    """aiosmtpd handler hooks: records, rejects and hangs as the owner's options say."""

    def __init__(self, owner: SMTPTestServer) -> None:
        self.owner = owner

    async def handle_EHLO(
        self, server: _TestSMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        return ehlo_reply(session, hostname, responses, self.owner.pipelining)

    async def handle_MAIL(
        self, server: _TestSMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        transaction = self.owner._new_transaction()
        envelope.test_transaction = transaction  # type: ignore[attr-defined]
        failure = self.owner._failure("mail", transaction)
        if failure is not None:
            return failure
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: _TestSMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        failure = self.owner._failure("rcpt", envelope_transaction(envelope))
        if failure is not None:
            return failure
        if address.lower() in self.owner.reject_rcpt:
            self.owner._count("refused_rcpts", address)
            return f"{self.owner.reject_rcpt_code} 5.1.1 <{address}>: Recipient address rejected"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: _TestSMTP, session: Session, envelope: Envelope) -> str:
        # Shielded: a message whose final dot arrived is processed (and, if accepted, recorded) even
        # when the client gives up waiting for the reply, as a real MTA would.
        return await asyncio.shield(self._process(server, session, envelope))

    async def _process(self, server: _TestSMTP, session: Session, envelope: Envelope) -> str:
        owner = self.owner
        transaction = envelope_transaction(envelope)
        if owner._take_fault("hang", transaction):
            if owner.hang_seconds is None:
                await asyncio.Event().wait()  # until the server stops (its tasks are cancelled)
            else:
                await asyncio.sleep(owner.hang_seconds)
        failure = owner._failure("data", transaction)
        if failure is not None:
            return failure
        if owner.data_reply_delay is not None:
            server.next_reply_delay = owner.data_reply_delay
        data = envelope.original_content or b""
        parsed: EmailMessage = email.message_from_bytes(
            data.replace(b"\r\n", b"\n"), policy=email.policy.default
        )
        message_id = parsed["Message-ID"]
        auth_data = session.auth_data
        login = auth_data.login if isinstance(auth_data, LoginPassword) else None
        peer = session.peer if isinstance(session.peer, tuple) else ("", 0)
        owner._record(
            ReceivedMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                data=data,
                message=parsed,
                message_id=None if message_id is None else str(message_id).strip(),
                tls=server.tls_mode,
                tls_version=server.tls_version,
                auth_login=login.decode("utf-8", "replace") if isinstance(login, bytes) else None,
                connection=server.connection_number,
                transaction=transaction,
                peer=(str(peer[0]), int(peer[1])),
                mail_options=list(envelope.mail_options),
                received_at=time.time(),
                ehlo=session.host_name,
            )
        )
        return "250 2.0.0 OK: queued"


class _SilentProtocol(asyncio.Protocol):
    """Accepts a connection and never writes; counts it as a connection of its owner."""

    def __init__(self, owner: SMTPTestServer) -> None:
        self.owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.owner._connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._disconnected(self)

    def data_received(self, data: bytes) -> None:
        return None


class SMTPTestServer:
    """A real SMTP server on 127.0.0.1 for one test (see the module docstring for kinds and options)."""

    def __init__(
        self,
        kind: str = "plain",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ca: CertificateAuthority | None = None,
        tls: TlsMode | None = None,
        require_starttls: bool = False,
        users: Mapping[str, str] | None = None,
        auth_required: bool | None = None,
        auth_require_tls: bool = False,
        fail_code: int | None = None,
        fail_stage: Stage = "data",
        fail_times: int | None = 1,
        fail_reply: str | None = None,
        reject_rcpt: Iterable[str] = (),
        reject_rcpt_code: int = 550,
        drop_in_data: bool = False,
        drop_times: int | None = None,
        hang_at_data_end: bool = False,
        hang_times: int | None = None,
        hang_seconds: float | None = None,
        reply_delay: float = 0.0,
        data_reply_delay: float | None = None,
        smtputf8: bool = True,
        pipelining: bool = True,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown SMTP test server kind {kind!r}; one of {', '.join(KINDS)}")
        if fail_stage not in ("mail", "rcpt", "data"):
            raise ValueError(f"fail_stage must be mail, rcpt or data, not {fail_stage!r}")
        if kind == "auth" and users is None:
            users = DEFAULT_USERS
        if kind == "flaky" and fail_code is None:
            fail_code = 451
        if kind == "reject" and fail_code is None:
            fail_code, fail_times = 550, None
        if kind == "reject_rcpt" and not reject_rcpt:
            raise ValueError('kind="reject_rcpt" needs reject_rcpt=[addresses to refuse]')
        if kind == "drop":
            drop_in_data = True
        if kind == "hang":
            hang_at_data_end = True
        if tls is None:
            tls = "starttls" if kind == "starttls" else "ssl" if kind == "ssl" else "none"
        if tls != "none" and ca is None:
            raise ValueError(f"a {tls} server needs ca=CertificateAuthority(...)")
        self.kind = kind
        self.host = host
        self.port = port
        self.ca = ca
        self.tls: TlsMode = tls
        self.require_starttls = require_starttls
        self.users: dict[str, str] | None = None if users is None else dict(users)
        self.auth_required = (users is not None) if auth_required is None else auth_required
        self.auth_require_tls = auth_require_tls
        self.fail_code = fail_code
        self.fail_stage: Stage = fail_stage
        self.fail_times = fail_times
        self.fail_reply = fail_reply
        self.reject_rcpt = frozenset(address.lower() for address in reject_rcpt)
        self.reject_rcpt_code = reject_rcpt_code
        self.drop_in_data = drop_in_data
        self.drop_times = drop_times
        self.hang_at_data_end = hang_at_data_end
        self.hang_times = hang_times
        self.hang_seconds = hang_seconds
        self.reply_delay = reply_delay
        self.data_reply_delay = data_reply_delay
        self.smtputf8 = smtputf8
        self.pipelining = pipelining

        self._handler = _Handler(self)
        self._lock = threading.RLock()
        self._waiters = _Waiters(self._waiters_condition())
        self._messages: list[ReceivedMessage] = []
        self._auth_attempts: list[AuthAttempt] = []
        self._counters: dict[str, int] = {
            "connections": 0,
            "attempts": 0,
            "failures": 0,
            "drops": 0,
            "hangs": 0,
            "refused_rcpts": 0,
        }
        self._refused: list[str] = []
        self._live: set[asyncio.BaseProtocol] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None

    def _waiters_condition(self) -> threading.Condition:
        return threading.Condition(self._lock)

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> SMTPTestServer:
        """Listen (again) on ``host:port``; the first start picks a free port."""
        if self._thread is not None:
            raise RuntimeError(f"SMTP test server {self.address} is already running")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        errors: list[BaseException] = []
        thread = threading.Thread(
            target=self._run, args=(loop, ready, errors), name=f"smtp-test-{self.kind}", daemon=True
        )
        thread.start()
        if not ready.wait(10):
            raise TimeoutError(f"SMTP test server ({self.kind}) did not start within 10 s")
        if errors:
            thread.join(5)
            raise errors[0]
        self._loop, self._thread = loop, thread
        return self

    def stop(self) -> None:
        """Close the listener and abort every open connection (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(10)
        thread.join(10)
        self._loop = self._thread = None
        self._waiters.notify()

    def restart(self) -> SMTPTestServer:
        self.stop()
        return self.start()

    def __enter__(self) -> SMTPTestServer:
        return self if self.running else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(
        self, loop: asyncio.AbstractEventLoop, ready: threading.Event, errors: list[BaseException]
    ) -> None:
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(self._listen())
        except BaseException as error:  # reported to start()
            errors.append(error)
            ready.set()
            loop.close()
            return
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _listen(self) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        factory: Callable[[], asyncio.BaseProtocol] = (
            self._silent_factory if self.kind == "silent" else self._smtp_factory
        )
        ssl_context = self.ca.server_context() if self.tls == "ssl" and self.ca is not None else None
        server = await loop.create_server(factory, self.host, self.port, ssl=ssl_context)
        self.port = int(server.sockets[0].getsockname()[1])
        return server

    def _silent_factory(self) -> _SilentProtocol:
        return _SilentProtocol(self)

    def _smtp_factory(self) -> _TestSMTP:
        tls_context = self.ca.server_context() if self.tls == "starttls" and self.ca is not None else None
        kwargs: dict[str, Any] = {
            "hostname": SERVER_HOSTNAME,
            "ident": "eventmail test SMTP",
            "enable_SMTPUTF8": self.smtputf8,
            "tls_context": tls_context,
            "require_starttls": self.require_starttls,
            "auth_require_tls": self.auth_require_tls,
            "loop": asyncio.get_running_loop(),
        }
        if self.users is not None:
            kwargs["authenticator"] = self._authenticate
        smtp = _TestSMTP(self, **kwargs)
        # Set after construction: aiosmtpd warns about AUTH without TLS, which these servers allow on purpose.
        smtp._auth_required = self.auth_required
        return smtp

    async def _close(self) -> None:
        server = self._server
        self._server = None
        if server is not None:
            server.close()
        with self._lock:
            live = list(self._live)
        for protocol in live:
            transport = getattr(protocol, "transport", None)
            original = getattr(protocol, "_original_transport", None)
            for item in (transport, original):
                if isinstance(item, asyncio.BaseTransport) and hasattr(item, "abort"):
                    item.abort()
        await asyncio.sleep(0)
        asyncio.get_running_loop().stop()

    # -- recording (called in the server's loop thread) ------------------------------------------

    def _connected(self, protocol: asyncio.BaseProtocol) -> int:
        with self._lock:
            self._live.add(protocol)
            self._counters["connections"] += 1
            number = self._counters["connections"]
        self._waiters.notify()
        return number

    def _disconnected(self, protocol: asyncio.BaseProtocol) -> None:
        with self._lock:
            self._live.discard(protocol)
        self._waiters.notify()

    def _new_transaction(self) -> int:
        with self._lock:
            number = self._counters["attempts"]
            self._counters["attempts"] += 1
        self._waiters.notify()
        return number

    def _count(self, name: str, refused: str | None = None) -> None:
        with self._lock:
            self._counters[name] += 1
            if refused is not None:
                self._refused.append(refused)
        self._waiters.notify()

    def _take_fault(self, fault: Literal["drop", "hang"], transaction: int) -> bool:
        enabled, times = (
            (self.drop_in_data, self.drop_times)
            if fault == "drop"
            else (self.hang_at_data_end, self.hang_times)
        )
        if not enabled or (times is not None and transaction >= times):
            return False
        self._count("drops" if fault == "drop" else "hangs")
        return True

    def _failure(self, stage: Stage, transaction: int) -> str | None:
        if self.fail_code is None or stage != self.fail_stage:
            return None
        if self.fail_times is not None and transaction >= self.fail_times:
            return None
        self._count("failures")
        return self.fail_reply or default_reply(self.fail_code)

    def _record(self, message: ReceivedMessage) -> None:
        with self._lock:
            self._messages.append(message)
        self._waiters.notify()

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        users = self.users or {}
        ok = False
        login = ""
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
            ok = login in users and users[login] == password
        with self._lock:
            self._auth_attempts.append(AuthAttempt(mechanism, login, ok))
        self._waiters.notify()
        if ok:
            return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)

    # -- what the server saw ---------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A snapshot of the accepted messages, in arrival order."""
        with self._lock:
            return list(self._messages)

    @property
    def message_ids(self) -> list[str | None]:
        return [message.message_id for message in self.messages]

    @property
    def connections(self) -> int:
        """TCP connections accepted since creation (a STARTTLS upgrade is not a new one)."""
        with self._lock:
            return self._counters["connections"]

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._live)

    @property
    def attempts(self) -> int:
        """Transactions begun (MAIL commands received), accepted or not."""
        with self._lock:
            return self._counters["attempts"]

    @property
    def failures(self) -> int:
        """Injected ``fail_code`` replies sent."""
        with self._lock:
            return self._counters["failures"]

    @property
    def drops(self) -> int:
        with self._lock:
            return self._counters["drops"]

    @property
    def hangs(self) -> int:
        with self._lock:
            return self._counters["hangs"]

    @property
    def refused_rcpts(self) -> list[str]:
        """Recipients refused through ``reject_rcpt``, in order."""
        with self._lock:
            return list(self._refused)

    @property
    def auth_attempts(self) -> list[AuthAttempt]:
        with self._lock:
            return list(self._auth_attempts)

    def clear(self) -> None:
        """Forget the recorded messages (counters stay)."""
        with self._lock:
            self._messages.clear()

    # -- waiting ---------------------------------------------------------------------------------

    def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
    ) -> None:
        """Block until ``predicate()`` holds, re-checked on every server event; else TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._waiters.condition:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {what} within {timeout} s: {self}")
                self._waiters.condition.wait(remaining)

    async def wait_until_async(
        self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
    ) -> None:
        """:meth:`wait_until` for async tests: awaits without blocking the caller's loop."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        entry = (loop, event)
        deadline = loop.time() + timeout
        with self._lock:
            self._waiters.async_events.add(entry)
        try:
            while not predicate():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"no {what} within {timeout} s: {self}")
                event.clear()
                if predicate():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
        finally:
            with self._lock:
                self._waiters.async_events.discard(entry)

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Block until no client connection is open (every session ended, e.g. after QUIT)."""
        self.wait_until(lambda: not self._live, timeout, "idle server (open connections)")

    async def wait_idle_async(self, timeout: float = 5.0) -> None:
        """Await the end of every open session; after it, a client's TLS shutdown is complete too."""
        await self.wait_until_async(lambda: not self._live, timeout, "idle server (open connections)")

    def wait_for(self, n: int = 1, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Block until at least ``n`` messages were accepted; returns all of them.

        In an async test whose own loop is sending, use :meth:`wait_for_async` instead.
        """
        self.wait_until(lambda: len(self._messages) >= n, timeout, f"{n} message(s)")
        return self.messages

    async def wait_for_async(self, n: int = 1, timeout: float = 5.0) -> list[ReceivedMessage]:
        await self.wait_until_async(lambda: len(self._messages) >= n, timeout, f"{n} message(s)")
        return self.messages

    def __repr__(self) -> str:
        with self._lock:
            counters = ", ".join(f"{name}={value}" for name, value in self._counters.items())
            accepted = len(self._messages)
        state = "running" if self.running else "stopped"
        return f"<SMTPTestServer {self.kind} {self.address} {state}: messages={accepted}, {counters}>"


class SMTPServerFactory:
    """``factory(kind="plain", **options) -> SMTPTestServer`` (started); :meth:`cleanup` stops them all."""

    def __init__(self, ca: CertificateAuthority | Callable[[], CertificateAuthority] | None = None) -> None:
        self._ca = ca
        self.servers: list[SMTPTestServer] = []

    @property
    def ca(self) -> CertificateAuthority:
        if self._ca is None:
            raise RuntimeError("this SMTP server factory has no certificate authority")
        if not isinstance(self._ca, CertificateAuthority):
            self._ca = self._ca()
        return self._ca

    def __call__(self, kind: str = "plain", *, start: bool = True, **options: Any) -> SMTPTestServer:
        needs_tls = kind in ("starttls", "ssl") or options.get("tls") in ("starttls", "ssl")
        if needs_tls and options.get("ca") is None:
            options["ca"] = self.ca
        server = SMTPTestServer(kind, **options)
        self.servers.append(server)
        if start:
            server.start()
        return server

    def cleanup(self) -> None:
        for server in self.servers:
            server.stop()
