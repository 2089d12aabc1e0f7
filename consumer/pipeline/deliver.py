"""One delivery: render the rule's mail for the event, build the message, send it, classify the
result. Never raises for bad data or a failing server: every path ends in a DeliveryResult.
"""

from __future__ import annotations

import logging

from consumer.errors import SecretError
from consumer.events.model import Event
from consumer.mail.compose import build_for, render_arguments
from consumer.mail.connections import connection_params
from consumer.mail.errors import (
    CircuitOpenError,
    MessageError,
    PermanentSendError,
    RenderError,
    TransientSendError,
)
from consumer.mail.message import BuiltMessage, message_id_for
from consumer.mail.params import ConnectionParams
from consumer.mail.render_worker import RenderService
from consumer.mail.transport import Transport
from consumer.pipeline.result import DeliveryResult, Verdict
from consumer.rules.matching import CompiledRule
from consumer.rules.model import EspConnectionRef, ManualConnection
from consumer.rules.secrets import PasswordResolver
from consumer.settings import Settings

log = logging.getLogger(__name__)


class MailDeliverer:
    def __init__(self, settings: Settings, transport: Transport | None = None) -> None:
        self.settings = settings
        self.transport = transport or Transport(settings.smtp)
        self.passwords = PasswordResolver(settings)
        self.renderer = RenderService()
        #: The server of each ESP connection (the settings do not change while the service runs).
        self._esp_params: dict[str, ConnectionParams] = {}

    def connection(self, rule: CompiledRule) -> ConnectionParams:
        """The SMTP server of a rule; raises SecretError when the deployment lacks what it names."""
        return connection_params(self.settings, rule.action.connection, self.passwords)

    def _params(self, connection: EspConnectionRef | ManualConnection) -> ConnectionParams:
        """``connection_params`` of a delivery's connection, made once per ESP connection (a rule's
        manual connection is made each time: its password may be resolved from a secret)."""
        if not isinstance(connection, EspConnectionRef):
            return connection_params(self.settings, connection, self.passwords)
        params = self._esp_params.get(connection.name)
        if params is None:  # a SecretError (not configured) is raised each time, never kept
            params = self._esp_params[connection.name] = connection_params(
                self.settings, connection, self.passwords
            )
        return params

    def chain(self, rule: CompiledRule) -> list[EspConnectionRef | ManualConnection]:
        """The connections a delivery may use, in order: the rule's, its fallbacks, then the
        fallbacks the deployment gives the rule's ESP connection (each once)."""
        primary = rule.action.connection
        out: list[EspConnectionRef | ManualConnection] = [primary, *rule.action.fallbacks]
        if isinstance(primary, EspConnectionRef):
            esp = self.settings.esp_connections.get(primary.name)
            out += [EspConnectionRef(type="esp", name=name) for name in (esp.fallbacks if esp else ())]
        unique: dict[str, EspConnectionRef | ManualConnection] = {}
        for connection in out:
            unique.setdefault(connection.label, connection)
        return list(unique.values())

    def _idempotency_headers(
        self, chain: list[EspConnectionRef | ManualConnection], key: str
    ) -> list[tuple[str, str]]:
        names: dict[str, None] = {}
        for connection in chain:
            if isinstance(connection, EspConnectionRef):
                esp = self.settings.esp_connections.get(connection.name)
                if esp is not None and esp.idempotency_header:
                    names[esp.idempotency_header] = None
        return [(name, key) for name in names]

    async def deliver(self, event: Event, rule: CompiledRule, attempts_before: int) -> DeliveryResult:
        label = rule.connection_label
        chain = self.chain(rule)
        key = message_id_for(event.event_id, rule.rule_id).strip("<>").split("@", 1)[0]
        try:
            rendered = await self.renderer.render(event, **render_arguments(rule))
            headers = self._idempotency_headers(chain, key)
            built = build_for(event, rule, rendered, headers, self.settings.smtp.message_id_domain)
        except (RenderError, MessageError) as exc:
            reason = "render" if isinstance(exc, RenderError) else "message"
            return DeliveryResult(
                Verdict.FAILED, attempts_before + 1, error=str(exc), connection=label, reason=reason
            )
        result = _described(built, rendered.empty_placeholders, label, attempts_before + 1)
        attempts = attempts_before
        for position, connection in enumerate(chain):
            last = position == len(chain) - 1
            try:
                params = self._params(connection)
            except SecretError as exc:
                if position == 0:
                    result.verdict, result.error, result.reason = Verdict.FAILED, str(exc), "config"
                    return result
                log.warning(
                    "fallback connection unusable", extra={"connection": connection.label, "error": str(exc)}
                )
                continue
            try:
                sent = await self.transport.send(params, built)
            except TransientSendError as exc:
                # A delivery refused by an open circuit made an attempt too: else its backoff never grows.
                attempts += max(1, exc.attempts)
                if not last:
                    log.warning(
                        "failing over to the next connection",
                        extra={
                            "rule_id": rule.rule_id,
                            "event_id": event.event_id,
                            "connection": connection.label,
                            "error": str(exc),
                        },
                    )
                    continue
                result.verdict, result.attempts, result.connection = (
                    Verdict.TRANSIENT,
                    attempts,
                    connection.label,
                )
                result.error, result.smtp_code, result.reason = str(exc), exc.code, exc.reason
                if isinstance(exc, CircuitOpenError):  # no retry before the circuit admits a probe
                    result.error = f"{exc.connection}: circuit open after repeated failures"
                    result.retry_after = exc.retry_after
                return result
            except PermanentSendError as exc:  # a refusal is the mail's fault: no failover
                result.verdict, result.attempts, result.connection = (
                    Verdict.FAILED,
                    attempts + max(1, exc.attempts),
                    connection.label,
                )
                result.error, result.smtp_code, result.reason = str(exc), exc.code, exc.reason
                return result
            result.attempts = attempts + sent.attempts
            result.smtp_code = sent.code
            result.connection = connection.label
            if sent.refused:
                refused = ", ".join(f"{addr}: {refusal}" for addr, refusal in sorted(sent.refused.items()))
                result.error = f"some recipients refused: {refused}"
            return result
        result.verdict, result.attempts, result.reason = Verdict.FAILED, attempts + 1, "config"
        result.error = "no usable connection (every fallback is misconfigured)"
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
