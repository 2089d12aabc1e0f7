"""Replaying history through rules before they are published (``eventmail rules backtest``).

Reads the event topics from ``offsets_for_times(since)`` to their end (records after ``until`` are
skipped), with no consumer group, no commits and no SMTP: each event is decoded as the consumer
decodes it, matched against the given rules as written (whether or not they are on the rules topic)
and, for every match, the mail is built by the function the consumer sends with. Per rule: events
read, matched, mails it would have sent, the first few subjects, and the failures to build a mail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumer.errors import CodecError, EventmailError
from consumer.events.codec import EventDecoder
from consumer.events.registry import RegistryUnavailableError, registry_lookup
from consumer.events.triggers import Platform
from consumer.mail.compose import compose
from consumer.mail.errors import MessageError, RenderError
from consumer.rules.matching import RuleIndex, compile_rule
from consumer.rules.model import Rule
from consumer.settings import Settings
from consumer.topic_reader import read_since

SAMPLES = 5


@dataclass
class RuleBacktest:
    rule_id: str
    platform: Platform
    events_read: int = 0
    matched: int = 0
    mails: int = 0
    failures: int = 0
    subjects: list[str] = field(default_factory=list)
    failure_samples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "platform": self.platform.value,
            "events_read": self.events_read,
            "matched": self.matched,
            "mails": self.mails,
            "failures": self.failures,
            "subjects": self.subjects,
            "failure_samples": self.failure_samples,
        }


@dataclass
class BacktestReport:
    #: Events read per platform, and records that are not valid events (the consumer dead-letters them).
    events: dict[Platform, int] = field(default_factory=dict)
    undecodable: dict[Platform, int] = field(default_factory=dict)
    rules: dict[str, RuleBacktest] = field(default_factory=dict)


def backtest(
    settings: Settings,
    rules: Sequence[Rule],
    since_ms: int,
    until_ms: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> BacktestReport:
    """Run ``rules`` over the events of [since, until]; ``progress`` gets the count of records read."""
    index = RuleIndex(compile_rule(rule) for rule in rules)
    report = BacktestReport(rules={rule.id: RuleBacktest(rule.id, rule.platform) for rule in rules})
    decoder = EventDecoder(settings.pipeline.input_format, registry_lookup(settings.schema_registry))
    topics = {Platform.LMS: settings.topics.lms, Platform.CALL_LOGIC: settings.topics.call_logic}
    for platform in sorted({rule.platform for rule in rules}, key=lambda p: p.value):
        read = bad = 0
        for msg in read_since(settings.kafka_config(), topics[platform], since_ms):
            stamp = msg.timestamp()[1]
            if until_ms is not None and stamp > until_ms:
                continue
            read += 1
            if progress is not None:
                progress(1)
            headers = msg.headers()
            pairs = list(headers.items()) if isinstance(headers, dict) else headers
            try:
                event = decoder.decode(platform, msg.value(), pairs)
            except RegistryUnavailableError as exc:
                raise EventmailError(f"backtest stopped: {exc}") from None
            except CodecError:
                bad += 1
                continue
            for matched in index.match(event):
                _mail(report.rules[matched.rule_id], event, matched)
        report.events[platform], report.undecodable[platform] = read, bad
        for result in report.rules.values():
            if result.platform is platform:
                result.events_read = read - bad
    return report


def _mail(result: RuleBacktest, event: Any, rule: Any) -> None:
    result.matched += 1
    try:
        _, built = compose(event, rule)
    except (RenderError, MessageError) as exc:
        result.failures += 1
        if len(result.failure_samples) < SAMPLES:
            result.failure_samples.append(f"event {event.event_id}: {exc}")
        return
    result.mails += 1
    if len(result.subjects) < SAMPLES:
        result.subjects.append(built.subject)
