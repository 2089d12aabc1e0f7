"""SMTP command pipelining (RFC 2920) on an aiosmtplib session: several commands in one write, their
replies read together.

aiosmtplib sends one command and waits for its reply; its protocol drops a reply that arrives while
no command waits for one, so it cannot read the replies of a pipelined group. A
:class:`ReplyReader` sits between the session's transport and aiosmtplib's protocol. Between groups
it hands every callback to that protocol unchanged, so RSET, NOOP, QUIT and aiosmtplib's own error
handling work as before. While a group is out (:meth:`ReplyReader.exchange`) it reads the replies
itself, parsed as aiosmtplib parses them (the same codes, the same message text, the same limits).

:func:`install` puts one on a session once it is greeted, encrypted and authenticated, and only when
the server's EHLO reply offers PIPELINING; :func:`reader_of` finds it again. A session without one
(the server does not offer it, or ``EVENTMAIL_SMTP__PIPELINING=false``) sends one command at a time.
"""

from __future__ import annotations

import asyncio

from aiosmtplib import (
    SMTP,
    SMTPReadTimeoutError,
    SMTPResponse,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPStatus,
)
from aiosmtplib.protocol import MAX_LINE_LENGTH, MAX_RESPONSE_LENGTH, SMTPProtocol

__all__ = ["ReplyReader", "install", "reader_of"]


class ReplyReader(asyncio.Protocol):
    """The transport's protocol while a session pipelines: replies of a group to :meth:`exchange`,
    everything else to aiosmtplib's protocol (``inner``)."""

    def __init__(self, inner: SMTPProtocol) -> None:
        self._inner = inner
        self._buffer = bytearray()
        self._replies: list[SMTPResponse] = []
        self._expected = 0
        self._waiter: asyncio.Future[list[SMTPResponse]] | None = None
        self._timeout: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def exchange(self, payload: bytes, replies: int, seconds: float | None) -> list[SMTPResponse]:
        """Write ``payload`` (``replies`` commands, or a message's content) and return the server's
        ``replies`` replies in order; fewer when the server closed the connection after them (a 421
        reply, say), SMTPServerDisconnected when it closed it before the first one.
        ``seconds`` bounds the wait for each reply (not the group's): SMTPReadTimeoutError when it
        passes."""
        if self._waiter is not None:
            raise RuntimeError("a pipelined group is already waiting for its replies")
        waiter: asyncio.Future[list[SMTPResponse]] = asyncio.get_running_loop().create_future()
        self._buffer.clear()
        self._replies, self._expected, self._waiter, self._timeout = [], replies, waiter, seconds
        try:
            self._inner.write(payload)  # SMTPServerDisconnected when the connection is gone
            self._arm()
            return await waiter
        finally:
            self._waiter = None
            self._disarm()

    # -- the transport's callbacks -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self._inner.data_received(data)
            return
        self._buffer.extend(data)
        before = len(self._replies)
        try:
            while len(self._replies) < self._expected:
                reply = self._next_reply()
                if reply is None:
                    if len(self._replies) > before:
                        self._arm()  # the timeout bounds the wait for each reply, not the group's
                    return
                self._replies.append(reply)
        except SMTPResponseException as exc:
            self._fail(exc)
            return
        self._finish()

    def eof_received(self) -> bool | None:
        self._lost(SMTPServerDisconnected("Unexpected EOF received"))
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        error = SMTPServerDisconnected("Connection lost")
        error.__cause__ = exc
        self._lost(error)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- inside ----------------------------------------------------------------------------------------

    def _next_reply(self) -> SMTPResponse | None:
        """The first complete reply in the buffer, removed from it (aiosmtplib's parsing and limits);
        None while it is incomplete."""
        if len(self._buffer) > MAX_RESPONSE_LENGTH:
            raise SMTPResponseException(SMTPStatus.invalid_response.value, "Response too long")
        code, lines, offset = -1, [], 0
        while True:
            end = self._buffer.find(b"\n", offset)
            if end < 0:
                return None
            line = bytes(self._buffer[offset : end + 1])
            if len(line) > MAX_LINE_LENGTH:
                raise SMTPResponseException(SMTPStatus.invalid_response.value, "Response too long")
            try:
                code = int(line[:3])
            except ValueError:
                text = line.decode("utf-8", errors="ignore")
                raise SMTPResponseException(
                    SMTPStatus.invalid_response.value, f"Malformed SMTP response line: {text}"
                ) from None
            offset = end + 1
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                del self._buffer[:offset]
                return SMTPResponse(code, b"\n".join(lines).decode("utf-8", "surrogateescape"))

    def _finish(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(self._replies)
        self._disarm()

    def _fail(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self._disarm()

    def _lost(self, exc: SMTPServerDisconnected) -> None:
        """The connection ended while a group waits: the replies so far, if there are any (the
        caller reads what the server said before it left), else the error."""
        if self._replies:
            self._finish()
        else:
            self._fail(exc)

    def _arm(self) -> None:
        """(Re)start the wait for the next reply."""
        self._disarm()
        if self._timeout is not None and self._waiter is not None and not self._waiter.done():
            self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        self._fail(SMTPReadTimeoutError("Timed out waiting for server response"))


def install(client: SMTP) -> ReplyReader | None:
    """Put a :class:`ReplyReader` on ``client``'s connection when its server offers PIPELINING (after
    EHLO, STARTTLS and AUTH: a STARTTLS replaces the transport); the reader, else None."""
    protocol, transport = client.protocol, client.transport
    if protocol is None or transport is None or not client.supports_extension("pipelining"):
        return None
    reader = ReplyReader(protocol)
    transport.set_protocol(reader)
    return reader


def reader_of(client: SMTP) -> ReplyReader | None:
    """The reader :func:`install` put on ``client``'s connection, if it did."""
    transport = client.transport
    if transport is None or transport.is_closing():
        return None
    protocol = transport.get_protocol()
    return protocol if isinstance(protocol, ReplyReader) else None
