"""``warnings.min_events``: a percent threshold is not decided on too few events (one refused mail of
one event is 100 %), while the count threshold still is; on the real broker and SMTP server."""

from __future__ import annotations

from datetime import timedelta

import pytest

from consumer.aggregator.config import from_rule
from consumer.aggregator.thresholds import Thresholds
from consumer.errors import RuleError
from consumer.rules.validation import validate_rule
from tests.support.smtp import SMTPTestServer
from tests.test_aggregator_service import FAILED, SENT, Harness, base_time, record, wait_for
from tests.test_aggregator_service import harness as harness
from tests.test_aggregator_service import smtp as smtp
from tests.test_rules_model import CONTEXT, rule_doc


def warned_rule(rule_id: str, **warnings: object) -> dict[str, object]:
    return rule_doc(
        id=rule_id, warnings={"enabled": True, "timeframe": "5m", "emails": ["ops@example.com"], **warnings}
    )


def test_percent_waits_for_min_events_and_count_does_not() -> None:
    waiting = Thresholds(percent=50, min_events=5)
    assert waiting.breach(1, 1) is None  # 100 % of 1 event: not decided yet
    assert waiting.breach(4, 4) is None
    assert waiting.breach(5, 3) == "3 warnings are 60.0% of 5 events, over 50%"
    both = Thresholds(percent=50, count=1, min_events=5)
    assert both.breach(2, 2) == "2 warnings, over the limit of 1"
    assert Thresholds(percent=50).breach(1, 1) == "1 warnings are 100.0% of 1 events, over 50%"


def test_min_events_is_part_of_the_rule_and_validated() -> None:
    rule = validate_rule(warned_rule("r-min", percent=50, min_events=5), CONTEXT)
    config = from_rule(rule)
    assert config is not None
    assert config.thresholds == Thresholds(percent=50, count=None, min_events=5)
    with pytest.raises(RuleError, match=r"warnings\.min_events: Input should be greater than or equal to 1"):
        validate_rule(warned_rule("r-bad", percent=50, min_events=0), CONTEXT)


async def test_no_alert_below_min_events_then_one_above(
    harness: Harness,
    smtp: tuple[SMTPTestServer, int],
) -> None:
    recorder = smtp[0]
    config = from_rule(validate_rule(warned_rule("r-min", percent=50, min_events=4), CONTEXT))
    assert config is not None
    harness.provider.configs["r-min"] = config
    await harness.start()
    t0 = base_time()
    harness.produce([record("r-min", FAILED, t0)])  # 100 % of 1 event
    harness.produce([record("r-min", SENT, t0 + timedelta(seconds=1))])
    harness.produce([record("r-min", FAILED, t0 + timedelta(seconds=2))])  # 2 of 3
    await harness.settled()
    assert recorder.messages == []
    harness.produce([record("r-min", FAILED, t0 + timedelta(seconds=3))])  # 3 of 4: decided, over 50 %
    await wait_for(lambda: len(recorder.messages) == 1, "the alert once 4 events are in the window")
    await harness.settled()
    (alert,) = harness.alert_records()
    assert (alert.events, alert.warnings) == (4, 3)
