"""Building messages: headers, parts, envelope, Message-ID, and header injection in every field."""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import quopri
import re
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.mail import MailAddress, MessageError, Rendered, build_message, message_id_for
from consumer.mail.message import BuiltMessage

A = MailAddress
SALES = A("sales@example.com", "Sales")
OPS = A("ops@example.com", "Ops")
EXPECTED_HEADERS = {
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "X-Eventmail-Rule",
    "X-Eventmail-Event",
    "Auto-Submitted",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
}


def build(
    subject: str = "Lead sold",
    *,
    text: str | None = "Body",
    html: str | None = None,
    sender: MailAddress = SALES,
    to: tuple[MailAddress, ...] = (OPS,),
    cc: tuple[MailAddress, ...] = (),
    bcc: tuple[MailAddress, ...] = (),
    event_id: str = "ev-1",
    rule_id: str = "r-1",
) -> BuiltMessage:
    return build_message(
        Rendered(subject, text, html),
        sender=sender,
        to=to,
        cc=cc,
        bcc=bcc,
        event_id=event_id,
        rule_id=rule_id,
        date=datetime(2026, 11, 1, 12, 0, tzinfo=UTC),
    )


def parse(built: BuiltMessage) -> EmailMessage:
    if built.smtputf8:  # raw UTF-8 headers
        parsed = email.message_from_string(built.data.decode("utf-8"), policy=email.policy.default)
    else:
        parsed = email.message_from_bytes(built.data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_headers_envelope_and_bcc() -> None:
    built = build(
        to=(A("ops@example.com", "Ops, Inc."), A("OPS@example.com")),
        cc=(A("cc@example.com", "Carbon"),),
        bcc=(A("hidden@example.com", "Hidden"), A("cc@example.com")),
    )
    parsed = parse(built)
    assert str(parsed["From"]) == "Sales <sales@example.com>"
    assert str(parsed["To"]) == '"Ops, Inc." <ops@example.com>, OPS@example.com'
    assert str(parsed["Cc"]) == "Carbon <cc@example.com>"
    assert parsed["Bcc"] is None
    assert b"hidden@example.com" not in built.data
    assert str(parsed["Subject"]) == "Lead sold"
    assert str(parsed["Date"]) == "Sun, 01 Nov 2026 12:00:00 +0000"
    assert str(parsed["X-Eventmail-Rule"]) == "r-1"
    assert str(parsed["X-Eventmail-Event"]) == "ev-1"
    assert str(parsed["Auto-Submitted"]) == "auto-generated"
    assert built.sender == "sales@example.com"
    assert built.recipients == ("ops@example.com", "cc@example.com", "hidden@example.com")
    assert (built.to, built.cc, built.bcc) == (
        ("ops@example.com", "OPS@example.com"),
        ("cc@example.com",),
        ("hidden@example.com", "cc@example.com"),
    )
    assert not built.smtputf8


def test_as_many_recipients_as_a_rule_may_have_fold_and_read_back() -> None:
    # 100 addresses in To and in Cc (a rule's maximum): headers longer than a line, folded; reading
    # the folded header back to check its addresses once raised "address parts cannot contain CR or LF"
    to = tuple(A(f"recipient-{n}@example.com", f"Recipient {n}") for n in range(100))
    cc = tuple(A(f"copy-{n}@example.com") for n in range(100))
    built = build(to=to, cc=cc)
    parsed = parse(built)
    assert [a.addr_spec for a in parsed["To"].addresses] == [a.email for a in to]
    assert [a.addr_spec for a in parsed["Cc"].addresses] == [a.email for a in cc]
    assert max(len(line) for line in built.data.split(b"\r\n")) <= 998
    assert built.data.count(b"\r\n recipient") + built.data.count(b"\r\n Recipient") >= 1  # folded
    assert len(built.recipients) == 200


def test_message_id_is_deterministic_per_event_and_rule() -> None:
    first, again = build(), build(subject="another render")
    assert first.message_id == again.message_id == message_id_for("ev-1", "r-1", "example.com")
    assert str(parse(first)["Message-ID"]) == first.message_id
    assert first.message_id.startswith("<")
    assert first.message_id.endswith("@example.com>")  # the sender's domain, not a bare word
    others = {build(event_id="ev-2").message_id, build(rule_id="r-2").message_id, first.message_id}
    assert len(others) == 3
    # no ambiguity from concatenation: ("ab", "c") and ("a", "bc") differ
    assert message_id_for("ab", "c") != message_id_for("a", "bc")


def test_message_id_domain_is_the_senders_or_the_setting() -> None:
    assert build(sender=MailAddress("Sales@Mail.Example.ORG")).message_id.endswith("@mail.example.org>")
    idn = build(sender=MailAddress("info@bücher.example")).message_id
    assert idn.endswith("@xn--bcher-kva.example>")
    assert idn.isascii()
    chosen = build_message(
        Rendered("s", "b", None),
        sender=SALES,
        to=[OPS],
        event_id="ev-1",
        rule_id="r-1",
        message_id_domain="mail.example.net",
    )
    assert chosen.message_id == message_id_for("ev-1", "r-1", "mail.example.net")


def content(part: EmailMessage) -> str:
    return str(part.get_content()).replace("\r\n", "\n")


def test_text_html_and_alternative_bodies() -> None:
    text = parse(build(text="Hello ü", html=None))
    assert text.get_content_type() == "text/plain"
    assert content(text) == "Hello ü\n"

    html = parse(build(text=None, html="<p>Hello</p>"))
    assert html.get_content_type() == "text/html"
    assert content(html) == "<p>Hello</p>\n"

    both = parse(build(text="Hello", html="<p>Hello</p>"))
    assert both.get_content_type() == "multipart/alternative"
    parts = [(part.get_content_type(), content(part)) for part in both.iter_parts()]
    assert parts == [("text/plain", "Hello\n"), ("text/html", "<p>Hello</p>\n")]


def test_the_serialized_message_is_7bit_with_crlf_line_ends() -> None:
    built = build(subject="Prix: 12 €", sender=A("sales@example.com", "Ventes Zoë"), text="Grüße " * 50)
    assert built.data.isascii()
    assert b"\n" not in built.data.replace(b"\r\n", b"")
    parsed = parse(built)
    assert str(parsed["Subject"]) == "Prix: 12 €"
    assert parsed["From"].addresses[0].display_name == "Ventes Zoë"
    assert b"=?utf-8?" in built.data
    assert max(len(line) for line in built.data.split(b"\r\n")) <= 998


def test_international_addresses() -> None:
    idn = build(to=(A("ops@exämple.com"),))
    assert idn.recipients == ("ops@xn--exmple-cua.com",)
    assert not idn.smtputf8
    utf8 = build(to=(A("zoë@example.com", "Zoë"),))
    assert utf8.recipients == ("zoë@example.com",)
    assert utf8.smtputf8
    assert parse(utf8)["To"].addresses[0].addr_spec == "zoë@example.com"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"to": (A("ops@example.com"), A("not an address"))}, "to[1].email"),
        ({"cc": (A("a@b@example.com"),)}, "cc[0].email"),
        ({"bcc": (A(""),)}, "bcc[0].email"),
        ({"sender": A("sales")}, "sender.email"),
        ({"to": ()}, "to"),
    ],
)
def test_invalid_addresses_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(MessageError) as caught:
        build(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


INJECTIONS = [
    "x\r\nBcc: evil@attacker.example",
    "x\nBcc: evil@attacker.example",
    "x\rBcc: evil@attacker.example",
    "x\r\n\r\nbody takeover",
    "=?utf-8?q?x=0D=0ABcc:_evil@attacker.example?=",
    "=?utf-8?b?eA0KQmNjOiBldmlsQGF0dGFja2VyLmV4YW1wbGU=?=",
    "x\u2028Bcc: evil@attacker.example",
    "x\x00y",
    "x\x0bBcc: y",
]


@pytest.mark.parametrize("payload", INJECTIONS)
@pytest.mark.parametrize(
    "field",
    ["subject", "sender.name", "to[0].name", "cc[0].name", "bcc[0].name", "to[0].email", "sender.email"],
)
def test_header_injection_is_refused_in_every_field(field: str, payload: str) -> None:
    kwargs: dict[str, object] = {"cc": (A("cc@example.com", "Cc"),), "bcc": (A("b@example.com", "B"),)}
    if field == "subject":
        kwargs["subject"] = payload
    elif field == "sender.name":
        kwargs["sender"] = A("sales@example.com", payload)
    elif field == "sender.email":
        kwargs["sender"] = A(f"sales@example.com{payload}")
    elif field == "to[0].email":
        kwargs["to"] = (A(f"ops@example.com{payload}"),)
    else:
        which, _ = field.split("[", 1)
        kwargs[which] = (A(f"{which}@example.com", payload),)
    with pytest.raises(MessageError) as caught:
        build(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


@pytest.mark.parametrize("field", ["event_id", "rule_id"])
def test_ids_with_line_breaks_are_refused(field: str) -> None:
    with pytest.raises(MessageError, match=f"^{field}: "):
        build(**{field: "e\r\nBcc: evil@attacker.example"})  # type: ignore[arg-type]


def test_display_names_that_look_like_addresses_stay_names() -> None:
    parsed = parse(build(to=(A("ops@example.com", '"evil" <evil@attacker.example>, x@y.example'),)))
    addresses = parsed["To"].addresses
    assert [a.addr_spec for a in addresses] == ["ops@example.com"]
    assert addresses[0].display_name == '"evil" <evil@attacker.example>, x@y.example'


def encoded_word(text: str, form: str = "b") -> str:
    """``text`` as one RFC 2047 encoded word, as an attacker would put it into a display name."""
    if form == "b":
        return f"=?utf-8?b?{base64.b64encode(text.encode()).decode('ascii')}?="
    return f"=?utf-8?q?{quopri.encodestring(text.encode(), header=True).decode('ascii')}?="


SPOOFS = ['"Evil" <evil@x.com>', "Evil <evil@x.com>,", "evil@x.com", "<evil@x.com>", '"a" <b@c.com>, d@x.com']


@pytest.mark.parametrize("form", ["b", "q"])
@pytest.mark.parametrize("spoof", SPOOFS)
def test_encoded_word_display_names_cannot_spoof_the_sender(spoof: str, form: str) -> None:
    name = encoded_word(spoof, form)
    built = build(sender=A("sales@example.com", name), to=(A("ops@example.com", name),))
    for parser in (email.policy.default, email.policy.compat32):
        parsed = email.message_from_bytes(built.data, policy=parser)
        for header, address in (("From", "sales@example.com"), ("To", "ops@example.com")):
            assert email.utils.getaddresses([str(parsed[header])]) == [(spoof, address)], built.data
    assert [a.addr_spec for a in parse(built)["From"].addresses] == ["sales@example.com"]
    assert built.sender == "sales@example.com"


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60), form=st.sampled_from(["b", "q"]))
def test_no_encoded_display_name_adds_an_address(text: str, form: str) -> None:
    outcome: BuiltMessage | MessageError
    try:
        outcome = build(sender=A("sales@example.com", encoded_word(text, form)))
    except MessageError as exc:
        outcome = exc
    if isinstance(outcome, MessageError):
        assert outcome.field == "sender.name"
        return
    built = outcome
    parsed = email.message_from_bytes(built.data, policy=email.policy.default)
    assert [a.addr_spec for a in parsed["From"].addresses] == ["sales@example.com"]


