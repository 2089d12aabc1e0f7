"""Platforms and their triggers, as named in the contract (snake_case of the product's trigger names).

This is the one list of triggers; rules validation, placeholders, schemas and the CLI all read it.
"""

from __future__ import annotations

from enum import StrEnum


class Platform(StrEnum):
    LMS = "lms"
    CALL_LOGIC = "call_logic"


LMS_TRIGGERS: tuple[str, ...] = (
    "lead_sold",
    "lead_rejected",
    "campaign_rejected",
    "publisher_earning_received",
    "campaign_sold",
    "revenue_ping_back",
    "lead_offer_received",
)

CALL_LOGIC_TRIGGERS: tuple[str, ...] = (
    "lead_sold",
    "lead_rejected",
    "campaign_rejected",
    "campaign_accepted",
    "campaign_sold",
    "publisher_earning_received",
    "buyer_response",
    "disposition_updated",
    "publisher_earning_adjusted",
    "lead_return",
    "lead_partial_return",
    "duration_to_sell_reached",
    "amd",
    "revenue_postback",
)

_TRIGGERS: dict[Platform, frozenset[str]] = {
    Platform.LMS: frozenset(LMS_TRIGGERS),
    Platform.CALL_LOGIC: frozenset(CALL_LOGIC_TRIGGERS),
}

#: Triggers for which the "price range inclusive" restriction is allowed.
PRICE_RANGE_TRIGGERS: frozenset[str] = frozenset({"lead_sold", "campaign_sold"})


def triggers_for(platform: Platform | str) -> tuple[str, ...]:
    """The triggers of one platform, in the product's order."""
    return LMS_TRIGGERS if Platform(platform) is Platform.LMS else CALL_LOGIC_TRIGGERS


def is_trigger(platform: Platform | str, trigger: str) -> bool:
    return trigger in _TRIGGERS[Platform(platform)]
