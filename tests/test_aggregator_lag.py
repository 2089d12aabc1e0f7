"""The aggregator's lag gauge is the age of the newest processed outcome *when scraped*: an
aggregator that stops processing shows a lag that keeps growing (so EventmailAggregatorBehind can
fire), not the value of its last batch. On the real broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY

from tests.test_aggregator_service import SENT, Harness, record, wait_for
from tests.test_aggregator_service import harness as harness
from tests.test_aggregator_service import smtp as smtp


def lag() -> float:
    value = REGISTRY.get_sample_value("eventmail_aggregator_lag_seconds")
    assert value is not None
    return value


async def test_the_lag_grows_while_nothing_is_processed(harness: Harness) -> None:
    await harness.start()
    created = datetime.now(UTC) - timedelta(seconds=120)
    harness.produce([record("r-lag", SENT, created)])
    await wait_for(lambda: lag() >= 120, "the lag of the processed outcome")
    first = lag()
    # No more outcomes: the gauge keeps ageing with the clock instead of staying at its last value.
    await wait_for(lambda: lag() >= first + 1.0, "the lag to grow with no outcome processed", timeout=10)
    harness.produce([record("r-lag", SENT, datetime.now(UTC))])
    await wait_for(lambda: lag() < 60, "the lag to drop once a fresh outcome is processed")
