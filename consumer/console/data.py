"""What the console reads and writes, through the same readers and publisher as the CLI.

Rules come from a live :class:`RuleStore` (the rules topic followed as the services follow it);
outcomes, alerts and usage are read from their topics with :func:`read_since`; rules are published
with :func:`publish_rules` / :func:`publish_tombstones`, sealed as ``rules apply`` seals them and with
the author in the ``eventmail.author`` header. A broker that does not answer is a
:class:`ConsoleUnavailable` with a sentence to show, never a stack trace.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumer.aggregator.usage import UsageMeter, read_usage
from consumer.errors import CodecError, EventmailError
from consumer.events.codec import EventDecoder
from consumer.events.model import Event
from consumer.events.triggers import Platform
from consumer.kafka.fetching import FETCH_DEFAULTS
from consumer.outcomes.codec import decode_alert, decode_outcome
from consumer.outcomes.model import Alert, Outcome, OutcomeStatus
from consumer.rules.checks import RuleContext
from consumer.rules.history import RuleVersion, rule_history
from consumer.rules.matching import CompiledRule, RuleIndex
from consumer.rules.model import Rule
from consumer.rules.publish import publish_rules, publish_tombstones
from consumer.rules.secrets import seal_rule
from consumer.rules.store import RuleStore
from consumer.settings import Settings
from consumer.topic_reader import read_since

DAY_SECONDS = 86_400
COUNTS_TTL_SECONDS = 10.0


class ConsoleUnavailable(EventmailError):
    """Kafka (or a topic) cannot be read or written just now; the text says which."""


@dataclass(frozen=True)
class RuleCounts:
    sent: int = 0
    failed: int = 0


def _unavailable(what: str, exc: BaseException) -> ConsoleUnavailable:
    return ConsoleUnavailable(f"cannot {what}: {exc}")


class ConsoleData:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = RuleStore(settings, context=RuleContext(stored=True))
        self._counts: tuple[float, dict[str, RuleCounts]] | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self.store.start()

    def close(self) -> None:
        self.store.close()

    # --- rules ---------------------------------------------------------------------------------------

    @property
    def rules_ready(self) -> bool:
        return self.store.ready

    def rules(self) -> RuleIndex:
        if not self.store.ready:
            failure = getattr(self.store, "failure", None)
            raise ConsoleUnavailable(
                f"the rules topic {self.settings.topics.rules} is not read yet"
                + (f": {failure}" if failure else "")
            )
        return self.store.index

    def rule(self, rule_id: str) -> CompiledRule | None:
        return self.rules().lookup(rule_id)

    def save(self, rule: Rule, author: str) -> int:
        """Seal and publish ``rule``; the offset of its record."""
        sealed = seal_rule(rule, self.settings.secret_key)
        try:
            (written,) = publish_rules(self.settings, [sealed], author=author)
        except EventmailError:
            raise
        except KafkaException as exc:
            raise _unavailable(f"write to {self.settings.topics.rules}", exc) from None
        self._wait_for(rule.id, lambda found: found is not None and found.rule == sealed)
        return written.offset

    def delete(self, rule_id: str, author: str) -> None:
        publish_tombstones(self.settings, [rule_id], author=author)
        self._wait_for(rule_id, lambda found: found is None)

    def _wait_for(self, rule_id: str, done: Any, timeout: float = 10.0) -> None:
        """Until the live store has the change (so the next page shows it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done(self.store.index.lookup(rule_id)):
                return
            time.sleep(0.05)

    def history(self, rule_id: str) -> list[RuleVersion]:
        try:
            return rule_history(self.settings, rule_id)
        except (KafkaException, EventmailError) as exc:
            raise _unavailable(f"read the history of {rule_id}", exc) from None

    # --- outcomes ------------------------------------------------------------------------------------

    def outcomes(self, since_seconds: float, limit: int = 500) -> list[Outcome]:
        """Outcomes created in the last ``since_seconds``, newest first, at most ``limit``."""
        found = list(self._outcomes_since(since_seconds))
        found.sort(key=lambda o: o.created, reverse=True)
        return found[:limit]

    def _outcomes_since(self, since_seconds: float) -> Iterator[Outcome]:
        since_ms = int((time.time() - since_seconds) * 1000)
        try:
            for msg in read_since(self.settings.kafka_config(), self.settings.topics.outcomes, since_ms):
                value = msg.value()
                if value is None:
                    continue
                try:
                    yield decode_outcome(value)
                except CodecError:
                    continue
        except EventmailError as exc:
            raise _unavailable(f"read {self.settings.topics.outcomes}", exc) from None

    def outcome_at(self, partition: int, offset: int) -> Outcome | None:
        consumer = self._reader()
        try:
            consumer.assign([TopicPartition(self.settings.topics.outcomes, partition, offset)])
            for msg in consumer.consume(num_messages=1, timeout=5.0):
                if msg.error() is None and msg.offset() == offset and msg.value() is not None:
                    return decode_outcome(msg.value() or b"")
            return None
        except (KafkaException, CodecError) as exc:
            raise _unavailable("read the outcome", exc) from None
        finally:
            consumer.close()

    def counts(self) -> dict[str, RuleCounts]:
        """Sent and failed outcomes per rule over the last 24 h (cached for a few seconds)."""
        with self._lock:
            if self._counts is not None and time.monotonic() - self._counts[0] < COUNTS_TTL_SECONDS:
                return self._counts[1]
        sent: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        for outcome in self._outcomes_since(DAY_SECONDS):
            if outcome.status is OutcomeStatus.SENT:
                sent[outcome.rule_id] += 1
            elif outcome.status is OutcomeStatus.FAILED:
                failed[outcome.rule_id] += 1
        counts = {rule_id: RuleCounts(sent[rule_id], failed[rule_id]) for rule_id in set(sent) | set(failed)}
        with self._lock:
            self._counts = (time.monotonic(), counts)
        return counts

    # --- alerts, usage -------------------------------------------------------------------------------

    def alerts(self, since_seconds: float) -> list[Alert]:
        since_ms = int((time.time() - since_seconds) * 1000)
        out: list[Alert] = []
        try:
            for msg in read_since(self.settings.kafka_config(), self.settings.topics.alerts, since_ms):
                value = msg.value()
                if value is not None:
                    try:
                        out.append(decode_alert(value))
                    except CodecError:
                        continue
        except EventmailError as exc:
            raise _unavailable(f"read {self.settings.topics.alerts}", exc) from None
        return sorted(out, key=lambda a: a.created, reverse=True)

    def usage(self, since_seconds: float) -> UsageMeter:
        since_ms = int((time.time() - since_seconds) * 1000)
        try:
            return read_usage(self.settings.kafka_config(), self.settings.topics.outcomes, since_ms)
        except EventmailError as exc:
            raise _unavailable(f"read {self.settings.topics.outcomes}", exc) from None

    # --- sample events -------------------------------------------------------------------------------

    def recent_event(self, platform: Platform, trigger: str, look_back: int = 200) -> Event | None:
        """The newest event of ``trigger`` among the last records of the platform's topic, if any."""
        topic = self.settings.topics.lms if platform is Platform.LMS else self.settings.topics.call_logic
        consumer = self._reader()
        decoder = EventDecoder()
        best: Event | None = None
        try:
            metadata = consumer.list_topics(topic, timeout=5).topics.get(topic)
            if metadata is None or metadata.error is not None:
                return None
            assignment = []
            ends: dict[int, int] = {}
            for p in metadata.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
                if high > low:
                    ends[p] = high
                    assignment.append(TopicPartition(topic, p, max(low, high - look_back)))
            if not assignment:
                return None
            consumer.assign(assignment)
            deadline = time.monotonic() + 5
            while ends and time.monotonic() < deadline:
                for msg in consumer.consume(num_messages=500, timeout=0.5):
                    if msg.error() is not None:
                        continue
                    partition, offset = msg.partition() or 0, msg.offset() or 0
                    if offset >= ends.get(partition, 0) - 1:
                        ends.pop(partition, None)
                    try:
                        event = decoder.decode(platform, msg.value(), None)
                    except CodecError:
                        continue
                    if event.trigger == trigger and (best is None or event.occurred_at >= best.occurred_at):
                        best = event
            return best
        except KafkaException:
            return None
        finally:
            consumer.close()

    def _reader(self) -> Consumer:
        return Consumer(
            {
                **FETCH_DEFAULTS,
                **self.settings.kafka_config(),
                "group.id": "eventmail-console-reader",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
