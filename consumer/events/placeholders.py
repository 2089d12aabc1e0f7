"""What a rule's subject and body may use: ``{{ field }}`` for the event's fields and
``{{ data.KEY }}`` for any entry of the event's ``data`` map (open-ended, so any KEY is accepted).
``eventmail placeholders`` prints this table; rule validation rejects anything else.
"""

from __future__ import annotations

from consumer.events.triggers import Platform

_COMMON: dict[str, str] = {
    "event_id": "Unique id of the event",
    "platform": "lms or call_logic",
    "trigger": "The trigger that fired (e.g. lead_sold)",
    "occurred_at": "When the event happened (UTC, ISO 8601)",
    "product_id": "The product",
    "campaign_id": "The campaign",
    "lead_id": "The lead",
    "publisher_id": "The publisher",
    "channel_id": "The publisher's channel",
    "source_id": "The traffic source",
    "buyer_id": "The buyer",
    "pingtree_id": "The ping tree",
    "method": "POST or FORM",
    "tracking_strategy": "direct_sold or pingback",
    "price": "Price of the lead or call",
    "currency": "Currency of the price (USD when absent)",
    "rule_id": "The rule that sent the mail",
    "rule_name": "The rule's name",
}
_CALL_LOGIC_ONLY: dict[str, str] = {"call_tracking_pool_id": "The call tracking pool"}

DATA_PREFIX = "data."


def placeholders_for(platform: Platform | str) -> dict[str, str]:
    """name -> description of every top-level placeholder of the platform."""
    if Platform(platform) is Platform.CALL_LOGIC:
        return {**_COMMON, **_CALL_LOGIC_ONLY}
    return dict(_COMMON)


def is_placeholder(platform: Platform | str, name: str) -> bool:
    if name.startswith(DATA_PREFIX):
        return len(name) > len(DATA_PREFIX)
    return name in placeholders_for(platform)
