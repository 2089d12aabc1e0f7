"""The SMTP server of a connection as the service uses it: :func:`connection_params`.

One code path for every place that sends: the consumer's deliveries and ``eventmail smtp test``
build their :class:`~consumer.mail.params.ConnectionParams` here, so the test command trusts the same
CA files, uses the same password and the same metric label as ``eventmail run``.

Trust, strongest first: the connection's own ``ca_file`` (an ESP connection of
``EVENTMAIL_ESP_CONNECTIONS``, or a rule's manual connection), then ``EVENTMAIL_SMTP__CA_FILE``, then
the system store. ``ca_source`` of the result names the setting to change when a certificate is not
trusted.
"""

from __future__ import annotations

from pydantic import SecretStr

from consumer.errors import SecretError
from consumer.mail.params import ConnectionParams
from consumer.rules.model import EspConnectionRef, ManualConnection
from consumer.rules.secrets import PasswordResolver
from consumer.settings import Settings

_GLOBAL_CA = "EVENTMAIL_SMTP__CA_FILE"


def connection_params(
    settings: Settings,
    connection: EspConnectionRef | ManualConnection,
    passwords: PasswordResolver | None = None,
    *,
    password: SecretStr | None = None,
) -> ConnectionParams:
    """The server of ``connection``; raises :class:`SecretError` when the deployment lacks what it
    names (an ESP connection, a secret, the key of an ``enc:`` password).

    ``password`` overrides the connection's own (the test command's prompt)."""
    default_ca = settings.smtp.ca_file
    if isinstance(connection, EspConnectionRef):
        esp = settings.esp_connections.get(connection.name)
        if esp is None:
            raise SecretError(
                f"ESP connection {connection.name!r} is not configured (EVENTMAIL_ESP_CONNECTIONS)"
            )
        own = f"EVENTMAIL_ESP_CONNECTIONS' {connection.name}.ca_file"
        source = own if esp.ca_file else f"{_GLOBAL_CA} (or {own})"
        return ConnectionParams.from_esp(
            connection.name, esp, ca_file=esp.ca_file or default_ca, ca_source=source
        )
    if password is None:
        password = (passwords or PasswordResolver(settings)).resolve(connection)
    own = "the rule's action.connection.ca_file"
    return ConnectionParams.manual(
        host=connection.host,
        port=connection.port,
        encryption=connection.encryption,
        login=connection.login,
        password=password,
        ca_file=connection.ca_file or default_ca,
        ca_source=own if connection.ca_file else f"{_GLOBAL_CA} (or {own})",
    )
