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
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer import eventloop
from consumer.mail import (
    ConnectionDroppedError,
    ConnectionParams,
    MailAddress,
    PermanentSendError,
    Rendered,
    SendError,
    SendResult,
    Transport,
    build_message,
)
from consumer.mail.message import BuiltMessage
from consumer.mail.pipelining import reader_of
from consumer.mail.session import Delivered, Timeouts, data_content, open_session, transaction
from consumer.settings import Encryption, SmtpSettings
from tests.support.smtp import CertificateAuthority, SMTPServerFactory, SMTPTestServer

#: The command and data timeouts differ, so a reply waited for with the wrong one shows; a reply on
#: this machine's loopback comes in milliseconds, so a busy machine is not taken for a silent server.
FAST = SmtpSettings(
    connect_timeout_seconds=3.0,
    command_timeout_seconds=1.0,
    data_timeout_seconds=3.5,
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
    #: Close the connection after a 421 reply (as RFC 5321 says); False: keep answering.
    close_on_421: bool = True
    #: Seconds to wait before answering a verb (``MAIL``, ``RCPT``, ``DATA``, ``.``).
    delay: dict[str, float] = field(default_factory=dict)

    @property
    def answers_mail_alone(self) -> bool:
        """The reply to MAIL goes out before the server reads on (so no read-ahead shows)."""
        mail = self.replies.get("MAIL", b"")
        return mail.startswith(b"421") or "MAIL" in (self.close_after, self.hang_at)


class ScriptedServer:
    """A raw SMTP server on 127.0.0.1 in the test's loop, answering as its :class:`Script` says and
    keeping what it received: ``lines`` (commands) and ``messages`` (content of accepted DATA)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.lines: list[bytes] = []
        self.messages: list[bytes] = []
        self.connections = 0
        #: The most commands read at once before the first of them was answered: 1 one at a time.
        self.read_ahead = 0
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

        async def write(data: bytes) -> None:
            if script.bytewise:
                for byte in data:
                    writer.write(bytes([byte]))
                    await writer.drain()
            else:
                writer.write(data)
                await writer.drain()

        async def send(reply: bytes, verb: str) -> bool:
            """Answer (or hold, in lockstep); False once the connection is to end."""
            self.read_ahead = max(self.read_ahead, len(pending) + 1)
            closing = verb == script.close_after or (reply.startswith(b"421") and script.close_on_421)
            if verb == script.hang_at or verb in script.delay:
                await write(b"".join(pending))  # what was processed before goes out first
                pending.clear()
                if verb == script.hang_at:
                    await asyncio.Event().wait()
                await asyncio.sleep(script.delay[verb])
            if script.lockstep and verb in ("MAIL", "RCPT") and not closing:
                pending.append(reply)
                return True
            await write(b"".join([*pending, reply]))
            pending.clear()
            if closing:
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
    """What sending a message twice on one transport came to. Equal across the modes when what each
    send said, the messages the server kept and the connections it saw are; the command lines
    differ (pipelined, the RCPTs and DATA follow a MAIL that is then refused)."""

    said: tuple[tuple[Any, ...], ...]
    messages: tuple[bytes, ...]
    connections: int
    lines: tuple[bytes, ...] = field(compare=False)
    read_ahead: int = field(compare=False)

    @property
    def first(self) -> tuple[Any, ...]:
        return self.said[0]


def outcome(result: SendResult | None, error: SendError | None, port: int = 0) -> tuple[Any, ...]:
    """A send's result (code, reply, accepted, refused) or error (class, text with the server's port
    as PORT, code, reply, reason, refused)."""
    if result is not None:
        return (result.code, result.reply, result.accepted, result.refused)
    assert error is not None
    text = str(error).replace(f":{port}", ":PORT")
    if isinstance(error, ConnectionDroppedError):
        # aiosmtplib's words for a closed connection depend on whether the FIN or the next write
        # comes first ("Connection lost", "Unexpected EOF received", ...): the kind is what counts
        text = text.split(" lost ", 1)[0]
    return (type(error).__name__, text, error.code, error.reply, error.reason, error.refused)


async def send_scripted(
    script: Script, message: BuiltMessage, settings: SmtpSettings = FAST, sends: int = 2
) -> Sent:
    async with ScriptedServer(script) as server:
        transport = Transport(settings, local_hostname="client.test")
        said = []
        try:
            for _ in range(sends):
                try:
                    said.append(outcome(await transport.send(plain("127.0.0.1", server.port), message), None))
                except SendError as exc:
                    said.append(outcome(None, exc, server.port))
        finally:
            await transport.close()
        return Sent(
            tuple(said),
            tuple(server.messages),
            server.connections,
            tuple(line for line in server.lines if not line.startswith((b"EHLO", b"QUIT"))),
            server.read_ahead,
        )


async def both_ways(script: Script, message: BuiltMessage, sends: int = 2) -> Sent:
    """The sends pipelined (with the server holding its replies until DATA arrives, and not) and one
    command at a time: all equal; the first."""
    held, pipelined, one_at_a_time = [
        await send_scripted(
            dataclasses.replace(script, pipelining=pipelining, lockstep=lockstep), message, sends=sends
        )
        for pipelining, lockstep in ((True, True), (True, False), (False, False))
    ]
    assert held == one_at_a_time
    assert pipelined == one_at_a_time
    # the client did pipeline: the server read on while its reply to MAIL waited
    assert held.read_ahead >= 2 or script.answers_mail_alone
    assert one_at_a_time.read_ahead == 1
    return held


# -- the proof that the client pipelines ----------------------------------------------------------------

LOOPS = ["uvloop", "asyncio"]


async def test_the_commands_go_together_when_the_server_offers_pipelining() -> None:
    # lockstep: no reply before the DATA line, so a client waiting for MAIL's reply would time out
    sent = await send_scripted(Script(lockstep=True), built(to=("a@example.com", "b@example.com")), sends=1)
    assert sent.first[:3] == (250, "2.0.0 queued as 1", ("a@example.com", "b@example.com"))
    assert [line.split(b":")[0] for line in sent.lines] == [b"MAIL FROM", b"RCPT TO", b"RCPT TO", b"DATA\r\n"]
    assert sent.read_ahead == 4  # MAIL, both RCPTs and DATA read before MAIL was answered
    assert len(sent.messages) == 1


async def test_without_pipelining_offered_the_client_waits_for_each_reply() -> None:
    sent = await send_scripted(Script(lockstep=True, pipelining=False), built(), sends=1)
    assert sent.first[0] == "SendTimeoutError"
    (mail,) = sent.lines
    assert mail.startswith(b"MAIL FROM:<sales@example.com> SIZE=")
    assert sent.messages == ()


async def test_the_setting_turns_pipelining_off() -> None:
    off = FAST.model_copy(update={"pipelining": False})
    sent = await send_scripted(Script(lockstep=True, pipelining=True), built(), off, sends=1)
    assert sent.first[0] == "SendTimeoutError"
    async with ScriptedServer(Script()) as server:
        timeouts = Timeouts.from_settings(FAST)
        for pipelining in (True, False):
            traced: list[str] = []
            client = await open_session(
                plain("127.0.0.1", server.port), timeouts, None, "c", traced.append, pipelining=pipelining
            )
            assert (reader_of(client) is not None) is pipelining
            assert any(line.startswith("pipelining: ") for line in traced) is pipelining
            client.close()


# -- every reply means the same as one command at a time --------------------------------------------


async def test_a_delivered_mail_is_the_same_either_way() -> None:
    body = ".starts with a dot\n..two\nlone\rcarriage\r\n.\nno final newline"
    message = built(body=body, to=("a@example.com", "b@example.com"))
    sent = await both_ways(Script(), message)
    assert sent.said == ((250, "2.0.0 queued as 1", ("a@example.com", "b@example.com"), {}),) * 2
    assert sent.connections == 1
    # every line that starts with a dot gets another (RFC 5321 4.5.2), then the final dot
    content = sent.messages[0]
    assert b"\r\n..starts with a dot\r\n...two\r\n" in content
    assert content == message.data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


_421 = b"421 4.3.2 closing\r\n"
CASES = [
    pytest.param(Script(bytewise=True), id="replies-a-byte-at-a-time"),
    pytest.param(
        Script(replies={"MAIL": b"250-2.1.0 sender\r\n250-second line\r\n250 ok\r\n"}), id="multiline"
    ),
    pytest.param(Script(replies={"MAIL": b"451 4.3.0 busy, later\r\n"}), id="mail-451"),
    pytest.param(Script(replies={"MAIL": b"550 5.7.1 sender refused\r\n"}), id="mail-550"),
    pytest.param(Script(replies={"MAIL": _421}), id="mail-421-closes"),
    pytest.param(Script(replies={"MAIL": _421}, close_on_421=False), id="mail-421-then-answers"),
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
    pytest.param(Script(replies={"RCPT a@example.com": _421}), id="first-rcpt-421-closes"),
    pytest.param(Script(replies={"RCPT b@example.com": _421}), id="last-rcpt-421-closes"),
    pytest.param(
        Script(replies={"RCPT a@example.com": _421}, close_on_421=False), id="rcpt-421-then-answers"
    ),
    pytest.param(
        Script(replies={"RCPT b@example.com": _421}, close_on_421=False), id="last-rcpt-421-then-354"
    ),
    pytest.param(Script(replies={"DATA": b"451 4.3.0 no DATA now\r\n"}), id="data-451"),
    pytest.param(Script(replies={"DATA": _421}), id="data-421"),
    pytest.param(Script(replies={".": b"552 5.3.4 too big\r\n"}), id="content-552"),
    pytest.param(Script(replies={".": b"451 4.3.0 try later\r\n"}), id="content-451"),
    pytest.param(Script(replies={"MAIL": b"25x what\r\n"}), id="malformed-reply-to-mail"),
    pytest.param(Script(replies={"RCPT b@example.com": b"what\r\n"}), id="malformed-reply-to-rcpt"),
    pytest.param(
        Script(
            replies={"MAIL": b"250-\r\n250 ok\r\n", "RCPT b@example.com": b"550-\r\n550 5.1.1 no user\r\n"}
        ),
        id="empty-first-lines",
    ),
    pytest.param(Script(close_after="MAIL"), id="closed-after-mail"),
    pytest.param(Script(close_after="RCPT"), id="closed-after-rcpt"),
]
#: A reply that cannot be read, which one command at a time never asks for (it stopped at the
#: refusal before) or reads and then RSETs past: the same results, but pipelined the session that
#: read it is closed, so each send opens one.
UNREADABLE_CASES = [
    # after a reply that decides: the decision stands
    pytest.param(
        Script(replies={"MAIL": b"550 5.7.1 not you\r\n", "RCPT a@example.com": b"what\r\n"}),
        id="refused-mail-then-malformed",
    ),
    pytest.param(
        Script(
            replies={
                "RCPT a@example.com": b"550 5.1.1 no\r\n",
                "RCPT b@example.com": b"550 5.1.1 no\r\n",
                "DATA": b"what\r\n",
            }
        ),
        id="every-rcpt-refused-then-malformed",
    ),
    pytest.param(
        Script(replies={"MAIL": b"".join(b"250-%s\r\n" % (b"x" * 96) for _ in range(400)) + b"250 ok\r\n"}),
        id="one-reply-over-the-limit",
    ),
]


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("script", UNREADABLE_CASES)
def test_an_unreadable_reply_means_the_same_and_closes_the_session(script: Script, loop: str) -> None:
    message = built(to=("a@example.com", "b@example.com"))
    pipelined = eventloop.run(send_scripted(script, message), loop)
    one_at_a_time = eventloop.run(send_scripted(dataclasses.replace(script, pipelining=False), message), loop)
    assert (pipelined.said, pipelined.messages) == (one_at_a_time.said, one_at_a_time.messages)
    assert (pipelined.connections, one_at_a_time.connections) == (2, 1)


#: The cases that wait out a timeout or a slow reply (each run of each send does), and how many
#: sends: on the service's loop only.
WAITING_CASES = [
    pytest.param(Script(hang_at="RCPT"), 2, id="no-reply-to-rcpt"),
    pytest.param(Script(hang_at="."), 1, id="no-reply-to-the-content"),
    # DATA's reply has the data timeout, not the command timeout, either way (2 s to spare)
    pytest.param(Script(delay={"DATA": FAST.command_timeout_seconds + 0.5}), 1, id="slow-354"),
    pytest.param(
        Script(delay={"RCPT": FAST.command_timeout_seconds + 0.5}), 2, id="rcpt-slower-than-its-timeout"
    ),
]


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("script", CASES)
def test_each_reply_means_the_same_pipelined(script: Script, loop: str) -> None:
    eventloop.run(both_ways(script, built(to=("a@example.com", "b@example.com"))), loop)


@pytest.mark.parametrize(("script", "sends"), WAITING_CASES)
def test_each_wait_means_the_same_pipelined(script: Script, sends: int) -> None:
    eventloop.run(both_ways(script, built(to=("a@example.com", "b@example.com")), sends))


def test_a_burst_of_long_refusals_larger_than_one_replys_limit() -> None:
    # 99 recipients refused with 4-line replies: about 35 KB of replies in a burst, over aiosmtplib's
    # 32 KiB limit for one reply, which each of them is far below
    refusal = b"".join(
        b"550-5.1.1 The email account that you tried to reach does not exist; see the help page %d\r\n" % n
        for n in range(3)
    )
    refusal += b"550 5.1.1 Please try double-checking the recipient's email address for typos.\r\n"
    recipients = (*tuple(f"r{n}@example.com" for n in range(99)), "ok@example.com")
    script = Script(replies={f"RCPT r{n}@example.com": refusal for n in range(99)})
    assert len(refusal) * 99 > 32 * 1024
    sent = eventloop.run(both_ways(script, built(to=recipients)))
    code, _, accepted, refused = sent.first
    assert (code, accepted) == (250, ("ok@example.com",))
    assert len(refused) == 99


@pytest.mark.parametrize("loop", LOOPS)
def test_a_refused_mail_then_silence_is_the_refusal(loop: str) -> None:
    # MAIL refused, then no reply to the RCPTs: one at a time never sends them; pipelined, the 550 read
    # before the silence decides, and the session that stopped answering is closed
    script = Script(replies={"MAIL": b"550 5.7.1 not you\r\n"}, hang_at="RCPT", pipelining=True)
    pipelined = eventloop.run(send_scripted(script, built(), sends=1), loop)
    one_at_a_time = eventloop.run(
        send_scripted(dataclasses.replace(script, pipelining=False), built(), sends=1), loop
    )
    assert pipelined.first == one_at_a_time.first
    assert pipelined.first[:4] == (
        "PermanentSendError",
        "relay: sending: server replied 550 5.7.1 not you",
        550,
        "5.7.1 not you",
    )


async def test_data_taken_with_no_recipient_sends_no_content() -> None:
    # a broken server: every RCPT refused, DATA answered 354 anyway (RFC 2920 3.1)
    script = Script(replies={"RCPT a@example.com": b"550 5.1.1 no\r\n", "DATA": b"354 go ahead anyway\r\n"})
    sent = await send_scripted(script, built(to=("a@example.com",)))
    assert sent.first[0] == "PermanentSendError"
    assert "every recipient was refused" in sent.first[1]
    assert sent.messages == ()
    assert sent.connections == 2  # the session that took DATA was closed, not reused


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


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=40)
    | st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n."])).map(b"".join)
)
def test_the_data_content_is_aiosmtplibs(message: bytes) -> None:
    """Property: for any bytes, above all dots, lone CRs and LFs, what the pipelined path writes
    after DATA is what aiosmtplib's ``data()`` writes."""
    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"
    assert data_content(message) == expected


