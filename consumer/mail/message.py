"""Building the email message of one delivery: headers, parts, envelope.

Sender and recipients may carry display names (RFC 2047-encoded when not ASCII); ``bcc`` goes to the
envelope only, never into a header. The body is ``text/plain``, ``text/html`` or
``multipart/alternative`` (both) depending on what :class:`~consumer.mail.render.Rendered` holds.
The ``Message-ID`` is derived from (event id, rule id), so every retry of a delivery carries the same
id. ``X-Eventmail-Rule`` and ``X-Eventmail-Event`` say where a mail came from, and
``X-Eventmail-Rule-Version`` which version of the rule (the offset of its record on the rules topic).

This module must never let rendered text add a header: a subject, display name or address with a
line break or another control character is a :class:`MessageError` naming the field, and the
serialized header block is checked against the headers this module set.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_string
from email.header import decode_header
from email.headerregistry import Address as HeaderAddress
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.policy import default as email_policy_default
from email.utils import format_datetime
from typing import Any, Protocol, cast

import email_validator
from email_validator import EmailNotValidError, validate_email

from consumer.mail.errors import MessageError
from consumer.mail.render import Rendered

#: Headers whose values repeat from mail to mail (a rule's addresses, the second's Date, the MIME
#: headers): parsed and folded once, then reused. The others (Subject, Message-ID, the event) differ
#: per mail and go through the email package every time.
_REUSED = frozenset(
    {"from", "to", "cc", "date", "x-eventmail-rule", "auto-submitted", "mime-version", "content-type"}
    | {"content-transfer-encoding"}
)
_CACHE_SIZE = 4096


class _HeaderClasses(HeaderRegistry):
    """The standard header registry, but one class per kind of header: the stock one makes a new
    class for every header of every message (garbage that only a full collection reclaims)."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls


class _ReusingPolicy(EmailPolicy):
    """An :class:`~email.policy.EmailPolicy` that keeps the parsed and the folded form of the
    :data:`_REUSED` headers. Header objects are immutable and their folded form depends only on the
    header's name, its value and the policy, so a kept one is the one the email package would make;
    parsing and folding were about two thirds of the time it takes to build a message."""

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        if isinstance(value, str) and not hasattr(value, "name") and name.lower() in _REUSED:
            return name, _parsed(self, name, value)
        return super().header_store_parse(name, value)

    def fold_binary(self, name: str, value: Any) -> bytes:
        if hasattr(value, "name") and name.lower() in _REUSED:
            return _folded(self, name, value)
        return super().fold_binary(name, value)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parsed(policy: _ReusingPolicy, name: str, value: str) -> BaseHeader:
    return cast(BaseHeader, EmailPolicy.header_store_parse(policy, name, value)[1])


#: A line break that folds a header (RFC 5322 2.2.3): removed, the header reads as one line again.
_UNFOLD = re.compile(r"\r?\n(?=[ \t])")


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _folded(policy: _ReusingPolicy, name: str, header: BaseHeader) -> bytes:
    """``header`` (a str) is compared by its text: the name gives its kind, and what it was parsed
    from determines how it folds. An address header must read back as the addresses it holds."""
    folded = EmailPolicy.fold_binary(policy, name, header)
    expected = [a.addr_spec.lower() for a in getattr(header, "addresses", ())]
    if expected:
        text = folded.decode("utf-8", "surrogateescape").split(":", 1)[1]
        read = email_policy_default.header_factory(name, _UNFOLD.sub("", text).strip())
        if [a.addr_spec.lower() for a in getattr(read, "addresses", ())] != expected:
            where = "sender" if name.lower() == "from" else name.lower()
            raise MessageError(f"{where}.name", "would be read as another address")
    return folded


_HEADERS = _HeaderClasses()
#: The longest line the policies write (RFC 5322's limit); longer body lines are encoded.
MAX_LINE = 998
#: Bodies are quoted-printable or base64, so any server takes them (no 8BITMIME needed).
POLICY = _ReusingPolicy(linesep="\r\n", cte_type="7bit", max_line_length=MAX_LINE, header_factory=_HEADERS)
#: For addresses whose local part is not ASCII (the server must offer SMTPUTF8).
POLICY_UTF8 = POLICY.clone(utf8=True)
MAX_SUBJECT_CHARS = 2_000
MAX_NAME_CHARS = 256
#: The Message-ID's right part when the sender's domain cannot be used (spam filters score a bare word).
MESSAGE_ID_DOMAIN = "eventmail.invalid"


