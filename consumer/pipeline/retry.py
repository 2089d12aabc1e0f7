"""Non-blocking retries: a delivery that still fails transiently after its in-place retries is handed
to the retry topic with a due time, so one failing SMTP server never holds up mail for the others.

The retry record carries the event (JSON wire form), the rule id, the attempt count and the time of
the first failure; the delay grows exponentially (with jitter) up to the deployment's deadline,
after which the delivery becomes a ``failed`` outcome.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from consumer.errors import CodecError
from consumer.events.codec import build_event
from consumer.events.model import Event
from consumer.events.triggers import Platform
from consumer.outcomes.model import SourcePosition

BASE_DELAY_SECONDS = 5.0
MAX_DELAY_SECONDS = 600.0


@dataclass(frozen=True)
class RetryRecord:
    event: Event
    rule_id: str
    attempts: int
    due_at: datetime
    first_failed_at: datetime
    origin: SourcePosition
    last_error: str

    def encode(self) -> bytes:
        return json.dumps(
            {
                "platform": self.event.platform.value,
                "rule_id": self.rule_id,
                "event": self.event.model_dump(mode="json", exclude={"platform"}),
                "attempts": self.attempts,
                "due_at": self.due_at.isoformat(),
                "first_failed_at": self.first_failed_at.isoformat(),
                "origin": self.origin.model_dump(),
                "last_error": self.last_error,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, value: bytes | None) -> RetryRecord:
        try:
            raw: dict[str, Any] = json.loads(value or b"")
            return cls(
                event=build_event(Platform(raw["platform"]), raw["event"]),
                rule_id=str(raw["rule_id"]),
                attempts=int(raw["attempts"]),
                due_at=datetime.fromisoformat(raw["due_at"]),
                first_failed_at=datetime.fromisoformat(raw["first_failed_at"]),
                origin=SourcePosition.model_validate(raw["origin"]),
                last_error=str(raw.get("last_error", "")),
            )
        except CodecError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise CodecError(f"invalid retry record: {type(exc).__name__}: {exc}") from None


def next_delay(attempts: int, base: float = BASE_DELAY_SECONDS, cap: float = MAX_DELAY_SECONDS) -> float:
    """Exponential backoff with jitter in [50 %, 100 %] of the step: retries spread, never bunch.

    ``attempts`` is the number of attempts made so far (at least 1 once a delivery failed): the
    first retry waits about ``base``, each later one twice as long, up to ``cap``."""
    step = min(cap, base * (2 ** min(64, max(0, attempts - 1))))
    return float(step * (0.5 + random.random() / 2))


def schedule(
    event: Event,
    rule_id: str,
    attempts: int,
    origin: SourcePosition,
    error: str,
    first_failed_at: datetime | None,
    deadline_seconds: float,
    now: datetime | None = None,
    base_delay: float = BASE_DELAY_SECONDS,
    not_before: float = 0.0,
) -> RetryRecord | None:
    """The next retry, or None when the deadline would be passed (the delivery has failed).

    The delay grows with ``attempts`` (:func:`next_delay`) and is at least ``not_before`` seconds
    (e.g. the time an open circuit still refuses sends)."""
    now = now or datetime.now(UTC)
    first = first_failed_at or now
    delay = max(next_delay(attempts, base_delay), min(not_before, MAX_DELAY_SECONDS))
    due = now + timedelta(seconds=delay)
    if (due - first).total_seconds() > deadline_seconds:
        return None
    return RetryRecord(event, rule_id, attempts, due, first, origin, error)
