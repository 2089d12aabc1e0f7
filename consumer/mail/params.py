"""Where and how to reach one SMTP server: :class:`ConnectionParams`.

One frozen value per connection (a named ESP connection of the deployment, or a rule's manual
connection). Everything that changes the SMTP session is part of its equality and hash, so a pool
keyed by it never hands a session set up for one login (or host, TLS mode, CA ...) to another. ``name``
is the bounded label used in metrics; it never holds a host or an address: an ESP connection's name,
or for a rule's manual connection ``manual-`` and a short hash of its host and port
(:func:`manual_label`), so a dashboard tells the servers apart without the label set growing past
:data:`MAX_MANUAL_LABELS`. ``ca_source`` names the setting the CA file came from, for error messages.

The password is a ``SecretStr``: it never shows in ``repr``, logs, errors or metrics, and is only
unwrapped to hand it to the SMTP client's AUTH.
"""

from __future__ import annotations

import hashlib
import ssl
import threading
from dataclasses import dataclass, field

from pydantic import SecretStr

from consumer.settings import Encryption, EspConnection

DEFAULT_MAX_CONNECTIONS = 8
MANUAL_NAME = "manual"
#: Distinct manual-connection labels one process hands out; later servers share ``manual-other``.
MAX_MANUAL_LABELS = 64
MANUAL_OTHER = "manual-other"


class ManualLabels:
    """Hands out manual-connection labels, at most ``limit`` distinct ones (then ``manual-other``)."""

    def __init__(self, limit: int = MAX_MANUAL_LABELS) -> None:
        self.limit = limit
        self._given: set[str] = set()
        self._lock = threading.Lock()

    def label(self, host: str, port: int) -> str:
        digest = hashlib.sha256(f"{host.lower()}:{port}".encode()).hexdigest()[:8]
        label = f"{MANUAL_NAME}-{digest}"
        with self._lock:
            if label in self._given:
                return label
            if len(self._given) >= self.limit:
                return MANUAL_OTHER
            self._given.add(label)
        return label


_LABELS = ManualLabels()


def manual_label(host: str, port: int) -> str:
    """The metric label of a manual connection to ``host:port``: ``manual-`` and 8 hex digits of a
    hash (the same in every process), or ``manual-other`` once :data:`MAX_MANUAL_LABELS` are in use."""
    return _LABELS.label(host, port)


@dataclass(frozen=True, repr=False)
class ConnectionParams:
    """An SMTP server and how to talk to it (see the module docstring)."""

    name: str
    host: str
    port: int
    encryption: Encryption = Encryption.TLS
    login: str | None = None
    password: SecretStr | None = None
    #: Verify the server's certificate (host name and chain). Off only for explicit opt-outs.
    verify_tls: bool = True
    #: A PEM file of CA certificates to trust instead of the system store (a private CA).
    ca_file: str | None = None
    #: Persistent connections kept to this server at most.
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: Messages per second this server accepts from us (None: no limit).
    rate_limit_per_second: float | None = None
    #: Where the trust of this connection is configured (named in "not trusted" errors).
    ca_source: str = field(default="EVENTMAIL_SMTP__CA_FILE", compare=False)

    def __post_init__(self) -> None:
        if not self.name or not self.host:
            raise ValueError("a connection needs a name and a host")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not between 1 and 65535")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.rate_limit_per_second is not None and self.rate_limit_per_second <= 0:
            raise ValueError("rate_limit_per_second must be positive")
        object.__setattr__(self, "encryption", Encryption(self.encryption))

    @classmethod
    def from_esp(
        cls, name: str, esp: EspConnection, *, ca_file: str | None = None, ca_source: str | None = None
    ) -> ConnectionParams:
        """The named ESP connection ``name`` of the settings."""
        return cls(
            ca_source=ca_source or f"EVENTMAIL_ESP_CONNECTIONS' {name}.ca_file or EVENTMAIL_SMTP__CA_FILE",
            name=name,
            host=esp.host,
            port=esp.port,
            encryption=esp.encryption,
            login=esp.login,
            password=esp.password,
            verify_tls=esp.verify_tls,
            ca_file=ca_file,
            max_connections=esp.max_connections,
            rate_limit_per_second=esp.rate_limit_per_second,
        )

    @classmethod
    def manual(
        cls,
        host: str,
        port: int,
        encryption: Encryption | str = Encryption.TLS,
        login: str | None = None,
        password: SecretStr | str | None = None,
        *,
        name: str | None = None,
        verify_tls: bool = True,
        ca_file: str | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        rate_limit_per_second: float | None = None,
        ca_source: str = "EVENTMAIL_SMTP__CA_FILE (or the rule's action.connection.ca_file)",
    ) -> ConnectionParams:
        """A rule's manual connection (or the CLI's ``--host`` ...). ``name`` labels its metrics
        (default :func:`manual_label`)."""
        secret = SecretStr(password) if isinstance(password, str) else password
        return cls(
            ca_source=ca_source,
            name=name or manual_label(host, port),
            host=host,
            port=port,
            encryption=Encryption(encryption),
            login=login or None,
            password=secret,
            verify_tls=verify_tls,
            ca_file=ca_file,
            max_connections=max_connections,
            rate_limit_per_second=rate_limit_per_second,
        )

    @property
    def server_key(self) -> tuple[str, int, str | None]:
        """(host, port, login): what one circuit breaker stands for."""
        return self.host.lower(), self.port, self.login

    @property
    def address(self) -> str:
        """``host:port`` (for messages to people, never for metric labels)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def secret(self) -> str | None:
        """The password, unwrapped for AUTH only."""
        return self.password.get_secret_value() if self.password is not None else None

    def __repr__(self) -> str:
        return (
            f"ConnectionParams(name={self.name!r}, host={self.host!r}, port={self.port}, "
            f"encryption={self.encryption.value!r}, login={self.login!r}, "
            f"password={'***' if self.password is not None else None}, verify_tls={self.verify_tls}, "
            f"ca_file={self.ca_file!r}, max_connections={self.max_connections}, "
            f"rate_limit_per_second={self.rate_limit_per_second})"
        )

    __str__ = __repr__


def default_tls_context(params: ConnectionParams) -> ssl.SSLContext:
    """Verifying client context (system CAs, or ``ca_file``); no verification when ``verify_tls`` is off."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=params.ca_file)
    if not params.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
