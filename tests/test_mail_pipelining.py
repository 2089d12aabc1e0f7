"""SMTP pipelining (RFC 2920): with a server that offers it, MAIL, every RCPT and DATA go in one write
and the message in a second, and every reply means what it means one command at a time.

Each case runs twice against the same server, once offering PIPELINING and once not, and the two
results (or errors) must be equal: the pipelined transaction is checked against the one it
replaces. The servers are real: aiosmtpd's (:mod:`tests.support.smtp`) and :class:`ScriptedServer`,
a raw SMTP server on a socket whose replies a test dictates (a 421 that closes, a reply split into
single bytes, a malformed line, a server that stops answering)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer import eventloop
from consumer.mail import (
    ConnectionParams,
    MailAddress,
    PermanentSendError,
    Rendered,
    SendError,
    SendResult,
    SendTimeoutError,
    Transport,
    build_message,
)
from consumer.mail.message import BuiltMessage
from consumer.mail.pipelining import reader_of
from consumer.mail.session import Timeouts, open_session
from consumer.settings import Encryption, SmtpSettings
from tests.support.smtp import SMTPServerFactory, SMTPTestServer

FAST = SmtpSettings(
    connect_timeout_seconds=2.0,
    command_timeout_seconds=1.0,
    data_timeout_seconds=1.0,
    in_place_retries=0,
    retry_base_seconds=0.01,
    retry_max_seconds=0.02,
)


def built(n: int = 1, to: tuple[str, ...] = ("ops@example.com",), body: str | None = None) -> BuiltMessage:
    return build_message(
        Rendered(f"message {n}", body if body is not None else f"body {n}\n", None),
        sender=MailAddress("sales@example.com", "Sales"),
        to=[MailAddress(address) for address in to],
        event_id=f"ev-{n}",
        rule_id="r-1",
    )


def plain(host: str, port: int, name: str = "relay") -> ConnectionParams:
    return ConnectionParams(name=name, host=host, port=port, encryption=Encryption.NONE)


# -- a server whose replies the test dictates -----------------------------------------------------------


@dataclass
class Script:
    """What :class:`ScriptedServer` answers. ``replies`` maps a verb (``MAIL``, ``DATA``, ``.`` for
    the end of the message) or ``RCPT <address>`` to its reply, raw bytes with CRLFs; the defaults are
    a relay's (RCPT 503 after a refused MAIL, DATA 554 with no recipient accepted)."""

    pipelining: bool = True
    replies: dict[str, bytes] = field(default_factory=dict)
    #: Close the connection right after answering this verb.
    close_after: str | None = None
    #: Never answer this verb (nor anything after it).
    hang_at: str | None = None
    #: Write each reply a byte at a time.
    bytewise: bool = False
    #: Answer nothing of a transaction before its DATA line arrived (only a pipelining client gets
    #: any reply), then every reply in one write.
    lockstep: bool = False


