"""The "send a test email" button: one message through a connection, each step reported.

Used by ``eventmail smtp test`` and the console's Connections screen. The connection is built as
``eventmail run`` builds it (:mod:`consumer.mail.connections`); exactly one message is sent and never
retried in place; ``trace`` receives each step (connected, TLS, AUTH, the server's reply).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from consumer.errors import MailError
from consumer.mail.message import MailAddress, build_message, check_address
from consumer.mail.params import ConnectionParams
from consumer.mail.render import Rendered
from consumer.mail.transport import SendResult, Transport
from consumer.settings import Settings


def is_address(text: str) -> bool:
    try:
        check_address("sender", MailAddress(text))
    except MailError:
        return False
    return True


def default_sender(explicit: str | None, params: ConnectionParams, settings: Settings) -> str | None:
    """``explicit``, else the login when it is an address, else the alerts' sender when it is a valid
    address; None when there is none (the caller asks for one)."""
    if explicit:
        return explicit
    if params.login and is_address(params.login):
        return params.login
    fallback = settings.alerts.sender
    return fallback if is_address(fallback) else None


async def send_test_mail(
    settings: Settings,
    params: ConnectionParams,
    sender: str,
    to: tuple[str, ...],
    subject: str,
    trace: Callable[[str], None],
) -> tuple[SendResult, str]:
    """(what the server answered, the Message-ID); raises SendError or MailError."""
    now = datetime.now(UTC)
    body = (
        f"This is a test message from eventmail, sent through connection {params.name!r} "
        f"at {now.isoformat(timespec='seconds')}.\n\nIf you can read it, the connection works.\n"
    )
    built = build_message(
        Rendered(subject, body, None),
        sender=MailAddress(sender, "eventmail"),
        to=[MailAddress(address) for address in to],
        event_id=f"smtp-test-{uuid.uuid4()}",
        rule_id="smtp-test",
        date=now,
    )
    smtp = settings.smtp.model_copy(update={"in_place_retries": 0})
    async with Transport(smtp, trace=trace) as transport:
        result = await transport.send(params, built.data, built.sender, built.recipients)
    return result, built.message_id