@settings(max_examples=300, deadline=None)
@given(subject=st.text(max_size=300), name=st.text(max_size=80))
def test_arbitrary_subject_and_name_never_add_a_header(subject: str, name: str) -> None:
    outcome: BuiltMessage | MessageError
    try:
        outcome = build(subject, sender=A("sales@example.com", name), to=(A("ops@example.com", name),))
    except MessageError as exc:
        outcome = exc
    if isinstance(outcome, MessageError):
        assert outcome.field in {"subject", "sender.name", "to[0].name"}
        return
    built = outcome
    parsed = parse(built)
    assert set(parsed.keys()) == EXPECTED_HEADERS
    assert [a.addr_spec for a in parsed["To"].addresses] == ["ops@example.com"]
    assert [a.addr_spec for a in parsed["From"].addresses] == ["sales@example.com"]
    assert built.recipients == ("ops@example.com",)
    # the subject survives (folding may change whitespace, never the text)
    assert "".join(str(parsed["Subject"]).split()) == "".join(subject.split())


ASCII_LINE = st.from_regex(r"[ -~]{0,120}", fullmatch=True)
BODIES = st.one_of(st.none(), st.text(max_size=300), st.lists(ASCII_LINE, max_size=8).map("\n".join))


@settings(max_examples=400, deadline=None)
@given(
    subject=st.one_of(st.text(max_size=200), ASCII_LINE),
    names=st.lists(st.text(max_size=40), min_size=3, max_size=3),
    text=BODIES,
    html=BODIES,
    event_id=st.one_of(ASCII_LINE.filter(bool), st.text(min_size=1, max_size=40)),
)
def test_reused_headers_and_the_plain_shortcut_change_no_byte_of_the_message(
    subject: str, names: list[str], text: str | None, html: str | None, event_id: str
) -> None:
    """The reusing policy (parsed and folded headers kept across mails) and the plain-message
    shortcut write exactly what the stock SMTP policy of the email package writes, refusals included."""
    import consumer.mail.message as message

    if text is None and html is None:
        text = ""

    def built_with(policy: email.policy.EmailPolicy, shortcut: bool) -> bytes | str:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(message, "POLICY", policy.clone(cte_type="7bit", max_line_length=998))
            patch.setattr(
                message, "POLICY_UTF8", policy.clone(cte_type="7bit", max_line_length=998, utf8=True)
            )
            patch.setattr(message, "PLAIN_SHORTCUT", shortcut)
            try:
                built = build(
                    subject,
                    text=text,
                    html=html,
                    sender=A("sales@example.com", names[0]),
                    to=(A("ops@example.com", names[1]), OPS),
                    cc=(A("cc@example.com", names[2]),),
                    event_id=event_id,
                )
            except MessageError as exc:
                return f"{exc.field}: {exc}"
        assert built.subject == str(built.message["Subject"])
        return re.sub(rb"={15}\d+==", b"BOUNDARY", built.data)  # a multipart's boundary is random

    stock = built_with(email.policy.SMTP, shortcut=False)
    reused = message.POLICY
    assert built_with(reused, shortcut=False) == stock
    assert built_with(reused, shortcut=True) == stock
    assert built_with(reused, shortcut=True) == stock  # a second time: from the kept headers


def test_the_plain_shortcut_is_taken_for_the_usual_mail(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short ASCII subject and a plain ASCII body never reach the email package's message object."""
    import consumer.mail.message as message

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the general path was taken")

    monkeypatch.setattr(message, "EmailMessage", refuse)
    built = build("Lead L1 sold for 12.50", text="Lead L1 (Ada) sold.\nThanks.")
    assert built.data.endswith(b"\r\n\r\nLead L1 (Ada) sold.\r\nThanks.\r\n")
    assert built.message["Subject"] == "Lead L1 sold for 12.50"