class ScriptedServer:
    """A raw SMTP server on 127.0.0.1 in the test's loop, answering as its :class:`Script` says and
    keeping what it received: ``lines`` (commands) and ``messages`` (content of accepted DATA)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.lines: list[bytes] = []
        self.messages: list[bytes] = []
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        script = self.script
        pending: list[bytes] = []
        state: dict[str, Any] = {"mail": False, "rcpts": 0}

        async def send(reply: bytes, verb: str) -> bool:
            """Answer (or hold, in lockstep); False once the connection is to end."""
            if verb == script.hang_at:
                await asyncio.Event().wait()
            if script.lockstep and verb in ("MAIL", "RCPT"):
                pending.append(reply)
                return True
            chunks = [*pending, reply]
            pending.clear()
            if script.bytewise:
                for byte in b"".join(chunks):
                    writer.write(bytes([byte]))
                    await writer.drain()
            else:
                writer.write(b"".join(chunks))
                await writer.drain()
            if verb == script.close_after or reply.startswith(b"421"):
                writer.close()
                return False
            return True

        try:
            writer.write(b"220 scripted ESMTP\r\n")
            while True:
                line = await reader.readuntil(b"\r\n")
                self.lines.append(line)
                verb = line[:4].upper().decode()
                if verb == "EHLO":
                    extensions = [b"SIZE 1000000", b"8BITMIME", b"SMTPUTF8"]
                    if script.pipelining:
                        extensions.append(b"PIPELINING")
                    names = [b"scripted", *extensions]
                    reply = b"".join(
                        b"250" + (b" " if n == len(names) - 1 else b"-") + name + b"\r\n"
                        for n, name in enumerate(names)
                    )
                    writer.write(reply)
                elif verb == "MAIL":
                    reply = script.replies.get("MAIL", b"250 2.1.0 sender ok\r\n")
                    state["mail"], state["rcpts"] = reply.startswith(b"250"), 0
                    if not await send(reply, "MAIL"):
                        return
                elif verb == "RCPT":
                    address = line.split(b"<", 1)[1].split(b">", 1)[0].decode()
                    default = b"250 2.1.5 ok\r\n" if state["mail"] else b"503 5.5.1 sender first\r\n"
                    reply = script.replies.get(f"RCPT {address}", default)
                    state["rcpts"] += reply.startswith(b"25")
                    if not await send(reply, "RCPT"):
                        return
                elif verb == "DATA":
                    default = b"354 go ahead\r\n" if state["rcpts"] else b"554 5.5.1 no valid recipients\r\n"
                    reply = script.replies.get("DATA", default)
                    if not await send(reply, "DATA"):
                        return
                    if reply.startswith(b"354"):
                        content = await reader.readuntil(b"\r\n.\r\n")
                        end = script.replies.get(".", b"250 2.0.0 queued as 1\r\n")
                        if end.startswith(b"250"):
                            self.messages.append(content)
                        if not await send(end, "."):
                            return
                elif verb in ("RSET", "NOOP"):
                    state["mail"], state["rcpts"] = False, 0
                    writer.write(b"250 2.0.0 ok\r\n")
                elif verb == "QUIT":
                    writer.write(b"221 bye\r\n")
                    writer.close()
                    return
                else:
                    writer.write(b"500 5.5.2 what\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@dataclass(frozen=True)
class Sent:
    """What a send came to: equal across the two modes when the result (or error) and the messages
    the server kept are (the command lines differ: pipelined, MAIL's refusal comes after the RCPTs)."""

    result: tuple[Any, ...] | None
    error: tuple[Any, ...] | None
    lines: tuple[bytes, ...] = field(compare=False)
    messages: tuple[bytes, ...]


def outcome(result: SendResult | None, error: SendError | None) -> tuple[Any, ...]:
    if result is not None:
        return (result.code, result.reply, result.accepted, result.refused)
    assert error is not None
    return (type(error).__name__, str(error), error.code, error.reply, error.reason, error.refused)


async def send_scripted(script: Script, message: BuiltMessage, settings: SmtpSettings = FAST) -> Sent:
    async with ScriptedServer(script) as server:
        transport = Transport(settings, local_hostname="client.test")
        result: SendResult | None = None
        error: SendError | None = None
        try:
            result = await transport.send(plain("127.0.0.1", server.port), message)
        except SendError as exc:
            error = exc
        finally:
            await transport.close()
        lines = tuple(line for line in server.lines if not line.startswith((b"EHLO", b"QUIT")))
        said = None if error is None else outcome(None, error)
        if said is not None:  # the address names this server's port: the same text on either server
            said = (said[0], said[1].replace(f":{server.port}", ":PORT"), *said[2:])
        return Sent(
            None if result is None else outcome(result, None),
            said,
            lines,
            tuple(server.messages),
        )


async def both_ways(script: Script, message: BuiltMessage) -> Sent:
    """The send with PIPELINING offered and without: equal; the pipelined one."""
    pipelined = await send_scripted(dataclasses.replace(script, pipelining=True), message)
    one_at_a_time = await send_scripted(dataclasses.replace(script, pipelining=False), message)
    assert pipelined == one_at_a_time
    return pipelined


# -- the proof that the client pipelines ----------------------------------------------------------------


async def test_the_commands_go_together_when_the_server_offers_pipelining() -> None:
    # lockstep: no reply before the DATA line, so a client waiting for MAIL's reply would time out
    sent = await send_scripted(Script(lockstep=True), built(to=("a@example.com", "b@example.com")))
    assert sent.error is None
    assert sent.result is not None
    assert sent.result[0] == 250
    assert [line.split(b":")[0] for line in sent.lines] == [b"MAIL FROM", b"RCPT TO", b"RCPT TO", b"DATA\r\n"]
    assert len(sent.messages) == 1


async def test_without_pipelining_offered_the_client_waits_for_each_reply() -> None:
    sent = await send_scripted(Script(lockstep=True, pipelining=False), built())
    assert sent.error is not None
    assert sent.error[0] == "SendTimeoutError"
    assert sent.lines == (b"MAIL FROM:<sales@example.com> SIZE=" + sent.lines[0].split(b"SIZE=")[1],)
    assert sent.messages == ()


async def test_the_setting_turns_pipelining_off() -> None:
    off = FAST.model_copy(update={"pipelining": False})
    sent = await send_scripted(Script(lockstep=True, pipelining=True), built(), off)
    assert sent.error is not None
    assert sent.error[0] == "SendTimeoutError"
    async with ScriptedServer(Script()) as server:
        timeouts = Timeouts.from_settings(FAST)
        for pipelining, expected in ((True, True), (False, False)):
            traced: list[str] = []
            client = await open_session(
                plain("127.0.0.1", server.port), timeouts, None, "c", traced.append, pipelining=pipelining
            )
            assert (reader_of(client) is not None) is expected
            assert any(line.startswith("pipelining: ") for line in traced) is expected
            client.close()


# -- every reply means the same as one command at a time --------------------------------------------


async def test_a_delivered_mail_is_the_same_either_way() -> None:
    body = ".starts with a dot\n..two\nlone\rcarriage\r\n.\nno final newline"
    message = built(body=body, to=("a@example.com", "b@example.com"))
    sent = await both_ways(Script(), message)
    assert sent.result == (250, "2.0.0 queued as 1", ("a@example.com", "b@example.com"), {})
    # every line that starts with a dot gets another (RFC 5321 4.5.2), then the final dot
    (content,) = sent.messages
    assert b"\r\n..starts with a dot\r\n...two\r\n" in content
    assert content == message.data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(Script(bytewise=True), id="replies-a-byte-at-a-time"),
        pytest.param(
            Script(replies={"MAIL": b"250-2.1.0 sender\r\n250-second line\r\n250 ok\r\n"}), id="multiline"
        ),
        pytest.param(Script(replies={"MAIL": b"451 4.3.0 busy, later\r\n"}), id="mail-451"),
        pytest.param(Script(replies={"MAIL": b"550 5.7.1 sender refused\r\n"}), id="mail-550"),
        pytest.param(Script(replies={"MAIL": b"421 4.3.2 closing\r\n"}), id="mail-421-closes"),
        pytest.param(
            Script(replies={"RCPT b@example.com": b"550 5.1.1 no such user\r\n"}), id="one-rcpt-refused"
        ),
        pytest.param(
            Script(
                replies={
                    "RCPT a@example.com": b"550 5.1.1 no such user\r\n",
                    "RCPT b@example.com": b"450 4.2.1 greylisted\r\n",
                }
            ),
            id="every-rcpt-refused",
        ),
        pytest.param(Script(replies={"RCPT a@example.com": b"421 4.3.2 closing\r\n"}), id="rcpt-421-closes"),
        pytest.param(Script(replies={"DATA": b"451 4.3.0 no DATA now\r\n"}), id="data-451"),
        pytest.param(Script(replies={".": b"552 5.3.4 too big\r\n"}), id="content-552"),
        pytest.param(Script(replies={".": b"451 4.3.0 try later\r\n"}), id="content-451"),
        pytest.param(Script(replies={"MAIL": b"25x what\r\n"}), id="malformed-reply"),
        pytest.param(Script(close_after="MAIL"), id="closed-after-mail"),
        pytest.param(Script(close_after="RCPT"), id="closed-after-rcpt"),
        pytest.param(Script(hang_at="RCPT"), id="no-reply-to-rcpt"),
        pytest.param(Script(hang_at="."), id="no-reply-to-the-content"),
    ],
)
async def test_each_reply_means_the_same_pipelined(script: Script) -> None:
    await both_ways(script, built(to=("a@example.com", "b@example.com")))


