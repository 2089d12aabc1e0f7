"""Builders of realistic events for tests, the demo and the benchmarks' checks."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from consumer.events.model import Event
from consumer.events.triggers import Platform

_counter = itertools.count(1)


def make_event(platform: Platform = Platform.LMS, trigger: str = "lead_sold", **fields: Any) -> Event:
    n = next(_counter)
    values: dict[str, Any] = {
        "platform": platform,
        "event_id": f"ev-{n}",
        "trigger": trigger,
        "occurred_at": datetime(2026, 11, 1, 12, 0, n % 60, 123000, tzinfo=UTC),
        "product_id": "p-1",
        "campaign_id": "c-7",
        "lead_id": f"lead-{n}",
        "publisher_id": "pub-1",
        "channel_id": "ch-1",
        "source_id": "src-1",
        "buyer_id": "buyer-1",
        "pingtree_id": "pt-1",
        "method": "POST",
        "tracking_strategy": "direct_sold",
        "price": 12.5,
        "currency": "USD",
        "data": {"first_name": "Ada", "state": "CA"},
    }
    if platform is Platform.CALL_LOGIC:
        values["call_tracking_pool_id"] = "pool-1"
    values.update(fields)
    return Event(**values)
