"""The mail action: render a rule's templates for an event, build the message, send it over SMTP.

``render`` -> :class:`Rendered`; ``build_message`` -> :class:`BuiltMessage`; ``Transport.send`` ->
:class:`SendResult` or a :class:`TransientSendError` / :class:`PermanentSendError`. This package never
reads settings from the environment, never imports the rule model, and never logs secrets.
"""

from __future__ import annotations

from consumer.mail.errors import (
    CircuitOpenError,
    ConnectionDroppedError,
    MessageError,
    PermanentSendError,
    Refusal,
    RenderError,
    SendError,
    SendTimeoutError,
    TransientSendError,
    is_transient,
)
from consumer.mail.message import Address, BuiltMessage, MailAddress, build_message, message_id_for
from consumer.mail.params import ConnectionParams
from consumer.mail.render import (
    ContentType,
    Rendered,
    compile_template,
    render,
    render_template,
    template_values,
)
from consumer.mail.sandbox import RenderLimits
from consumer.mail.transport import SendResult, Transport

__all__ = [
    "Address",
    "BuiltMessage",
    "CircuitOpenError",
    "ConnectionDroppedError",
    "ConnectionParams",
    "ContentType",
    "MailAddress",
    "MessageError",
    "PermanentSendError",
    "Refusal",
    "RenderError",
    "RenderLimits",
    "Rendered",
    "SendError",
    "SendResult",
    "SendTimeoutError",
    "TransientSendError",
    "Transport",
    "build_message",
    "compile_template",
    "is_transient",
    "message_id_for",
    "render",
    "render_template",
    "template_values",
]