# -- aiosmtpd: TLS, both event loops, any message ----------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("kind", ["plain", "starttls", "ssl"])
def test_sessions_pipeline_over_tls_on_both_event_loops(
    kind: str, loop: str, smtp_server_factory: SMTPServerFactory, smtp_ca: CertificateAuthority
) -> None:
    server = smtp_server_factory(kind, reject_rcpt=["nobody@example.com"])
    encryption = {"plain": Encryption.NONE, "starttls": Encryption.TLS, "ssl": Encryption.SSL}[kind]
    params = ConnectionParams(name="relay", host=server.host, port=server.port, encryption=encryption)
    context = smtp_ca.client_context() if kind != "plain" else None

    async def main() -> list[Delivered]:
        traced: list[str] = []
        client = await open_session(
            params, Timeouts.from_settings(FAST), context, "client.test", traced.append
        )
        try:
            # the reader sits on the transport that carries the mail: the TLS one after STARTTLS
            assert reader_of(client) is not None
            assert traced[-1].startswith("pipelining: ")
            return [
                await transaction(
                    client,
                    params,
                    Timeouts.from_settings(FAST),
                    "sales@example.com",
                    ["ops@example.com", "nobody@example.com"],
                    built(n).data,
                    False,
                )
                for n in range(3)
            ]
        finally:
            await client.quit()

    delivered = eventloop.run(main(), loop)
    assert [(d.code, d.accepted, tuple(d.refused)) for d in delivered] == [
        (250, ("ops@example.com",), ("nobody@example.com",))
    ] * 3
    received = server.wait_for(3)
    assert [m.subject for m in received] == ["message 0", "message 1", "message 2"]
    assert {m.tls for m in received} == {None if kind == "plain" else kind}
    assert {m.connection for m in received} == {received[0].connection}
    server.wait_idle()


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
