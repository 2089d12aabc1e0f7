"""The rule document (contract "Rules"): one pydantic model, the same for files and the rules topic.

Field-level rules live on the fields; rules that relate fields to each other (triggers of the platform,
level and scope ids, price range triggers, placeholders, ESP connection names ...) live in
:mod:`consumer.rules.checks` and run after the fields are valid, so every problem comes with its own
field path. Use :func:`consumer.rules.validation.validate_rule` rather than ``Rule.model_validate``:
it passes the deployment's context and formats the errors.

Models are frozen. The password is a ``SecretStr``: ``repr`` never shows it, and ``model_dump(mode=
"json")`` shows only ``enc:…``, ``secret:NAME`` or ``***`` unless the rules topic encoder asks for the
sealed value. Validation errors never echo input values.
"""

from __future__ import annotations

from email.utils import formataddr
from enum import StrEnum
from typing import Annotated, Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    SerializationInfo,
    StringConstraints,
    WithJsonSchema,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from consumer.events.triggers import CALL_LOGIC_TRIGGERS, LMS_TRIGGERS, Platform
from consumer.rules.passwords import SECRET_NAME, SECRET_PREFIX, display_password, password_kind
from consumer.settings import Encryption

RULE_ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
ALL_TRIGGERS: tuple[str, ...] = tuple(dict.fromkeys((*LMS_TRIGGERS, *CALL_LOGIC_TRIGGERS)))
MAX_ADDRESSES = 100
MAX_FILTER_IDS = 10_000


def _single_line(value: str) -> str:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError("must not contain line breaks (CR, LF) or NUL")
    return value


def _email(value: str) -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"{value!r} is not a valid email address: {exc}") from None


def _split_emails(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


SingleLine = Annotated[str, AfterValidator(_single_line)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_single_line)]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_single_line)]
EmailAddress = Annotated[
    str, StringConstraints(min_length=3, max_length=320), AfterValidator(_single_line), AfterValidator(_email)
]
EmailList = Annotated[
    tuple[EmailAddress, ...],
    BeforeValidator(_split_emails),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "description": "comma-separated addresses"},
                {"type": "array", "items": {"type": "string", "format": "email"}},
            ]
        }
    ),
]
TriggerName = Annotated[str, WithJsonSchema({"type": "string", "enum": list(ALL_TRIGGERS)})]
Timeframe = Literal["5m", "1h", "3h", "6h"]
TIMEFRAME_SECONDS: dict[str, int] = {"5m": 300, "1h": 3600, "3h": 10800, "6h": 21600}


class _Document(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", hide_input_in_errors=True, coerce_numbers_to_str=True
    )


class Level(StrEnum):
    PRODUCT = "product"
    CAMPAIGN = "campaign"


class Method(StrEnum):
    POST = "POST"
    FORM = "FORM"


class TrackingStrategy(StrEnum):
    DIRECT_SOLD_ONLY = "direct_sold_only"
    PINGBACK_ONLY = "pingback_only"

    @property
    def event_value(self) -> str:
        """The event's ``tracking_strategy`` this filter lets through."""
        return "direct_sold" if self is TrackingStrategy.DIRECT_SOLD_ONLY else "pingback"


class ContentType(StrEnum):
    TEXT = "text"
    HTML = "html"
    ALL = "all"  # multipart/alternative


class IdFilter(_Document):
    """Events whose field is in ``include`` (when given) and not in ``exclude``."""

    include: tuple[Identifier, ...] = Field(default=(), max_length=MAX_FILTER_IDS)
    exclude: tuple[Identifier, ...] = Field(default=(), max_length=MAX_FILTER_IDS)


class IncludeFilter(_Document):
    """Events whose field is in ``include`` (no exclude list)."""

    include: tuple[Identifier, ...] = Field(default=(), max_length=MAX_FILTER_IDS)

    @model_validator(mode="before")
    @classmethod
    def _no_exclude(cls, data: Any) -> Any:
        if isinstance(data, dict) and "exclude" in data:
            raise PydanticCustomError("include_only", "supports include only (no exclude list)")
        return data


_Price = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class PriceAboveZero(_Document):
    op: Literal["gt_zero"]


class PriceCompare(_Document):
    op: Literal["gt", "gte", "lt", "lte"]
    value: _Price


class PriceRange(_Document):
    """Inclusive range; only for rules whose every trigger is lead_sold or campaign_sold."""

    op: Literal["range"]
    min: _Price
    max: _Price


PriceRestriction = Annotated[PriceAboveZero | PriceCompare | PriceRange, Field(discriminator="op")]

#: Filter name -> the event field it looks at.
ID_FILTER_FIELDS: dict[str, str] = {
    "publishers": "publisher_id",
    "channels": "channel_id",
    "sources": "source_id",
    "buyers": "buyer_id",
    "campaigns": "campaign_id",
    "pingtrees": "pingtree_id",
}


class Filters(_Document):
    """All optional; no filters = every event of the rule's triggers and scope."""

    method: Method | None = None
    tracking_strategy: TrackingStrategy | None = None
    publishers: IdFilter | None = None
    channels: IdFilter | None = None
    sources: IdFilter | None = None
    buyers: IdFilter | None = None
    campaigns: IdFilter | None = None
    pingtrees: IdFilter | None = None
    call_tracking_pools: IncludeFilter | None = None
    price: PriceRestriction | None = None


_MANUAL_ONLY = ("host", "port", "login", "password", "encryption", "ca_file")


