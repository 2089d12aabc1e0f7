"""One SMTP session on aiosmtplib: open it (connect, EHLO, STARTTLS or implicit TLS, AUTH), run a mail
transaction on it, and turn whatever went wrong into a transient or permanent send error.

Timeouts come from ``SmtpSettings``: connecting (including the banner and the TLS handshake), each
command, and the DATA phase. With ``encryption: tls`` a server that does not offer STARTTLS is an
error, never a silent fall back to clear text. Certificates are verified unless the connection says
``verify_tls: false``. The password is handed to AUTH and nowhere else: error texts carry the server's
reply, not what was sent.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import SMTP, SMTPResponse, SMTPStatus
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import COMMAND_INJECTION_REGEX, PERIOD_REGEX, normalize_message_line_endings

from consumer.mail.errors import (
    ConnectionDroppedError,
    PermanentSendError,
    Refusal,
    SendError,
    SendTimeoutError,
    TransientSendError,
)
from consumer.mail.params import ConnectionParams
from consumer.mail.pipelining import Replies, ReplyReader, install, reader_of
from consumer.settings import Encryption, SmtpSettings

Trace = Callable[[str], None]
#: The replies to RCPT that accept the recipient (250, and 251: "will forward").
_RECIPIENT_ACCEPTED = (SMTPStatus.completed, SMTPStatus.will_forward)


def _no_trace(_: str) -> None:
    return None


@dataclass(frozen=True)
class Timeouts:
    connect: float
    command: float
    data: float

    @classmethod
    def from_settings(cls, settings: SmtpSettings) -> Timeouts:
        return cls(
            settings.connect_timeout_seconds,
            settings.command_timeout_seconds,
            settings.data_timeout_seconds,
        )


async def open_session(
    params: ConnectionParams,
    timeouts: Timeouts,
    tls_context: ssl.SSLContext | None,
    local_hostname: str,
    trace: Trace = _no_trace,
    pipelining: bool = True,
) -> SMTP:
    """A connected, greeted, encrypted (as configured) and authenticated client; with ``pipelining``,
    one that pipelines its transactions when the server offers PIPELINING (RFC 2920)."""
    implicit = params.encryption is Encryption.SSL
    client = SMTP(
        hostname=params.host,
        port=params.port,
        use_tls=implicit,
        start_tls=False,
        tls_context=tls_context if implicit else None,
        timeout=timeouts.command,
        local_hostname=local_hostname,
    )
    try:
        banner = await client.connect(timeout=timeouts.connect)
        trace(f"connected to {params.address}: {_reply(banner)}")
        if implicit:
            trace(f"TLS (implicit): {_tls_description(client)}")
        await client.ehlo(timeout=timeouts.command)
        if params.encryption is Encryption.TLS:
            if not client.supports_extension("starttls"):
                raise PermanentSendError(
                    f"{params.address} does not offer STARTTLS (encryption: tls); not sending in clear text",
                    connection=params.name,
                    reason="tls",
                )
            await client.starttls(tls_context=tls_context, timeout=timeouts.connect)
            trace(f"STARTTLS: {_tls_description(client)}")
            await client.ehlo(timeout=timeouts.command)
        if params.login:
            reply = await client.login(params.login, params.secret() or "", timeout=timeouts.command)
            trace(f"authenticated as {params.login}: {_reply(reply)}")
        if pipelining and install(client) is not None:
            trace("pipelining: MAIL, RCPT and DATA in one write (the server offers PIPELINING)")
    except BaseException as exc:
        client.close()
        if isinstance(exc, SendError):
            raise
        if isinstance(exc, Exception):
            raise classify(exc, params, during="connecting") from None
        raise
    return client


def _reply(response: SMTPResponse) -> str:
    return f"{response.code} {response.message}".strip()


def _tls_description(client: SMTP) -> str:
    try:
        sslobj = client.get_transport_info("ssl_object")
    except aiosmtplib.SMTPServerDisconnected:
        sslobj = None
    if sslobj is None:
        return "established"
    cipher = sslobj.cipher()
    return f"{sslobj.version()} {cipher[0] if cipher else ''}".strip()


@dataclass(frozen=True)
class Delivered:
    code: int
    reply: str
    accepted: tuple[str, ...]
    refused: dict[str, Refusal]


async def transaction(
    client: SMTP,
    params: ConnectionParams,
    timeouts: Timeouts,
    sender: str,
    recipients: Sequence[str],
    data: bytes,
    smtputf8: bool,
) -> Delivered:
    """MAIL, RCPT per recipient, DATA. Recipients refused while others were accepted are reported in
    the result; when every recipient is refused the whole transaction fails. On a session that
    pipelines (:func:`open_session`), the same transaction in two round trips (:func:`_pipelined`)."""
    options: list[str] = []
    encoding = "ascii"
    if smtputf8:
        if not client.supports_extension("smtputf8"):
            raise PermanentSendError(
                "an address is not ASCII and the server does not offer SMTPUTF8",
                connection=params.name,
                reason="unsupported",
            )
        options.append("SMTPUTF8")
        encoding = "utf-8"
    if client.supports_extension("size"):
        options.append(f"SIZE={len(data)}")
    reader = reader_of(client)
    if reader is not None and not client.is_ehlo_or_helo_needed:
        return await _pipelined(client, reader, params, timeouts, sender, recipients, data, options, encoding)
    await _mail(client, sender, options, encoding, timeouts.command)
    refused: dict[str, Refusal] = {}
    accepted: list[str] = []
    for recipient in recipients:
        try:
            await _rcpt(client, recipient, encoding, timeouts.command)
        except aiosmtplib.SMTPRecipientRefused as exc:
            refused[recipient] = Refusal(exc.code, exc.message)
        else:
            accepted.append(recipient)
    if not accepted:
        await reset(client, timeouts)
        raise _all_refused(params, refused)
    response = await client.data(data, timeout=timeouts.data)
    return Delivered(response.code, response.message, tuple(accepted), refused)


async def _pipelined(
    client: SMTP,
    reader: ReplyReader,
    params: ConnectionParams,
    timeouts: Timeouts,
    sender: str,
    recipients: Sequence[str],
    data: bytes,
    options: list[str],
    encoding: str,
) -> Delivered:
    """:func:`transaction` with PIPELINING: MAIL, every RCPT and DATA in one write, then the content.
    The replies are read in order and mean what they mean one command at a time: the same results
    and the same exceptions, so the transport keeps or discards the session alike, and the same
    message. (The RCPTs and DATA reach a server that then refuses MAIL; it answers them 503.) Each
    reply has the time it has one command at a time (the command timeout; DATA's, the data
    timeout)."""
    mail = b" ".join([b"MAIL", *_mail_args(sender, options, encoding)])
    commands = [mail, *(b"RCPT " + _rcpt_arg(recipient, encoding) for recipient in recipients), b"DATA"]
    if any(COMMAND_INJECTION_REGEX.search(command) for command in commands):
        raise ValueError("Command arg contains a prohibited control character")
    group = b"\r\n".join(commands) + b"\r\n"
    seconds = [timeouts.command] * (len(commands) - 1) + [timeouts.data]
    answered = await _exchange(client, reader, group, seconds)
    replies = answered.replies
    refused: dict[str, Refusal] = {}
    accepted: list[str] = []
    for recipient, reply in zip(recipients, replies[1:], strict=False):
        if reply.code in _RECIPIENT_ACCEPTED:
            accepted.append(recipient)
        else:
            refused[recipient] = Refusal(reply.code, reply.message)
    mail_accepted = replies[0].code == SMTPStatus.completed
    go_ahead = replies[-1] if len(replies) == len(commands) else None
    if go_ahead is not None and go_ahead.code == SMTPStatus.start_input and not (mail_accepted and accepted):
        # DATA taken though nothing may be sent: close rather than end an empty message with a dot
        # (RFC 2920 3.1); a message left unfinished is never delivered
        client.close()
    if not mail_accepted:
        raise aiosmtplib.SMTPSenderRefused(replies[0].code, replies[0].message, sender)
    if len(accepted) + len(refused) < len(recipients):
        # the next RCPT, one at a time, would find the session closed after a 421, or not answered
        raise _unanswered(answered, "Server not connected")
    if not accepted:
        await reset(client, timeouts)
        raise _all_refused(params, refused)
    if go_ahead is None:
        raise _unanswered(answered, "Connection lost")  # what aiosmtplib's data() says on a closed session
    if go_ahead.code != SMTPStatus.start_input:
        raise aiosmtplib.SMTPDataError(go_ahead.code, go_ahead.message)
    answered = await _exchange(client, reader, data_content(data), [timeouts.data])
    (reply,) = answered.replies
    if reply.code != SMTPStatus.completed:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    return Delivered(reply.code, reply.message, tuple(accepted), refused)


def data_content(message: bytes) -> bytes:
    """What follows DATA for ``message``, as aiosmtplib's ``data()`` writes it: lone CRs and LFs made
    CRLF, a CRLF at the end, a dot doubled at the start of a line (RFC 5321 4.5.2), the final dot.
    A message that needs neither rewriting (every one :func:`~consumer.mail.message.build_message`
    makes, nearly) is told by counting, for a fraction of the regular expressions' cost."""
    crlf = message.count(b"\r\n")
    if crlf != message.count(b"\r") or crlf != message.count(b"\n") or not message.endswith(b"\r\n"):
        message = normalize_message_line_endings(message)
    if message[:1] == b"." or b"\n." in message:
        message = PERIOD_REGEX.sub(b"..", message)
    return message + b".\r\n"


