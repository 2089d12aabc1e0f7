"""The event model: one LMS or Call Logic event, whatever encoding it arrived in.

The platform is not on the wire: it is known from the topic the record came from. Validation errors
name the field; a trigger that does not belong to the platform is invalid (the record goes to the DLQ).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from consumer.events.triggers import Platform, is_trigger

#: Optional string fields shared by both platforms, in schema order.
ID_FIELDS: tuple[str, ...] = (
    "product_id",
    "campaign_id",
    "lead_id",
    "publisher_id",
    "channel_id",
    "source_id",
    "buyer_id",
    "pingtree_id",
)

MAX_FIELD_CHARS = 4096
MAX_DATA_ENTRIES = 512


class Event(BaseModel):
    """One platform event. ``data`` holds every other field the platform sends."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_max_length=MAX_FIELD_CHARS)

    platform: Platform
    event_id: str = Field(min_length=1, max_length=256)
    trigger: str = Field(min_length=1, max_length=64)
    occurred_at: datetime
    product_id: str | None = None
    campaign_id: str | None = None
    lead_id: str | None = None
    publisher_id: str | None = None
    channel_id: str | None = None
    source_id: str | None = None
    buyer_id: str | None = None
    pingtree_id: str | None = None
    call_tracking_pool_id: str | None = None
    method: Literal["POST", "FORM"] | None = None
    tracking_strategy: Literal["direct_sold", "pingback"] | None = None
    price: float | None = Field(default=None, allow_inf_nan=False)
    currency: str = Field(default="USD", min_length=1, max_length=8)
    data: dict[str, str] = Field(default_factory=dict, max_length=MAX_DATA_ENTRIES)

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

    @field_validator("currency", mode="before")
    @classmethod
    def _default_currency(cls, value: Any) -> Any:
        return "USD" if value is None else value

    @model_validator(mode="after")
    def _platform_rules(self) -> Event:
        if not is_trigger(self.platform, self.trigger):
            raise ValueError(f"trigger {self.trigger!r} is not a {self.platform.value} trigger")
        if self.platform is Platform.LMS and self.call_tracking_pool_id is not None:
            raise ValueError("call_tracking_pool_id is only for call_logic events")
        return self

    def wire_dict(self) -> dict[str, Any]:
        """The event as its wire fields (no platform), for encoding."""
        out = self.model_dump(exclude={"platform"})
        if self.platform is Platform.LMS:
            out.pop("call_tracking_pool_id", None)
        return out