class EspConnectionRef(_Document):
    """A connection of the deployment's ``EVENTMAIL_ESP_CONNECTIONS``, by name."""

    type: Literal["esp"]
    name: Name = "default"

    @model_validator(mode="before")
    @classmethod
    def _no_manual_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            extra = [key for key in _MANUAL_ONLY if key in data]
            if extra:
                raise PydanticCustomError(
                    "manual_only",
                    "{fields}: only with a manual connection (type: manual)",
                    {"fields": ", ".join(extra)},
                )
        return data

    @property
    def label(self) -> str:
        return f"esp:{self.name}"


Hostname = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=253, pattern=r"^[A-Za-z0-9]([A-Za-z0-9.:_\[\]-]*[A-Za-z0-9\]])?$"
    ),
]


class ManualConnection(_Document):
    """A custom SMTP server. ``login``/``password`` may both be left out for an unauthenticated relay."""

    type: Literal["manual"]
    host: Hostname
    port: int = Field(ge=1, le=65535)
    login: Annotated[SingleLine, StringConstraints(min_length=1, max_length=256)] | None = None
    password: SecretStr | None = None
    encryption: Encryption
    #: A PEM file of CA certificates, on the consumer's host, trusted for this server instead of
    #: ``EVENTMAIL_SMTP__CA_FILE`` or the system store (a private CA).
    ca_file: Annotated[SingleLine, StringConstraints(min_length=1, max_length=1024)] | None = None

    @field_validator("password")
    @classmethod
    def _password_form(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        text = value.get_secret_value()
        if not text or "\r" in text or "\n" in text or "\x00" in text:
            raise ValueError("must be non-empty and without line breaks")
        if password_kind(text) == "secret" and not SECRET_NAME.fullmatch(text[len(SECRET_PREFIX) :]):
            raise ValueError("secret:NAME needs a NAME of letters, digits, '.', '_' or '-'")
        if password_kind(text) == "enc" and len(text) < 10:
            raise ValueError("enc: must be followed by a Fernet token")
        return value

    @field_serializer("password", when_used="json")
    def _show_password(self, value: SecretStr | None, info: SerializationInfo) -> str | None:
        if value is None:
            return None
        if isinstance(info.context, dict) and info.context.get("reveal_sealed"):
            text = value.get_secret_value()
            if password_kind(text) != "clear":
                return text
        return display_password(value)

    @property
    def label(self) -> str:
        return f"manual:{self.host}:{self.port}"


Connection = Annotated[EspConnectionRef | ManualConnection, Field(discriminator="type")]


class Address(_Document):
    email: EmailAddress
    name: Name | None = None

    def formatted(self) -> str:
        """``Name <email>`` (RFC 5322, quoted when needed) or the bare address."""
        return formataddr((self.name, self.email)) if self.name else self.email


class Action(_Document):
    """What to send, from whom, to whom, through which SMTP connection."""

    connection: Connection
    #: ESP connections of the deployment tried in order when the connection's circuit is open or its
    #: transient failures outlast the in-place retries (a permanent 5xx refusal does not fail over).
    fallbacks: tuple[EspConnectionRef, ...] = Field(default=(), max_length=3)
    sender: Address
    recipients: tuple[Address, ...] = Field(min_length=1, max_length=MAX_ADDRESSES)
    cc: tuple[Address, ...] = Field(default=(), max_length=MAX_ADDRESSES)
    bcc: tuple[Address, ...] = Field(default=(), max_length=MAX_ADDRESSES)
    use_twig: bool = False
    subject: Annotated[SingleLine, StringConstraints(min_length=1, max_length=998)]
    body: Annotated[str, StringConstraints(min_length=1, max_length=200_000)]
    content_type: ContentType = ContentType.TEXT


class Warnings(_Document):
    """Warning notifications about the rule; off unless ``enabled`` (they are billed)."""

    enabled: bool = False
    timeframe: Timeframe = "1h"
    percent: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    count: int | None = Field(default=None, ge=0)
    #: The percent threshold is not decided below this many events in the window (None: always):
    #: one refused mail out of one event is "100 %", which says little.
    min_events: int | None = Field(default=None, ge=1)
    users: tuple[Identifier, ...] = Field(default=(), max_length=MAX_ADDRESSES)
    emails: EmailList = Field(default=(), max_length=MAX_ADDRESSES)
    frequency_minutes: int = Field(default=30, ge=1, le=10_080)

    @property
    def timeframe_seconds(self) -> int:
        return TIMEFRAME_SECONDS[self.timeframe]


class Rule(_Document):
    """When one of ``triggers`` fires for the product or campaign, send ``action``'s mail."""

    id: Annotated[str, StringConstraints(pattern=RULE_ID_PATTERN)]
    name: Name | None = None
    enabled: bool = True
    platform: Platform
    level: Level
    product_id: Identifier | None = None
    campaign_id: Identifier | None = None
    triggers: tuple[TriggerName, ...] = Field(min_length=1, max_length=len(ALL_TRIGGERS))
    filters: Filters = Field(default_factory=Filters)
    action: Action
    warnings: Warnings | None = None

    @property
    def scope(self) -> tuple[str, str]:
        """("product", product_id) or ("campaign", campaign_id)."""
        if self.level is Level.PRODUCT:
            return ("product", self.product_id or "")
        return ("campaign", self.campaign_id or "")

    @property
    def warnings_enabled(self) -> bool:
        return self.warnings is not None and self.warnings.enabled