class Address(Protocol):
    """An address of a rule (sender, recipient): ``email`` plus an optional display ``name``."""

    @property
    def email(self) -> str: ...

    @property
    def name(self) -> str | None: ...


@dataclass(frozen=True)
class MailAddress:
    """A plain :class:`Address`."""

    email: str
    name: str | None = None


@dataclass(frozen=True)
class BuiltMessage:
    """A message ready to send, with its envelope."""

    #: The serialized message (CRLF line ends), as the transport sends it.
    data: bytes
    #: Envelope sender (MAIL FROM).
    sender: str
    #: Envelope recipients (RCPT TO): to + cc + bcc, without duplicates, in that order.
    recipients: tuple[str, ...]
    message_id: str
    #: The subject as a mail reader shows it (encoded words decoded).
    subject: str = ""
    #: The addresses as shown in the outcome (``to``, ``cc``, ``bcc`` in their normalized form).
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()

    @functools.cached_property
    def message(self) -> EmailMessage:
        """``data`` parsed (for inspection; sending uses ``data``)."""
        text = self.data.decode("utf-8", "surrogateescape")
        return message_from_string(text, policy=email_policy_default)

    @property
    def smtputf8(self) -> bool:
        """The envelope needs the server's SMTPUTF8 extension."""
        return not (self.sender.isascii() and all(r.isascii() for r in self.recipients))


def sender_domain(address: str) -> str:
    """The domain of an envelope address as the Message-ID's right part (ASCII: IDNA for an
    internationalized one); :data:`MESSAGE_ID_DOMAIN` when there is none that fits."""
    domain = address.rpartition("@")[2].strip().lower()
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return MESSAGE_ID_DOMAIN
    return ascii_domain if re.fullmatch(r"[a-z0-9.-]{1,253}", ascii_domain) else MESSAGE_ID_DOMAIN


def message_id_for(event_id: str, rule_id: str, domain: str = MESSAGE_ID_DOMAIN) -> str:
    """``<hex@domain>``: the same for every attempt at delivering ``event_id`` for ``rule_id``; the
    domain is the sender's (:func:`sender_domain`) or ``EVENTMAIL_SMTP__MESSAGE_ID_DOMAIN``."""
    digest = hashlib.sha256(f"{event_id}\x00{rule_id}".encode()).hexdigest()[:40]
    return f"<{digest}@{domain}>"


# Any control character (other than tab), plus Unicode line and paragraph separators.
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def _decoded(value: str) -> str:
    """``value`` with RFC 2047 encoded words decoded, as a mail reader (or the header parser) sees it."""
    if "=?" not in value:
        return value
    try:
        parts = decode_header(value)
    except Exception:
        return value
    return "".join(
        part.decode(charset or "ascii", "replace") if isinstance(part, bytes) else part
        for part, charset in parts
    )


def _check_text(field: str, value: str, limit: int) -> str:
    if _UNSAFE.search(value) or _UNSAFE.search(_decoded(value)):
        raise MessageError(field, "contains a line break or control character")
    if len(value) > limit:
        raise MessageError(field, f"is longer than {limit} characters")
    return value


@dataclass(frozen=True)
class _Checked:
    envelope: str  # as used in MAIL FROM / RCPT TO (ASCII domain when possible)
    header: HeaderAddress

    @property
    def parts(self) -> tuple[str, str, str]:
        """(display name, user, domain), as the header is made of."""
        return self.header.display_name, self.header.username, self.header.domain


@functools.lru_cache(maxsize=8192)
def _validated(email: str) -> tuple[str, str]:
    """(normalized, envelope form) of an address; ValueError when it is not valid."""
    result = validate_email(email, check_deliverability=False)
    return result.normalized, result.ascii_email or result.normalized