async def test_data_taken_with_no_recipient_sends_no_content() -> None:
    # a broken server: every RCPT refused, DATA answered 354 anyway (RFC 2920 3.1)
    script = Script(
        replies={"RCPT a@example.com": b"550 5.1.1 no\r\n", "DATA": b"354 go ahead anyway\r\n"},
        pipelining=True,
    )
    sent = await send_scripted(script, built(to=("a@example.com",)))
    assert sent.error is not None
    assert sent.error[0] == "PermanentSendError"
    assert "every recipient was refused" in sent.error[1]
    assert sent.messages == ()


async def test_a_timeout_discards_the_session_and_the_next_send_reconnects() -> None:
    script = Script(hang_at="RCPT")
    async with ScriptedServer(script) as server:
        transport = Transport(FAST, local_hostname="client.test")
        params = plain("127.0.0.1", server.port)
        try:
            with pytest.raises(SendTimeoutError):
                await transport.send(params, built(1))
            assert transport.pool_size(params) == 0
            script.hang_at = None
            result = await transport.send(params, built(2))
            assert result.code == 250
            assert server.connections == 2
        finally:
            await transport.close()


async def test_a_refused_mail_leaves_a_session_that_rsets_and_sends_the_next_one() -> None:
    # the RSET after a refusal goes through aiosmtplib, past the reply reader, on the same connection
    script = Script(replies={"MAIL": b"550 5.7.1 not you\r\n"})
    async with ScriptedServer(script) as server:
        transport = Transport(FAST, local_hostname="client.test")
        params = plain("127.0.0.1", server.port)
        try:
            with pytest.raises(PermanentSendError):
                await transport.send(params, built(1))
            script.replies.clear()
            results = [await transport.send(params, built(n)) for n in range(2, 5)]
            assert [r.code for r in results] == [250, 250, 250]
            assert server.connections == 1
            verbs = [line[:4] for line in server.lines]
            assert verbs == [b"EHLO", b"MAIL", b"RCPT", b"DATA", b"RSET"] + [b"MAIL", b"RCPT", b"DATA"] * 3
        finally:
            await transport.close()


