"""The versions of one rule still on the rules topic (``eventmail rules history``).

Every record of the rule's key, oldest first: its offset and time, the author that ``rules apply`` /
``rules delete`` recorded in the ``eventmail.author`` header, and what changed from the version before
(field by field, passwords never shown). The rules topic is compacted: older versions of a rule may
have been removed, so the first version shown is the oldest still there, not necessarily the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from consumer.rules.checks import RuleContext
from consumer.rules.codec import decode_rule
from consumer.rules.diff import FieldChange, rule_changes
from consumer.rules.model import Rule
from consumer.rules.publish import AUTHOR_HEADER
from consumer.rules.validation import RuleValidationError
from consumer.settings import Settings
from consumer.topic_reader import read_since


@dataclass(frozen=True)
class RuleVersion:
    partition: int
    offset: int
    timestamp_ms: int | None
    author: str | None
    #: A tombstone: the rule was deleted.
    deleted: bool = False
    #: The record could not be read as a valid rule (the service kept the previous version).
    invalid: str | None = None
    changes: tuple[FieldChange, ...] = field(default=())
    #: No version of this rule before it on the topic (the rule was added, or re-added after a delete).
    first: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "author": self.author,
            "deleted": self.deleted,
            "invalid": self.invalid,
            "added": self.first and not self.deleted and self.invalid is None,
            "changes": [change.as_dict() for change in self.changes],
        }


Headers = list[tuple[str, str | bytes | None]] | dict[str, str | bytes | None] | None


def author_of(headers: Headers) -> str | None:
    pairs = headers.items() if isinstance(headers, dict) else headers or ()
    for key, value in pairs:
        if key == AUTHOR_HEADER and value is not None:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return None


def rule_history(settings: Settings, rule_id: str) -> list[RuleVersion]:
    """Every version of ``rule_id`` on the rules topic, oldest first."""
    key = rule_id.encode()
    context = RuleContext(stored=True)
    versions: list[RuleVersion] = []
    previous: Rule | None = None
    for msg in read_since(settings.kafka_config(), settings.topics.rules, None):
        if msg.key() != key:
            continue
        timestamp = msg.timestamp()[1]
        where: dict[str, Any] = {
            "partition": msg.partition() or 0,
            "offset": msg.offset() or 0,
            "timestamp_ms": timestamp if timestamp > 0 else None,
            "author": author_of(msg.headers()),
        }
        value = msg.value()
        if value is None:
            versions.append(RuleVersion(**where, deleted=True))
            previous = None
            continue
        try:
            rule = decode_rule(key, value, context)
        except RuleValidationError as exc:
            versions.append(RuleVersion(**where, invalid="; ".join(exc.lines())))
            continue
        if previous is None:
            versions.append(RuleVersion(**where, first=True))
        else:
            versions.append(
                RuleVersion(**where, changes=tuple(rule_changes(previous, rule, settings.secret_key)))
            )
        previous = rule
    return versions
