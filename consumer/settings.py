"""The deployment's settings: one frozen object, validated at start-up and passed down.

Sources, strongest first: environment variables (prefix ``EVENTMAIL_``, ``__`` for nesting, JSON for
maps), then an optional YAML file (``--config``), then the defaults. Nothing else in the code reads
``os.environ``. Secrets are ``SecretStr``: they never show in ``repr``, logs or errors.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from consumer.errors import SettingsError
from consumer.eventloop import EventLoop
from consumer.events.codec import InputFormat

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Encryption(StrEnum):
    NONE = "none"
    TLS = "tls"  # STARTTLS
    SSL = "ssl"  # implicit TLS


class KafkaSettings(BaseModel):
    model_config = _FROZEN

    bootstrap_servers: str = "localhost:9092"
    #: Extra librdkafka options (SASL, TLS ...). May hold credentials: kept out of repr.
    #: TLS material is given as files by librdkafka's own options (ssl.ca.location, ...).
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict, repr=False)
    #: A file holding the SASL password (``sasl.password``), e.g. a mounted Kubernetes Secret; read
    #: whenever a client is made, never logged.
    sasl_password_file: Path | None = None
    #: The SASL user (``sasl.username``): one per component, each with its own ACLs.
    sasl_username: str | None = None
    #: A group consumer out of its group this long while the brokers answer a fresh client is stuck:
    #: it is replaced by a new one and /healthz fails until one is a member again. Longer than a
    #: rebalance may legitimately take (librdkafka's max.poll.interval.ms, 300 s by default).
    group_stuck_seconds: float = Field(default=360.0, gt=0)

    @field_validator("sasl_password_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value


class TopicSettings(BaseModel):
    model_config = _FROZEN

    lms: str = "lms.events"
    call_logic: str = "calllogic.events"
    rules: str = "eventmail.rules"
    outcomes: str = "eventmail.outcomes"
    alerts: str = "eventmail.alerts"
    dlq: str = "eventmail.dlq"
    retry: str = "eventmail.retry"


class SchemaRegistrySettings(BaseModel):
    model_config = _FROZEN

    url: str | None = None
    basic_auth: SecretStr | None = None  # "user:password"


def _readable_ca_file(value: str | None) -> str | None:
    """A CA file setting must name a PEM file that loads: else start-up stops naming it."""
    if value is None:
        return None
    import ssl

    path = Path(value)
    if not path.is_file():
        raise ValueError(f"no such CA file: {value}")
    try:
        ssl.create_default_context(cafile=value)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the CA file {value}: {exc}") from None
    return value


class EspConnection(BaseModel):
    """A named SMTP connection of the deployment (an ESP or an internal relay)."""

    model_config = _FROZEN

    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    encryption: Encryption = Encryption.TLS
    login: str | None = None
    password: SecretStr | None = None
    #: Certificate verification; turn off only for an internal relay with a private certificate.
    verify_tls: bool = True
    #: A PEM file of CA certificates to trust for this server instead of the system store.
    ca_file: str | None = None
    max_connections: int = Field(default=8, ge=1, le=256)

    _ca_file = field_validator("ca_file")(_readable_ca_file)
    #: Messages per second the ESP accepts on this connection (None: no limit).
    rate_limit_per_second: float | None = Field(default=None, gt=0)
    #: Other ESP connections tried in order when this one's circuit is open or its transient failures
    #: outlast the in-place retries (after a rule's own fallbacks).
    fallbacks: tuple[str, ...] = Field(default=(), max_length=3)
    #: A header that carries the delivery's stable key (the Message-ID's hash), for providers that
    #: drop a resend with a key they have seen (e.g. an in-doubt retry after a dropped connection).
    idempotency_header: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9-]{0,63}$")


class AlertSettings(BaseModel):
    model_config = _FROZEN

    connection: str = "default"
    sender: str = "eventmail@localhost"
    send_resolved: bool = False


class HttpSettings(BaseModel):
    model_config = _FROZEN

    host: str = "0.0.0.0"
    #: None: 9400 for ``run``, 9401 for ``aggregate``.
    port: int | None = Field(default=None, ge=0, le=65535)


class SmtpSettings(BaseModel):
    """Timeouts and retry policy of the mail transport."""

    model_config = _FROZEN

    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    command_timeout_seconds: float = Field(default=30.0, gt=0)
    data_timeout_seconds: float = Field(default=60.0, gt=0)
    idle_timeout_seconds: float = Field(default=60.0, gt=0)
    in_place_retries: int = Field(default=2, ge=0, le=10)
    retry_base_seconds: float = Field(default=0.5, gt=0)
    retry_max_seconds: float = Field(default=30.0, gt=0)
    circuit_failures: int = Field(default=5, ge=1)
    circuit_open_seconds: float = Field(default=30.0, gt=0)
    #: Pipeline MAIL, RCPT and DATA (RFC 2920) with servers that offer PIPELINING: two round trips
    #: per mail instead of four or more (MAIL, a RCPT per recipient, DATA, the message). Off for a
    #: server that offers it and mishandles it.
    pipelining: bool = True
    #: A PEM file of CA certificates trusted for every connection without a ca_file of its own
    #: (a private CA of the company's relays and of rules' manual connections).
    ca_file: str | None = None
    #: The name sent with EHLO (default: this host's name).
    ehlo_hostname: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^\[[0-9A-Fa-f.:]+\]$",
    )
    #: Special-use domains (RFC 6761: test, local, localhost, invalid, arpa, onion) allowed in
    #: addresses, e.g. ``["test"]`` for internal mail; refused by default.
    allowed_special_use_domains: tuple[str, ...] = ()
    #: The right part of every Message-ID (default: the sender's domain).
    message_id_domain: str | None = Field(
        default=None, max_length=253, pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$"
    )

    _ca_file = field_validator("ca_file")(_readable_ca_file)

    @field_validator("allowed_special_use_domains")
    @classmethod
    def _special_use(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        known = ("arpa", "invalid", "local", "localhost", "onion", "test")
        names = tuple(name.strip().lower().strip(".") for name in value)
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a special-use domain (one of {', '.join(known)})")
        return names


class ConsoleAuth(StrEnum):
    PASSWORD = "password"  # noqa: S105 (a mode name)
    PROXY = "proxy"


class ConsoleUser(BaseModel):
    model_config = _FROZEN

    #: An argon2 hash (``eventmail console hash-password``), never the password.
    password_hash: SecretStr
    role: str = Field(default="viewer", pattern="^(viewer|editor)$")


class ConsoleSettings(BaseModel):
    """``eventmail console``: the admin screens in a browser."""

    model_config = _FROZEN

    host: str = "0.0.0.0"
    port: int = Field(default=9410, ge=0, le=65535)
    #: Required unless ``--local``: ``password`` (users below) or ``proxy`` (an authenticating proxy).
    auth: ConsoleAuth | None = None
    users: dict[str, ConsoleUser] = Field(default_factory=dict, repr=False)
    proxy_header: str = Field(default="X-Forwarded-User", pattern=r"^[A-Za-z0-9-]{1,64}$")
    #: Connections the proxy header is believed from (CIDRs); the header from elsewhere is ignored.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32",)
    #: With ``proxy``: the users who may change rules (everyone else authenticated is a viewer).
    editors: tuple[str, ...] = ()
    #: Signs session cookies; set it when several console replicas share users (default: random per
    #: process, so a restart logs everyone out).
    session_key: SecretStr | None = Field(default=None, repr=False)
    session_max_age_seconds: int = Field(default=8 * 3600, ge=60)

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import ipaddress

        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a CIDR (like 10.0.0.0/8)") from None
        return value


class PipelineSettings(BaseModel):
    model_config = _FROZEN

    max_in_flight: int = Field(default=256, ge=1, le=100_000)
    drain_timeout_seconds: float = Field(default=25.0, gt=0)
    commit_interval_seconds: float = Field(default=1.0, gt=0)
    #: How long a delivery keeps being retried (via the retry topic) before it is a failed outcome.
    retry_deadline_seconds: float = Field(default=3600.0, gt=0)
    #: First delay of a retry through the retry topic; later ones grow exponentially (up to 10 minutes).
    retry_base_seconds: float = Field(default=5.0, gt=0)
    #: Retry records held in memory until due; past this the retry partitions are paused.
    max_retry_pending: int = Field(default=10_000, ge=1)
    #: Offsets one partition may hold uncommitted behind its first unfinished record (finished ones
    #: included) before it is paused; it resumes below half. Bounds what a stuck record lets run ahead.
    max_uncommitted_per_partition: int = Field(default=10_000, ge=1)
    #: ``linger.ms`` of the outcome producer: how long an outcome may wait to share a produce request
    #: with others. It adds to the window in which a crash after the SMTP server accepted a mail sends
    #: it again (docs/delivery.md); 0 keeps that window smallest at about a fifth more CPU per mail.
    outcome_linger_ms: float = Field(default=5.0, ge=0, le=1000)
    #: How far back the outcome read-back looks for results of uncommitted records after a restart.
    dedup_lookback_seconds: float = Field(default=900.0, gt=0)
    #: ``transaction.timeout.ms`` of the retry hand-off: how long the broker keeps a hand-off of a
    #: process that vanished open (hiding later outcomes from the read-back), and how long a hand-off
    #: waits for the broker before it is aborted and written again. The broker's
    #: ``transaction.max.timeout.ms`` (15 minutes by default) bounds it.
    handoff_transaction_timeout_seconds: float = Field(default=15.0, ge=1.0, le=900.0)
    input_format: InputFormat = InputFormat.AUTO
    #: The event loop of ``eventmail run`` (:mod:`consumer.eventloop`).
    event_loop: EventLoop = EventLoop.UVLOOP

    @property
    def handoff_transaction_timeout_ms(self) -> int:
        return int(self.handoff_transaction_timeout_seconds * 1000)


class Settings(BaseSettings):
    """Everything a deployment configures; see the contract's Settings section."""

    model_config = SettingsConfigDict(
        env_prefix="EVENTMAIL_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        case_sensitive=False,
    )
    yaml_file_path: ClassVar[Path | None] = None

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    group_id: str = "eventmail"
    topics: TopicSettings = Field(default_factory=TopicSettings)
    schema_registry: SchemaRegistrySettings = Field(default_factory=SchemaRegistrySettings)
    esp_connections: dict[str, EspConnection] = Field(default_factory=dict)
    secret_key: SecretStr | None = None
    #: Named secrets that rules reference as ``secret:NAME``.
    secrets: dict[str, SecretStr] = Field(default_factory=dict)
    users: dict[str, str] = Field(default_factory=dict)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    log_level: str = "INFO"
    log_format: str = Field(default="json", pattern="^(json|text)$")

    @field_validator("esp_connections")
    @classmethod
    def _fallbacks_exist(cls, value: dict[str, EspConnection]) -> dict[str, EspConnection]:
        for name, esp in value.items():
            for fallback in esp.fallbacks:
                if fallback == name or fallback not in value:
                    why = "itself" if fallback == name else "not an ESP connection of this deployment"
                    raise ValueError(f"{name}.fallbacks: {fallback!r} is {why}")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return upper

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.yaml_file_path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=cls.yaml_file_path))
        return tuple(sources)

    def kafka_config(self, **overrides: Any) -> dict[str, Any]:
        """The librdkafka configuration common to every client of this deployment."""
        from consumer.observability.logging import librdkafka_logger

        # librdkafka's own lines go through the service's logging (structured, levels mapped).
        config: dict[str, Any] = {
            "bootstrap.servers": self.kafka.bootstrap_servers,
            "logger": librdkafka_logger(),
        }
        config.update(self.kafka.extra)
        if self.kafka.sasl_username is not None:
            config["sasl.username"] = self.kafka.sasl_username
        if self.kafka.sasl_password_file is not None:
            try:
                config["sasl.password"] = self.kafka.sasl_password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise SettingsError(
                    f"EVENTMAIL_KAFKA__SASL_PASSWORD_FILE: cannot read {self.kafka.sasl_password_file}: "
                    f"{exc.strerror}"
                ) from None
        config.update(overrides)
        return config


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read and validate the settings; a bad one raises :class:`SettingsError` naming it."""
    if config_file is not None and not config_file.is_file():
        raise SettingsError(f"--config: no such file: {config_file}")
    cls: type[Settings] = Settings
    if config_file is not None:
        cls = type("FileSettings", (Settings,), {"yaml_file_path": config_file})
    try:
        return cls(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = "__".join(str(part) for part in first.get("loc", ())).upper()
        raise SettingsError(f"EVENTMAIL_{path}: {first.get('msg')}") from None
    except (ValueError, OSError) as exc:  # malformed JSON in a variable, unreadable YAML ...
        field = re.search(r'field "([a-z_]+)"', str(exc))
        if field:
            raise SettingsError(f"EVENTMAIL_{field.group(1).upper()}: not valid JSON") from None
        raise SettingsError(f"settings: {exc}") from None
