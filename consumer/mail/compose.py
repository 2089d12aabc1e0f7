"""The mail of one rule for one event: render its templates, then build the message.

One function for everything that needs the mail a rule would send: the consumer's delivery,
``eventmail rules preview`` and ``rules test`` (so a preview is the mail, not a look-alike).
Raises :class:`RenderError` or :class:`MessageError` for a template or an address that fails.
"""

from __future__ import annotations

from consumer.events.model import Event
from consumer.mail.message import BuiltMessage, build_message
from consumer.mail.render import Rendered, render
from consumer.rules.matching import CompiledRule


def compose(event: Event, rule: CompiledRule) -> tuple[Rendered, BuiltMessage]:
    action = rule.action
    rendered = render(
        event,
        subject=action.subject,
        body=action.body,
        use_twig=action.use_twig,
        content_type=action.content_type.value,
        rule_id=rule.rule_id,
        rule_name=rule.name,
    )
    built = build_message(
        rendered,
        sender=action.sender,
        to=action.recipients,
        cc=action.cc,
        bcc=action.bcc,
        event_id=event.event_id,
        rule_id=rule.rule_id,
        rule_version=rule.record_offset,
    )
    return rendered, built