def _address(field: str, address: Address) -> _Checked:
    email = address.email
    if not isinstance(email, str) or not email:
        raise MessageError(f"{field}.email", "is empty")
    if _UNSAFE.search(email):
        raise MessageError(f"{field}.email", "contains a line break or control character")
    try:
        _normalized, envelope = _validated(email.strip())
    except EmailNotValidError as exc:
        hint = ""
        if "special-use" in str(exc):
            hint = " (allow internal domains with EVENTMAIL_SMTP__ALLOWED_SPECIAL_USE_DOMAINS)"
        raise MessageError(f"{field}.email", f"{email[:80]!r} is not a valid address: {exc}{hint}") from None
    name = address.name or ""
    _check_text(f"{field}.name", name, MAX_NAME_CHARS)
    # A display name is text, not a header fragment: encoded words in it are decoded here (what a
    # reader would show) and the email package quotes and encodes the result. Left encoded, the
    # header writer decodes them while folding and can write a second address into the header.
    name = unicodedata.normalize("NFC", _decoded(name).strip())
    local, _, domain = envelope.rpartition("@")
    try:
        header = HeaderAddress(display_name=name, username=local, domain=domain)
    except (ValueError, TypeError, IndexError) as exc:
        raise MessageError(field, f"cannot be written as a header: {exc}") from None
    return _Checked(envelope, header)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _address_header(
    policy: _ReusingPolicy, name: str, addresses: tuple[tuple[str, str, str], ...]
) -> BaseHeader:
    """The header object for (display name, user, domain) addresses, made once (see _ReusingPolicy)."""
    header = policy.header_factory(name, [HeaderAddress(*parts) for parts in addresses])
    return cast(BaseHeader, header)


def check_address(field: str, address: Address) -> str:
    """The envelope form of ``address``; raises :class:`MessageError` as building a message would."""
    return _address(field, address).envelope


#: RFC 6761 special-use domains that email_validator refuses, as shipped.
SPECIAL_USE_DOMAINS: tuple[str, ...] = tuple(email_validator.SPECIAL_USE_DOMAIN_NAMES)


def allow_special_use_domains(names: Iterable[str]) -> None:
    """Accept addresses at these special-use domains (``EVENTMAIL_SMTP__ALLOWED_SPECIAL_USE_DOMAINS``),
    in rules and messages alike; the others stay refused. Idempotent: each call sets the whole list."""
    allowed = {name.lower() for name in names}
    email_validator.SPECIAL_USE_DOMAIN_NAMES[:] = [d for d in SPECIAL_USE_DOMAINS if d not in allowed]
    _validated.cache_clear()
    _addressing_cached.cache_clear()


def _many(field: str, addresses: Iterable[Address]) -> list[_Checked]:
    return [_address(f"{field}[{i}]", a) for i, a in enumerate(addresses)]