# -- aiosmtpd, both event loops, the pool under load ----------------------------------------------------


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_pipelined_sends_on_both_event_loops(loop: str, smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("reject_rcpt", reject_rcpt=["nobody@example.com"])

    async def main() -> list[SendResult]:
        transport = Transport(FAST, local_hostname="client.test")
        params = plain(server.host, server.port)
        try:
            sends = [
                transport.send(params, built(n, ("ops@example.com", "nobody@example.com"))) for n in range(50)
            ]
            results = await asyncio.gather(*sends)
            assert transport.pool_size(params) <= params.max_connections
            return results
        finally:
            await transport.close()

    results = eventloop.run(main(), loop)
    assert {r.accepted for r in results} == {("ops@example.com",)}
    assert {tuple(r.refused) for r in results} == {("nobody@example.com",)}
    received = server.wait_for(50)
    assert sorted(m.subject or "" for m in received) == sorted(f"message {n}" for n in range(50))
    assert {tuple(m.rcpt_tos) for m in received} == {("ops@example.com",)}


@pytest.fixture
def twin_servers(smtp_server_factory: SMTPServerFactory) -> Iterator[tuple[SMTPTestServer, SMTPTestServer]]:
    return (
        smtp_server_factory("reject_rcpt", reject_rcpt=["refused@example.com"], pipelining=True),
        smtp_server_factory("reject_rcpt", reject_rcpt=["refused@example.com"], pipelining=False),
    )


_LINE = st.text(st.sampled_from("ab.\r\n é"), max_size=12)
_RECIPIENTS = st.lists(
    st.sampled_from(["a@example.com", "b@example.com", "refused@example.com", "ü@example.com"]),
    min_size=1,
    max_size=3,
    unique=True,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.lists(_LINE, max_size=6).map("\n".join), recipients=_RECIPIENTS)
def test_aiosmtpd_receives_the_same_mail_either_way(
    twin_servers: tuple[SMTPTestServer, SMTPTestServer], body: str, recipients: list[str]
) -> None:
    """Property: for any body (dots, lone CRs and LFs, 8-bit text) and recipients (one refused, one
    international), both servers get the same envelope and bytes and the sends say the same."""

    message = built(7, tuple(recipients), body)  # one message: its Date header is the same for both

    async def send_to(server: SMTPTestServer) -> tuple[Any, ...]:
        server.clear()
        transport = Transport(FAST, local_hostname="client.test")
        try:
            result = await transport.send(plain(server.host, server.port), message)
            said: tuple[Any, ...] = outcome(result, None)
        except SendError as exc:
            said = outcome(None, exc)
        finally:
            await transport.close()
        if said[0] == 250:
            (received,) = server.wait_for(1)
            return said, received.mail_from, received.rcpt_tos, received.mail_options, received.data
        return (said,)

    pipelined, one_at_a_time = (eventloop.run(send_to(server)) for server in twin_servers)
    assert pipelined == one_at_a_time
