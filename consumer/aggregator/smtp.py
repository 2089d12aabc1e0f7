"""The SMTP side of alert emails: a :class:`MailSender` for the ESP connection named by
``EVENTMAIL_ALERTS__CONNECTION``, over the mail transport of :mod:`consumer.mail`.

The transport pools sessions, retries transient failures in place (``EVENTMAIL_SMTP__*``), opens a
circuit while the server keeps failing, and classifies errors as transient or permanent; the alert
mailer retries only transient ones. Recipients refused while others were accepted are logged as a
count (never the addresses' passwords or the connection's login). Nothing here logs a secret.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage

from consumer.mail import ConnectionParams, Transport
from consumer.settings import EspConnection, Settings

log = logging.getLogger(__name__)


class EspSender:
    """Sends through one ESP connection of the deployment."""

    def __init__(
        self, name: str, connection: EspConnection, transport: Transport, ca_file: str | None = None
    ) -> None:
        self.params = ConnectionParams.from_esp(name, connection, ca_file=connection.ca_file or ca_file)
        self.transport = transport

    async def send(self, message: EmailMessage, sender: str, recipients: list[str]) -> None:
        result = await self.transport.send(self.params, message, sender, recipients)
        if result.refused:
            log.warning(
                "alert recipients refused by the server",
                extra={"connection": self.params.name, "refused": len(result.refused)},
            )

    async def close(self) -> None:
        await self.transport.close()


def alert_sender(settings: Settings) -> EspSender | None:
    """The sender of the alert connection, or None when the deployment does not define it."""
    name = settings.alerts.connection
    connection = settings.esp_connections.get(name)
    if connection is None:
        return None
    return EspSender(name, connection, Transport(settings.smtp), ca_file=settings.smtp.ca_file)
