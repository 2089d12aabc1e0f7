"""One delivery: render the rule's mail for the event, build the message, send it, classify the
result. Never raises for bad data or a failing server: every path ends in a DeliveryResult.
"""

from __future__ import annotations

from consumer.errors import SecretError
from consumer.events.model import Event
from consumer.mail.connections import connection_params
from consumer.mail.errors import (
    CircuitOpenError,
    MessageError,
    PermanentSendError,
    RenderError,
    TransientSendError,
)
from consumer.mail.message import BuiltMessage, build_message
from consumer.mail.params import ConnectionParams
from consumer.mail.render_worker import RenderService
from consumer.mail.transport import Transport
from consumer.pipeline.result import DeliveryResult, Verdict
from consumer.rules.matching import CompiledRule
from consumer.rules.secrets import PasswordResolver
from consumer.settings import Settings


class MailDeliverer:
    def __init__(self, settings: Settings, transport: Transport | None = None) -> None:
        self.settings = settings
        self.transport = transport or Transport(settings.smtp)
        self.passwords = PasswordResolver(settings)
        self.renderer = RenderService()

    def connection(self, rule: CompiledRule) -> ConnectionParams:
        """The SMTP server of a rule; raises SecretError when the deployment lacks what it names."""
        return connection_params(self.settings, rule.action.connection, self.passwords)

    async def deliver(self, event: Event, rule: CompiledRule, attempts_before: int) -> DeliveryResult:
        action = rule.action
        label = rule.connection_label
        try:
            rendered = await self.renderer.render(
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
        except (RenderError, MessageError) as exc:
            reason = "render" if isinstance(exc, RenderError) else "message"
            return DeliveryResult(
                Verdict.FAILED, attempts_before + 1, error=str(exc), connection=label, reason=reason
            )
        result = _described(built, rendered.empty_placeholders, label, attempts_before + 1)
        try:
            params = self.connection(rule)
        except SecretError as exc:
            result.verdict, result.error, result.reason = Verdict.FAILED, str(exc), "config"
            return result
        try:
            sent = await self.transport.send(params, built)
        except (TransientSendError, PermanentSendError) as exc:
            transient = isinstance(exc, TransientSendError)
            result.verdict = Verdict.TRANSIENT if transient else Verdict.FAILED
            # A delivery refused by an open circuit made an attempt too: else its retry backoff never grows.
            result.attempts = attempts_before + max(1, exc.attempts)
            result.error, result.smtp_code, result.reason = str(exc), exc.code, exc.reason
            if isinstance(exc, CircuitOpenError):  # no retry before the circuit admits a probe
                result.error = f"{exc.connection}: circuit open after repeated failures"
                result.retry_after = exc.retry_after
            return result
        result.attempts = attempts_before + sent.attempts
        result.smtp_code = sent.code
        if sent.refused:
            refused = ", ".join(f"{addr}: {refusal}" for addr, refusal in sorted(sent.refused.items()))
            result.error = f"some recipients refused: {refused}"
        return result

    async def close(self) -> None:
        await self.transport.close()
        await self.renderer.close()


def _described(built: BuiltMessage, empty: tuple[str, ...], label: str, attempts: int) -> DeliveryResult:
    """A SENT result describing the built message; callers change the verdict on failure."""
    return DeliveryResult(
        Verdict.SENT,
        attempts,
        to=list(built.to),
        cc=list(built.cc),
        bcc=list(built.bcc),
        subject=built.subject,
        message_id=built.message_id,
        connection=label,
        empty_placeholders=list(empty),
    )
