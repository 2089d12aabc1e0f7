"""A rule's mail for an event, as it would be sent, without sending it.

:func:`preview` gives the envelope (sender and every recipient, bcc included), every header of the
serialized message and each body part decoded, or the first condition that keeps the rule from
matching (:mod:`consumer.rules.explain`). It builds the mail with :func:`consumer.mail.compose.compose`,
the function the consumer sends with.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from consumer.events.model import Event
from consumer.mail.compose import compose
from consumer.rules.explain import rejection
from consumer.rules.matching import CompiledRule


@dataclass(frozen=True)
class MailPreview:
    rule_id: str
    #: Envelope sender (MAIL FROM) and recipients (RCPT TO: to, cc and bcc).
    sender: str
    recipients: tuple[str, ...]
    subject: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    #: Every header of the message as sent, in order, values decoded.
    headers: tuple[tuple[str, str], ...]
    #: Each body part: (content type, decoded text).
    parts: tuple[tuple[str, str], ...]
    empty_placeholders: tuple[str, ...]
    #: The message bytes as the transport would send them.
    data: bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "matched": True,
            "envelope": {"sender": self.sender, "recipients": list(self.recipients)},
            "subject": self.subject,
            "to": list(self.to),
            "cc": list(self.cc),
            "bcc": list(self.bcc),
            "headers": [[name, value] for name, value in self.headers],
            "parts": [{"content_type": kind, "body": body} for kind, body in self.parts],
            "empty_placeholders": list(self.empty_placeholders),
        }


@dataclass(frozen=True)
class NoMatch:
    rule_id: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"rule_id": self.rule_id, "matched": False, "reason": self.reason}


def preview(rule: CompiledRule, event: Event, message_id_domain: str | None = None) -> MailPreview | NoMatch:
    """The mail ``rule`` sends for ``event``; raises RenderError/MessageError like a delivery would."""
    reason = rejection(rule, event)
    if reason is not None:
        return NoMatch(rule.rule_id, reason)
    rendered, built = compose(event, rule, message_id_domain)
    message = built.message
    return MailPreview(
        rule_id=rule.rule_id,
        sender=built.sender,
        recipients=built.recipients,
        subject=built.subject,
        to=built.to,
        cc=built.cc,
        bcc=built.bcc,
        headers=tuple((name, str(value)) for name, value in message.items()),
        parts=tuple(_parts(message)),
        empty_placeholders=rendered.empty_placeholders,
        data=built.data,
    )


def _parts(message: EmailMessage) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        assert isinstance(part, EmailMessage)
        content = part.get_content()
        out.append((part.get_content_type(), content if isinstance(content, str) else repr(content)))
    return out
