"""What one delivery attempt produced, before it becomes an outcome record."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Verdict(StrEnum):
    SENT = "sent"
    FAILED = "failed"  # permanent: a 5xx reply, an invalid address, a template error ...
    TRANSIENT = "transient"  # 4xx, a dropped connection, a timeout: worth retrying later


@dataclass
class DeliveryResult:
    verdict: Verdict
    attempts: int
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    subject: str | None = None
    message_id: str | None = None
    error: str | None = None
    smtp_code: int | None = None
    connection: str | None = None
    empty_placeholders: list[str] = field(default_factory=list)
    #: A short, bounded reason class for metrics labels (e.g. "smtp_4xx", "timeout", "render").
    reason: str = ""
    #: The earliest sensible next attempt, in seconds (an open circuit's remaining time), if known.
    retry_after: float | None = None
