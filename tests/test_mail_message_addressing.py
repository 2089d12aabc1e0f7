"""The addresses of a message are checked and made into headers once per rule (``_addressing_of``):
messages and errors are exactly those of building everything per mail, the implementation before the
cache, kept here as the reference."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

from hypothesis import given, settings
from hypothesis import strategies as st

import consumer.mail.message as message
from consumer.mail import MailAddress, MessageError, Rendered, build_message
from consumer.mail.message import (
    MAX_NAME_CHARS,
    MAX_SUBJECT_CHARS,
    POLICY,
    POLICY_UTF8,
    BuiltMessage,
    _address,
    _address_header,
    _check_text,
    _dedupe,
    _many,
    _plain_message,
    _serialize,
    _set_body,
    message_id_for,
    sender_domain,
)

WHEN = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def reference_build(
    rendered: Rendered,
    *,
    sender: MailAddress,
    to: Sequence[MailAddress],
    cc: Sequence[MailAddress] = (),
    bcc: Sequence[MailAddress] = (),
    event_id: str,
    rule_id: str,
    message_id_domain: str | None = None,
) -> BuiltMessage:
    """build_message as it was before its addresses were kept per rule (the general path's bytes
    come from the email package in both)."""
    if not to:
        raise MessageError("to", "at least one recipient is needed")
    subject = _check_text("subject", rendered.subject, MAX_SUBJECT_CHARS)
    _check_text("event_id", event_id, 256)
    _check_text("rule_id", rule_id, 256)
    from_ = _address("sender", sender)
    to_list, cc_list, bcc_list = _many("to", to), _many("cc", cc), _many("bcc", bcc)
    everyone = [from_, *to_list, *cc_list, *bcc_list]
    utf8 = not all(c.envelope.isascii() for c in everyone)
    message_id = message_id_for(event_id, rule_id, message_id_domain or sender_domain(from_.envelope))
    policy = POLICY_UTF8 if utf8 else POLICY
    addresses = [("From", (from_.parts,)), ("To", tuple(c.parts for c in to_list))]
    if cc_list:
        addresses.append(("Cc", tuple(c.parts for c in cc_list)))
    headers = [(name, _address_header(policy, name, parts)) for name, parts in addresses]
    for name, header in headers:
        for i, parsed_address in enumerate(getattr(header, "addresses", ())):
            where = "sender" if name == "From" else f"{name.lower()}[{i}]"
            _check_text(f"{where}.name", parsed_address.display_name, MAX_NAME_CHARS * 4)
    date_text = message.format_datetime(WHEN)
    recipients = _dedupe(c.envelope for c in [*to_list, *cc_list, *bcc_list])

    def built(data: bytes, shown: str) -> BuiltMessage:
        return BuiltMessage(
            data=data,
            sender=from_.envelope,
            recipients=recipients,
            message_id=message_id,
            subject=shown,
            to=tuple(c.envelope for c in to_list),
            cc=tuple(c.envelope for c in cc_list),
            bcc=tuple(c.envelope for c in bcc_list),
        )

    if policy is POLICY:
        data = _plain_message(headers, subject, date_text, message_id, rule_id, event_id, rendered)
        if data is not None:
            return built(data, subject)
    msg = message.EmailMessage(policy=policy)
    for name, header in headers:
        msg[name] = header
    msg["Subject"] = subject
    msg["Date"] = date_text
    msg["Message-ID"] = message_id
    msg["X-Eventmail-Rule"] = rule_id
    msg["X-Eventmail-Event"] = event_id
    msg["Auto-Submitted"] = "auto-generated"
    shown = str(msg["Subject"])
    _check_text("subject", shown, MAX_SUBJECT_CHARS * 4)
    _set_body(msg, rendered)
    return built(_serialize(msg), shown)


LOCAL = st.sampled_from(["ops", "a.b", "jürgen", "x+tag", '"quoted local"', "", "a b", "bad\r\n"])
DOMAIN = st.sampled_from(["example.com", "bücher.example", "EXAMPLE.org", "localhost", "test", "-bad-"])
NAME = st.one_of(
    st.none(),
    st.sampled_from(["Ops", "Jürgen Müller", "=?utf-8?q?x?=", "a\nb", 'Say "hi"', "x" * 300, "a, b"]),
    st.text(max_size=12),
)
ANY_ADDRESS = st.builds(
    lambda local, domain, name: MailAddress(f"{local}@{domain}", name), LOCAL, DOMAIN, NAME
)
VALID_ADDRESS = st.builds(
    lambda local, domain, name: MailAddress(f"{local}@{domain}", name),
    st.sampled_from(["ops", "a.b", "x+tag", "jürgen", "Sales"]),
    st.sampled_from(["example.com", "example.org", "bücher.example"]),
    st.one_of(st.none(), st.sampled_from(["Ops", "Jürgen Müller", 'Say "hi"', "a, b"])),
)
#: Mostly valid (else nearly every example stops at the first bad address).
ADDRESS = st.one_of(VALID_ADDRESS, VALID_ADDRESS, VALID_ADDRESS, ANY_ADDRESS)
SOME = st.lists(ADDRESS, max_size=3)
SOME_TO = st.lists(ADDRESS, min_size=1, max_size=3) | st.just([])


def _outcome(build: object, *args: object, **kwargs: object) -> object:
    try:
        built = build(*args, **kwargs)  # type: ignore[operator]
    except MessageError as exc:
        return ("MessageError", exc.field, str(exc))
    except Exception as exc:  # anything else the reference raises, ours must raise alike
        return (type(exc).__name__, str(exc))
    return (
        built.data,
        built.sender,
        built.recipients,
        built.message_id,
        built.subject,
        built.to,
        built.cc,
        built.bcc,
    )


@settings(max_examples=300, deadline=None)
@given(
    sender=ADDRESS,
    to=SOME_TO,
    cc=SOME,
    bcc=SOME,
    subject=st.sampled_from(["Lead sold", "Lead sold", "Prix: 12 €", "a\nb", ""]),
    event_id=st.sampled_from(["ev-1", "ev-2", "ev-3", "\ud800", "e\x00"]),
    domain=st.sampled_from([None, "mail.example.net"]),
)
def test_messages_and_errors_are_those_of_the_reference(
    sender: MailAddress,
    to: list[MailAddress],
    cc: list[MailAddress],
    bcc: list[MailAddress],
    subject: str,
    event_id: str,
    domain: str | None,
) -> None:
    rendered = Rendered(subject, "Body line\nsecond", None)
    args = {"sender": sender, "to": to, "cc": cc, "bcc": bcc, "event_id": event_id, "rule_id": "r-1"}
    expected = _outcome(reference_build, rendered, message_id_domain=domain, **args)
    for _ in range(2):  # the second from the kept addressing
        assert _outcome(build_message, rendered, date=WHEN, message_id_domain=domain, **args) == expected


def test_the_addressing_of_a_rule_is_made_once() -> None:
    message._addressing_cached.cache_clear()
    sender, to = MailAddress("sales@example.com", "Sales"), [MailAddress("ops@example.com", "Ops")]
    for n in range(3):
        build_message(Rendered("s", "b", None), sender=sender, to=to, event_id=f"e{n}", rule_id="r")
    info = message._addressing_cached.cache_info()
    assert (info.misses, info.hits) == (1, 2)


@settings(max_examples=300, deadline=None)
@given(
    when=st.datetimes(
        timezones=st.none()
        | st.sampled_from([UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-7))])
    )
)
def test_the_date_header_is_format_datetime_of_the_time(when: datetime) -> None:
    assert message._date_text(when) == format_datetime(when)
    same_instant = when.astimezone(timezone(timedelta(hours=3))) if when.tzinfo else when
    assert message._date_text(same_instant) == format_datetime(same_instant)