def _unanswered(answered: Replies, after_421: str) -> aiosmtplib.SMTPException:
    """The error for a command of a group that got no reply: what cut the group short (a timeout, a
    lost connection, a reply that cannot be read), or, after a 421, the words of aiosmtplib's next
    command on the session it closed (``after_421``)."""
    if answered.cut is not None:
        return answered.cut
    return aiosmtplib.SMTPServerDisconnected(after_421)


async def _exchange(client: SMTP, reader: ReplyReader, payload: bytes, seconds: list[float]) -> Replies:
    """``reader.exchange``, closing the session when its replies cannot be trusted to pair with its
    commands any more (a timeout, a lost connection, a malformed reply: the next command would read
    a stale reply) and after a 421 (the server is closing the channel), as aiosmtplib does."""
    try:
        answered = await reader.exchange(payload, seconds)
    except BaseException:
        client.close()
        raise
    if answered.cut is not None or any(
        reply.code == SMTPStatus.domain_unavailable for reply in answered.replies
    ):
        client.close()
    return answered


@functools.lru_cache(maxsize=4096)
def _quoted(address: str, encoding: str) -> bytes:
    """``<address>`` as aiosmtplib's ``mail``/``rcpt`` write it (its ValueError for an address that
    cannot go on a command line included); parsing it took a tenth of a mail's CPU time."""
    return quote_address(address).encode(encoding)


