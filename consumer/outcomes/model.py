"""Pydantic models of the outcome and alert records; ``schemas/outcome.avsc`` and ``alert.avsc`` are
the wire truth and a test keeps them in step. Outcomes never carry secrets: the connection is named
(``esp:NAME`` or ``manual:HOST:PORT``), never its login or password."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


class OutcomeStatus(StrEnum):
    SENT = "sent"
    FAILED = "failed"
    RETRYING = "retrying"
    CONFIG_ERROR = "config_error"


class SourcePosition(BaseModel):
    model_config = ConfigDict(frozen=True)

    topic: str
    partition: int
    offset: int


class Outcome(BaseModel):
    """One delivery result of one rule for one event, or a rule's configuration error."""

    model_config = ConfigDict(frozen=True)

    created: datetime = Field(default_factory=utcnow)
    event_id: str | None = None
    rule_id: str
    platform: str | None = None
    trigger: str | None = None
    status: OutcomeStatus
    to: list[str] = Field(default_factory=list)
    cc: list[str] = Field(default_factory=list)
    bcc: list[str] = Field(default_factory=list)
    subject: str | None = None
    message_id: str | None = None
    error: str | None = None
    smtp_code: int | None = None
    attempts: int = 0
    latency_ms: int | None = None
    source: SourcePosition | None = None
    connection: str | None = None
    empty_placeholders: list[str] = Field(default_factory=list)
    warnings_enabled: bool = False
    #: The offset of the rule's record on the rules topic: which version of the rule acted.
    rule_version: int | None = None

    @property
    def is_warning(self) -> bool:
        return self.status in (OutcomeStatus.FAILED, OutcomeStatus.CONFIG_ERROR)

    @property
    def is_final(self) -> bool:
        return self.status in (OutcomeStatus.SENT, OutcomeStatus.FAILED)


class AlertKind(StrEnum):
    FIRED = "fired"
    RESOLVED = "resolved"


class ErrorCount(BaseModel):
    model_config = ConfigDict(frozen=True)

    error: str
    count: int


class Alert(BaseModel):
    """A warning notification about one rule."""

    model_config = ConfigDict(frozen=True)

    created: datetime = Field(default_factory=utcnow)
    rule_id: str
    rule_name: str | None = None
    kind: AlertKind
    timeframe: str
    window_start: datetime
    window_end: datetime
    events: int
    warnings: int
    percent: float
    threshold_percent: float | None = None
    threshold_count: int | None = None
    reason: str
    top_errors: list[ErrorCount] = Field(default_factory=list)
    recipients: list[str] = Field(default_factory=list)
    email_sent: bool = False
