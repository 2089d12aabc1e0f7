"""Alert emails: what they say, who gets them, and sending them with retries.

The subject and body name the rule, the timeframe and window, events, warnings and their share,
the thresholds, the most frequent errors and the ``eventmail logs`` command to investigate. The
message goes to the rule's emails and its users' addresses (``EVENTMAIL_USERS``) through the ESP
connection ``EVENTMAIL_ALERTS__CONNECTION``.

Sending never raises into the aggregator: a failure that may pass is retried with backoff, counted
(``eventmail_alert_send_failures_total``) and reported as ``False``. Logs name the rule and the
connection, never a login or password.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Protocol

from consumer.aggregator.state import AlertDecision
from consumer.observability.metrics import ALERT_SEND_FAILURES
from consumer.outcomes.model import AlertKind

log = logging.getLogger(__name__)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def investigate_command(decision: AlertDecision) -> str:
    cfg = decision.config
    return f"eventmail logs --rule {cfg.rule_id} --status failed --since {cfg.timeframe}"


def subject(decision: AlertDecision) -> str:
    cfg = decision.config
    label = f"{cfg.rule_name} ({cfg.rule_id})" if cfg.rule_name else cfg.rule_id
    if decision.kind is AlertKind.RESOLVED:
        return f"[eventmail] Resolved: rule {label} is back under its warning thresholds"
    return (
        f"[eventmail] Warning alert: rule {label}: {decision.warnings} warnings in "
        f"{cfg.timeframe} ({decision.percent:.1f}% of {decision.events} events)"
    )


def body(decision: AlertDecision) -> str:
    cfg = decision.config
    th = cfg.thresholds
    limits = []
    if th.percent is not None:
        limits.append(f"more than {th.percent:g}% of events")
    if th.count is not None:
        limits.append(f"more than {th.count} warnings")
    headline = (
        "The rule is back under its warning thresholds."
        if decision.kind is AlertKind.RESOLVED
        else "Too many warnings for this rule."
    )
    lines = [
        headline,
        "",
        f"Rule:        {cfg.rule_name + ' ' if cfg.rule_name else ''}({cfg.rule_id})",
        f"Timeframe:   {cfg.timeframe} "
        f"({_when(decision.window_start_ms)} to {_when(decision.window_end_ms)})",
        f"Events:      {decision.events} (sent + failed)",
        f"Warnings:    {decision.warnings} (failed + config_error)",
        f"Share:       {decision.percent:.1f}% of events",
        f"Alert when:  {' or '.join(limits) or 'no threshold set'}",
        f"Why:         {decision.reason}",
        "",
    ]
    if decision.top_errors:
        lines.append("Most frequent errors:")
        lines += [f"  {count:>6} x {error}" for error, count in decision.top_errors]
        lines.append("")
    lines += [
        "To investigate:",
        f"  {investigate_command(decision)}",
        "",
        f"At most one alert per {cfg.frequency_minutes} minutes is sent for this rule.",
    ]
    return "\n".join(lines) + "\n"


def build_message(decision: AlertDecision, sender: str, recipients: Sequence[str]) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject(decision)
    message["Date"] = formatdate(localtime=False)
    domain = sender.rsplit("@", 1)[-1].strip("> ") if "@" in sender else "eventmail.local"
    message["Message-ID"] = make_msgid(
        idstring=f"alert.{decision.config.rule_id}.{decision.kind}.{decision.at_ms}", domain=domain
    )
    message["X-Eventmail-Rule"] = decision.config.rule_id
    message["X-Eventmail-Alert"] = decision.kind.value
    message.set_content(body(decision))
    return message


class MailSender(Protocol):
    """Hands one message to the alert connection's SMTP server; raises on failure."""

    async def send(self, message: EmailMessage, sender: str, recipients: list[str]) -> None: ...

    async def close(self) -> None: ...


@dataclass
class RetryPolicy:
    attempts: int = 3
    base_seconds: float = 0.5
    max_seconds: float = 30.0

    def delay(self, attempt: int) -> float:
        return float(min(self.base_seconds * 2 ** (attempt - 1), self.max_seconds))


class AlertMailer:
    """Sends alert emails through a :class:`MailSender`, with retries; never raises."""

    def __init__(
        self,
        sender_address: str,
        transport: MailSender | None,
        policy: RetryPolicy,
        retryable: Callable[[Exception], bool] = lambda _exc: True,
    ) -> None:
        self.sender_address = sender_address
        self.transport = transport
        self.policy = policy
        self.retryable = retryable

    async def deliver(self, decision: AlertDecision, recipients: list[str]) -> bool:
        rule = decision.config.rule_id
        if not recipients:
            log.warning("alert has no recipients; not emailed", extra={"rule_id": rule})
            return False
        if self.transport is None:
            ALERT_SEND_FAILURES.inc()
            log.error("no alert connection is configured; alert not emailed", extra={"rule_id": rule})
            return False
        message = build_message(decision, self.sender_address, recipients)
        for attempt in range(1, self.policy.attempts + 1):
            try:
                await self.transport.send(message, self.sender_address, recipients)
                return True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                last = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "alert email failed",
                    extra={"rule_id": rule, "attempt": attempt, "error": last[:300]},
                )
                if not self.retryable(exc):
                    break
            if attempt < self.policy.attempts:
                await asyncio.sleep(self.policy.delay(attempt))
        ALERT_SEND_FAILURES.inc()
        log.error("alert email given up", extra={"rule_id": rule, "attempts": attempt})
        return False

    async def close(self) -> None:
        if self.transport is not None:
            await self.transport.close()