def _mail_args(sender: str, options: list[str], encoding: str) -> list[bytes]:
    """The arguments of MAIL, as aiosmtplib's ``mail`` writes them."""
    return [b"FROM:" + _quoted(sender, encoding), *(option.encode("ascii") for option in options)]


def _rcpt_arg(recipient: str, encoding: str) -> bytes:
    """The argument of RCPT, as aiosmtplib's ``rcpt`` writes it."""
    return b"TO:" + _quoted(recipient, encoding)


async def _mail(client: SMTP, sender: str, options: list[str], encoding: str, seconds: float) -> None:
    """``client.mail(...)``: the same command and errors, the sender's quoting looked up once."""
    if client.is_ehlo_or_helo_needed:  # never on a session of open_session, which greeted it
        await client.mail(sender, options=options, encoding=encoding, timeout=seconds)
        return
    response = await client.execute_command(b"MAIL", *_mail_args(sender, options, encoding), timeout=seconds)
    if response.code != SMTPStatus.completed:
        raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)


async def _rcpt(client: SMTP, recipient: str, encoding: str, seconds: float) -> None:
    """``client.rcpt(...)``: the same command and errors, the recipient's quoting looked up once."""
    if client.is_ehlo_or_helo_needed:
        await client.rcpt(recipient, encoding=encoding, timeout=seconds)
        return
    response = await client.execute_command(b"RCPT", _rcpt_arg(recipient, encoding), timeout=seconds)
    if response.code not in _RECIPIENT_ACCEPTED:
        raise aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)


