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
from collections.abc import Sequence
from dataclasses import dataclass

from aiosmtplib import (
    SMTP,
    SMTPException,
    SMTPReadTimeoutError,
    SMTPResponse,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPStatus,
)
from aiosmtplib.protocol import MAX_LINE_LENGTH, MAX_RESPONSE_LENGTH, SMTPProtocol

__all__ = ["Replies", "ReplyReader", "install", "reader_of"]


@dataclass(frozen=True)
class Replies:
    """The replies to a pipelined group, in order. Fewer than the commands when the group ended
    early: at a 421 (the server is closing the channel: nothing after it counts, as aiosmtplib sends
    nothing after one), or when the connection was lost, a reply did not come in time or could not
    be read (``cut``)."""

    replies: list[SMTPResponse]
    #: Why a reply is missing, when it is not a 421: SMTPServerDisconnected, SMTPReadTimeoutError
    #: or SMTPResponseException (a reply that cannot be read).
    cut: SMTPException | None = None


class ReplyReader(asyncio.Protocol):
    """The transport's protocol while a session pipelines: replies of a group to :meth:`exchange`,
    everything else to aiosmtplib's protocol (``inner``)."""

    def __init__(self, inner: SMTPProtocol) -> None:
        self._inner = inner
        self._buffer = bytearray()
        self._replies: list[SMTPResponse] = []
        self._seconds: Sequence[float] = ()
        self._waiter: asyncio.Future[Replies] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def exchange(self, payload: bytes, seconds: Sequence[float]) -> Replies:
        """Write ``payload`` (commands, or a message's content) and read one reply per entry of
        ``seconds``, each waited for that long after the one before. SMTPServerDisconnected,
        SMTPReadTimeoutError or SMTPResponseException (a reply that cannot be read) when not even
        the first reply came; a :class:`Replies` cut short by that error when a later one did not."""
        if self._waiter is not None:
            raise RuntimeError("a pipelined group is already waiting for its replies")
        waiter: asyncio.Future[Replies] = asyncio.get_running_loop().create_future()
        self._buffer.clear()
        self._replies, self._seconds, self._waiter = [], seconds, waiter
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
            while len(self._replies) < len(self._seconds):
                reply = self._next_reply()
                if reply is None:
                    if len(self._replies) > before:
                        self._arm()  # each reply has its own time, counted from the one before
                    return
                self._replies.append(reply)
                if reply.code == SMTPStatus.domain_unavailable:
                    break  # 421: the server is closing the channel; whatever follows is not an answer
        except SMTPResponseException as exc:
            self._end(exc)  # a reply that cannot be read: like a silence after the ones before it
            return
        self._end(None)

    def eof_received(self) -> bool | None:
        self._end(SMTPServerDisconnected("Unexpected EOF received"))
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        error = SMTPServerDisconnected("Connection lost")
        error.__cause__ = exc
        self._end(error)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- inside ----------------------------------------------------------------------------------------

    def _next_reply(self) -> SMTPResponse | None:
        """The first complete reply in the buffer, removed from it; None while it is incomplete.
        aiosmtplib's parsing and limits: a line over MAX_LINE_LENGTH, an unfinished reply over
        MAX_RESPONSE_LENGTH (the replies before it are off the buffer by then) or a line without a
        code raise SMTPResponseException."""
        message, offset = bytearray(), 0
        while True:
            end = self._buffer.find(b"\n", offset)
            if end < 0:
                if len(self._buffer) > MAX_RESPONSE_LENGTH:
                    raise _too_long()
                return None
            line = bytes(self._buffer[offset : end + 1])
            if len(line) > MAX_LINE_LENGTH:
                raise _too_long()
            try:
                code = int(line[:3])
            except ValueError:
                text = line.decode("utf-8", errors="ignore")
                raise SMTPResponseException(
                    SMTPStatus.invalid_response.value, f"Malformed SMTP response line: {text}"
                ) from None
            offset = end + 1
            if message:  # aiosmtplib's joining: an empty first line adds no line break
                message.extend(b"\n")
            message.extend(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                if offset > MAX_RESPONSE_LENGTH:
                    raise _too_long()
                del self._buffer[:offset]
                return SMTPResponse(code, bytes(message).decode("utf-8", "surrogateescape"))

    def _end(self, error: SMTPException | None) -> None:
        """End the group: the replies so far, cut by ``error`` when there are some, else ``error``
        itself."""
        waiter = self._waiter
        self._disarm()
        if waiter is None or waiter.done():
            return
        if error is None or self._replies:
            waiter.set_result(Replies(list(self._replies), error))
        else:
            waiter.set_exception(error)

    def _arm(self) -> None:
        """(Re)start the wait for the next reply."""
        self._disarm()
        waiting = len(self._replies)
        if self._waiter is not None and not self._waiter.done() and waiting < len(self._seconds):
            self._timer = asyncio.get_running_loop().call_later(self._seconds[waiting], self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        self._end(SMTPReadTimeoutError("Timed out waiting for server response"))


def _too_long() -> SMTPResponseException:
    """aiosmtplib's error for a reply line or a reply over its limits."""
    return SMTPResponseException(SMTPStatus.invalid_response.value, "Response too long")


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
