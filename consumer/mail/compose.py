"""The mail of one rule for one event: what its templates are rendered with, and the message built
from what they rendered.

One place for everything that needs the mail a rule would send: the consumer's delivery (which
renders in its worker processes), ``eventmail rules preview``, ``rules test``, ``rules backtest`` and
the console (which render in-process), so a preview is the mail, not a look-alike.
Raises :class:`RenderError` or :class:`MessageError` for a template or an address that fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from consumer.events.model import Event
from consumer.mail.message import BuiltMessage, build_message
from consumer.mail.render import Rendered, render
from consumer.rules.matching import CompiledRule


def render_arguments(rule: CompiledRule) -> dict[str, Any]:
    """The keyword arguments of :func:`consumer.mail.render.render` (and the render worker's) for
    ``rule``."""
    action = rule.action
    return {
        "subject": action.subject,
        "body": action.body,
        "use_twig": action.use_twig,
        "content_type": action.content_type.value,
        "rule_id": rule.rule_id,
        "rule_name": rule.name,
    }


def build_for(
    event: Event,
    rule: CompiledRule,
    rendered: Rendered,
    extra_headers: Sequence[tuple[str, str]] = (),
    message_id_domain: str | None = None,
) -> BuiltMessage:
    """The message ``rule`` sends for ``event`` once its templates rendered as ``rendered``."""
    action = rule.action
    return build_message(
        rendered,
        sender=action.sender,
        to=action.recipients,
        cc=action.cc,
        bcc=action.bcc,
        event_id=event.event_id,
        rule_id=rule.rule_id,
        rule_version=rule.record_offset,
        extra_headers=extra_headers,
        message_id_domain=message_id_domain,
    )


def compose(
    event: Event, rule: CompiledRule, message_id_domain: str | None = None
) -> tuple[Rendered, BuiltMessage]:
    """Rendered in this process, then built."""
    rendered = render(event, **render_arguments(rule))
    return rendered, build_for(event, rule, rendered, message_id_domain=message_id_domain)