def _all_refused(params: ConnectionParams, refused: dict[str, Refusal]) -> SendError:
    first = next(iter(refused.values()))
    text = "; ".join(f"{address}: {refusal}" for address, refusal in refused.items())
    message = f"every recipient was refused ({text})"
    if all(r.permanent for r in refused.values()):
        return PermanentSendError(
            message,
            connection=params.name,
            code=first.code,
            reply=first.message,
            reason="smtp_5xx",
            refused=refused,
        )
    temporary = next(r for r in refused.values() if not r.permanent)
    return TransientSendError(
        message,
        connection=params.name,
        code=temporary.code,
        reply=temporary.message,
        reason="recipients_4xx",
        refused=refused,
    )


async def reset(client: SMTP, timeouts: Timeouts) -> bool:
    """RSET after a failed transaction; True when the session is still usable."""
    if not client.is_connected:
        return False
    try:
        response = await client.rset(timeout=timeouts.command)
    except (aiosmtplib.SMTPException, OSError):
        client.close()
        return False
    return response.code == 250 and client.is_connected


def _cause_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


#: What aiosmtplib says when the server accepted the connection but sent no banner in time.
_NO_GREETING = "server ready message"


def _trust_hint(params: ConnectionParams) -> str:
    if not params.verify_tls:
        return "verification is off"
    if params.ca_file:
        return f"the CA file {params.ca_file} does not sign it (set by {params.ca_source})"
    return f"to trust a private CA, set {params.ca_source} to its PEM file"


def classify(exc: Exception, params: ConnectionParams, during: str = "sending") -> SendError:
    """The send error for an exception raised by aiosmtplib or the socket layer."""
    name = params.name
    if isinstance(exc, SendError):
        return exc
    chain = _cause_chain(exc)
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain):
        detail = next(e for e in chain if isinstance(e, ssl.SSLCertVerificationError))
        return PermanentSendError(
            f"TLS certificate of {params.address} not trusted: {getattr(detail, 'verify_message', detail)}"
            f"; {_trust_hint(params)}",
            connection=name,
            reason="tls",
        )
    wrong_mode = next((e for e in chain if "WRONG_VERSION_NUMBER" in str(e).upper()), None)
    if wrong_mode is not None and params.encryption is Encryption.SSL:
        return PermanentSendError(
            f"TLS with {params.address} failed: {wrong_mode} (the server does not start with TLS: "
            "for a 587/25-style port use encryption tls or none)",
            connection=name,
            reason="tls",
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        code, reply = exc.code, exc.message
        what = f"{during}: server replied {code} {reply}".strip()
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            what = f"authentication failed: {code} {reply}".strip()
        if 500 <= code < 600:
            reason = "auth" if isinstance(exc, aiosmtplib.SMTPAuthenticationError) else "smtp_5xx"
            return PermanentSendError(what, connection=name, code=code, reply=reply, reason=reason)
        return TransientSendError(what, connection=name, code=code, reply=reply, reason="smtp_4xx")
    if isinstance(exc, TimeoutError):
        hint = ""
        if during == "connecting" and params.encryption is not Encryption.SSL and _NO_GREETING in str(exc):
            hint = (
                " (no greeting: a server on an implicit-TLS port, 465-style, waits for a TLS handshake"
                " first; use encryption ssl)"
            )
        return SendTimeoutError(f"timed out {during} ({params.address}): {exc}{hint}", connection=name)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return PermanentSendError(f"{during}: {exc}", connection=name, reason="unsupported")
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return PermanentSendError(f"TLS with {params.address} failed: {exc}", connection=name, reason="tls")
    if isinstance(exc, ConnectionError | OSError):
        return ConnectionDroppedError(f"connection to {params.address} lost {during}: {exc}", connection=name)
    if isinstance(exc, aiosmtplib.SMTPException):
        return PermanentSendError(f"{during}: {exc}", connection=name, reason="smtp")
    if isinstance(exc, ValueError):
        return PermanentSendError(f"{during}: {exc}", connection=name, reason="invalid")
    return TransientSendError(f"{during}: {type(exc).__name__}: {exc}", connection=name, reason="unknown")