def _dedupe(addresses: Iterable[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    for address in addresses:
        key = address.lower()
        if key not in seen:
            seen.add(key)
            out.append(address)
    return tuple(out)


@dataclass(frozen=True)
class _Addressing:
    """Everything of a message that depends on its addresses alone: a rule's are the same for every
    mail, so this is made once per (sender, to, cc, bcc) and kept (:func:`_addressing_of`)."""

    from_: _Checked
    to: tuple[_Checked, ...]
    cc: tuple[_Checked, ...]
    bcc: tuple[_Checked, ...]
    policy: _ReusingPolicy
    headers: tuple[tuple[str, BaseHeader], ...]
    recipients: tuple[str, ...]
    #: The sender's domain as the Message-ID's right part (:func:`sender_domain`).
    domain: str
    #: (field, problem) of a display name the headers read as unsafe: raised once the Message-ID is
    #: made, where building a message checked them.
    name_error: tuple[str, str] | None = None


AddressKey = tuple[Any, Any]


def _key(address: Address) -> AddressKey:
    return (address.email, address.name)


def _addressing_of(
    sender: Address, to: Sequence[Address], cc: Sequence[Address], bcc: Sequence[Address]
) -> _Addressing:
    """:func:`_addressing` of these addresses, kept per (email, name) of each (the only parts of an
    address a message reads); addresses whose parts cannot be a cache key are checked every time."""
    key = (_key(sender), tuple(map(_key, to)), tuple(map(_key, cc)), tuple(map(_key, bcc)))
    try:
        hash(key)
    except TypeError:
        return _addressing(*key)
    return _addressing_cached(*key)


def _addressing(
    sender: AddressKey,
    to: tuple[AddressKey, ...],
    cc: tuple[AddressKey, ...],
    bcc: tuple[AddressKey, ...],
) -> _Addressing:
    """The checked addresses, their headers and the envelope; raises :class:`MessageError` naming
    the first field at fault (sender, to, cc, bcc, then the display names as the headers read)."""
    from_ = _address("sender", MailAddress(*sender))
    to_list, cc_list, bcc_list = (
        tuple(_many(field, (MailAddress(*pair) for pair in pairs)))
        for field, pairs in (("to", to), ("cc", cc), ("bcc", bcc))
    )
    everyone = [from_, *to_list, *cc_list, *bcc_list]
    utf8 = not all(c.envelope.isascii() for c in everyone)
    policy = POLICY_UTF8 if utf8 else POLICY
    addresses = [("From", (from_.parts,)), ("To", tuple(c.parts for c in to_list))]
    if cc_list:
        addresses.append(("Cc", tuple(c.parts for c in cc_list)))
    headers = tuple((name, _address_header(policy, name, parts)) for name, parts in addresses)
    name_error: tuple[str, str] | None = None
    try:
        for name, header in headers:
            for i, parsed_address in enumerate(getattr(header, "addresses", ())):
                where = "sender" if name == "From" else f"{name.lower()}[{i}]"
                _check_text(f"{where}.name", parsed_address.display_name, MAX_NAME_CHARS * 4)
    except MessageError as exc:
        name_error = (exc.field, str(exc).removeprefix(f"{exc.field}: "))
    return _Addressing(
        from_=from_,
        to=to_list,
        cc=cc_list,
        bcc=bcc_list,
        policy=policy,
        headers=headers,
        recipients=_dedupe(c.envelope for c in everyone[1:]),
        domain=sender_domain(from_.envelope),
        name_error=name_error,
    )


_addressing_cached = functools.lru_cache(maxsize=_CACHE_SIZE)(_addressing)


def _date_text(when: datetime) -> str:
    """``format_datetime(when)``, made once per second (it writes whole seconds and the offset)."""
    return _date_of_second(when.replace(microsecond=0), when.utcoffset())


@functools.lru_cache(maxsize=64)
def _date_of_second(when: datetime, offset: object) -> str:
    # ``offset`` is in the key: aware times of one instant in two zones are equal, yet read differently
    return format_datetime(when)


def build_message(
    rendered: Rendered,
    *,
    sender: Address,
    to: Sequence[Address],
    cc: Sequence[Address] = (),
    bcc: Sequence[Address] = (),
    event_id: str,
    rule_id: str,
    date: datetime | None = None,
    message_id_domain: str | None = None,
    rule_version: int | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> BuiltMessage:
    """The message for ``rendered``; raises :class:`MessageError` naming the field at fault."""
    if not to:
        raise MessageError("to", "at least one recipient is needed")
    subject = _check_text("subject", rendered.subject, MAX_SUBJECT_CHARS)
    _check_text("event_id", event_id, 256)
    _check_text("rule_id", rule_id, 256)
    addressing = _addressing_of(sender, to, cc, bcc)
    from_, to_list, cc_list, bcc_list = addressing.from_, addressing.to, addressing.cc, addressing.bcc
    message_id = message_id_for(event_id, rule_id, message_id_domain or addressing.domain)
    if addressing.name_error is not None:
        raise MessageError(*addressing.name_error)
    policy = addressing.policy
    headers = addressing.headers
    date_text = _date_text(date or datetime.now(UTC))
    recipients = addressing.recipients

    def built(data: bytes, shown_subject: str) -> BuiltMessage:
        return BuiltMessage(
            data=data,
            sender=from_.envelope,
            recipients=recipients,
            message_id=message_id,
            subject=shown_subject,
            to=tuple(c.envelope for c in to_list),
            cc=tuple(c.envelope for c in cc_list),
            bcc=tuple(c.envelope for c in bcc_list),
        )

    if policy is POLICY and PLAIN_SHORTCUT:
        data = _plain_message(
            headers, subject, date_text, message_id, rule_id, event_id, rendered, rule_version, extra_headers
        )
        if data is not None:
            return built(data, subject)

    msg = EmailMessage(policy=policy)
    for name, header in headers:
        msg[name] = header
    msg["Subject"] = subject
    msg["Date"] = date_text
    msg["Message-ID"] = message_id
    msg["X-Eventmail-Rule"] = rule_id
    msg["X-Eventmail-Event"] = event_id
    if rule_version is not None:
        msg["X-Eventmail-Rule-Version"] = str(rule_version)
    for name, value in extra_headers:
        msg[name] = value
    msg["Auto-Submitted"] = "auto-generated"
    # The header parser decodes encoded words ("=?utf-8?q?...?="): check what it made of the subject.
    shown = str(msg["Subject"])
    _check_text("subject", shown, MAX_SUBJECT_CHARS * 4)
    _set_body(msg, rendered)
    out = built(_serialize(msg, (name for name, _ in extra_headers)), shown)
    out.__dict__["message"] = msg  # what was built, not parsed again
    return out


#: Build plain messages (one 7bit part, nothing to encode) without the email package's per-mail
#: work; the tests turn it off to compare with the general path.
PLAIN_SHORTCUT = True
#: A header value the email package writes as it is: printable ASCII words with single spaces.
_PLAIN = re.compile(r"[!-~]+(?: [!-~]+)*")
_PLAIN_MAX = 200
_MIME = {
    subtype: (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: 7bit\r\nMIME-Version: 1.0\r\n\r\n"
    ).encode("ascii")
    for subtype in ("plain", "html")
}


def _plain_message(
    headers: Sequence[tuple[str, BaseHeader]],
    subject: str,
    date_text: str,
    message_id: str,
    rule_id: str,
    event_id: str,
    rendered: Rendered,
    rule_version: int | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> bytes | None:
    """The serialized message without the email package's per-mail work, for the common case: one
    text or HTML part of printable ASCII lines (7bit), and a subject and ids that need no encoding or
    folding. None otherwise (the general path builds it). Byte for byte what the general path writes
    (a property test holds them together)."""
    if (rendered.text is None) == (rendered.html is None):
        return None
    body = rendered.text if rendered.text is not None else rendered.html
    if body is None or not body.isascii():
        return None
    lines = body.encode("ascii").splitlines()
    if any(len(line) > MAX_LINE for line in lines):
        return None
    plain = [("Subject", subject), ("Message-ID", message_id)]
    plain += [("X-Eventmail-Rule", rule_id), ("X-Eventmail-Event", event_id)]
    if rule_version is not None:
        plain.append(("X-Eventmail-Rule-Version", str(rule_version)))
    plain += extra_headers
    if any(len(value) > _PLAIN_MAX or "=?" in value or not _PLAIN.fullmatch(value) for _, value in plain):
        return None
    subject_line, *id_lines = (f"{name}: {value}\r\n".encode("ascii") for name, value in plain)
    return b"".join(
        [
            *(_folded(POLICY, name, header) for name, header in headers),
            subject_line,
            _folded(POLICY, "Date", _parsed(POLICY, "Date", date_text)),
            *id_lines,
            b"Auto-Submitted: auto-generated\r\n",
            _MIME["plain" if rendered.text is not None else "html"],
            b"\r\n".join(lines) + b"\r\n",
        ]
    )


def _set_body(msg: EmailMessage, rendered: Rendered) -> None:
    if rendered.html is not None and rendered.text is not None:
        msg.set_content(rendered.text, subtype="plain", charset="utf-8")
        msg.add_alternative(rendered.html, subtype="html", charset="utf-8")
    elif rendered.html is not None:
        msg.set_content(rendered.html, subtype="html", charset="utf-8")
    else:
        msg.set_content(rendered.text or "", subtype="plain", charset="utf-8")


_EXPECTED = {
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "x-eventmail-rule",
    "x-eventmail-event",
    "x-eventmail-rule-version",
    "auto-submitted",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
}


def _serialize(msg: EmailMessage, extra: Iterable[str] = ()) -> bytes:
    """The message's bytes; MessageError when a header is not one eventmail writes (``extra``: the
    names of the extra headers asked for)."""
    try:
        data = msg.as_bytes()
    except Exception as exc:  # e.g. email.errors.HeaderWriteError on a header that would inject
        raise MessageError("headers", f"cannot be written safely: {exc}") from None
    header_block = data.split(b"\r\n\r\n", 1)[0]
    names = [
        line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
        for line in header_block.split(b"\r\n")
        if line and line[:1] not in (b" ", b"\t")
    ]
    expected = _EXPECTED | {name.lower() for name in extra}
    unexpected = [name for name in names if name not in expected]
    if unexpected or len(names) != len(set(names)):
        raise MessageError("headers", f"unexpected header in the message: {(unexpected or names)[0]!r}")
    return data
