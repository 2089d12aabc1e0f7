"""Pure sliding-window arithmetic for warning alerts: bucketed counts over a trailing timeframe.

Time is event time in epoch milliseconds (an outcome's ``created``). Each timeframe has a bucket
size: 10 s for ``5m`` (30 buckets), 1 min for ``1h``, ``3h`` and ``6h`` (60, 180, 360 buckets).
A window whose clock is ``now`` covers the ``n`` buckets ending with the bucket that holds ``now``:
event times in ``[(K - n + 1) * size, (K + 1) * size)`` with ``K = now // size``. So the window is
the timeframe, aligned to bucket boundaries, and is never more than one bucket longer than it.

The clock only moves forward. An observation older than the window (its bucket already expired)
is dropped and reported; one newer than the clock moves the clock. Buckets are stored sparsely
(only buckets that saw something), with running totals, so adding is O(1) and evaluating is O(1).

This module never reads a clock, a topic or a setting: every answer depends only on its inputs,
which is what makes replays give the same answers and the property tests meaningful.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

#: Distinct error texts kept per bucket; more are counted under :data:`OTHER_ERRORS`.
MAX_ERRORS_PER_BUCKET = 32
#: Longest error text kept (longer ones are cut, so the state stays small).
MAX_ERROR_LENGTH = 200
OTHER_ERRORS = "(other errors)"


class Timeframe(StrEnum):
    M5 = "5m"
    H1 = "1h"
    H3 = "3h"
    H6 = "6h"

    @property
    def seconds(self) -> int:
        return _SECONDS[self]

    @property
    def bucket_seconds(self) -> int:
        return 10 if self is Timeframe.M5 else 60

    @property
    def spec(self) -> WindowSpec:
        return WindowSpec(span_ms=self.seconds * 1000, bucket_ms=self.bucket_seconds * 1000)


_SECONDS = {Timeframe.M5: 300, Timeframe.H1: 3600, Timeframe.H3: 3 * 3600, Timeframe.H6: 6 * 3600}
#: The longest timeframe: how far back state is rebuilt after a restart.
LARGEST_TIMEFRAME = Timeframe.H6


@dataclass(frozen=True)
class WindowSpec:
    """A trailing window of ``span_ms`` cut in buckets of ``bucket_ms`` (which must divide it)."""

    span_ms: int
    bucket_ms: int

    def __post_init__(self) -> None:
        if self.bucket_ms <= 0 or self.span_ms <= 0 or self.span_ms % self.bucket_ms:
            raise ValueError("bucket_ms must be positive and divide span_ms")

    @property
    def buckets(self) -> int:
        return self.span_ms // self.bucket_ms

    def bucket_of(self, t_ms: int) -> int:
        return t_ms // self.bucket_ms

    def first_bucket(self, now_ms: int) -> int:
        """The oldest bucket index still inside the window at ``now_ms``."""
        return self.bucket_of(now_ms) - self.buckets + 1

    def bounds(self, now_ms: int) -> tuple[int, int]:
        """``[start, end)`` in ms of the window at ``now_ms``."""
        last = self.bucket_of(now_ms)
        return (last - self.buckets + 1) * self.bucket_ms, (last + 1) * self.bucket_ms

    def contains(self, t_ms: int, now_ms: int) -> bool:
        start, end = self.bounds(now_ms)
        return start <= t_ms < end


class Bucket:
    __slots__ = ("errors", "events", "warnings")

    def __init__(self) -> None:
        self.events = 0
        self.warnings = 0
        self.errors: dict[str, int] | None = None

    def add_error(self, error: str, count: int = 1) -> None:
        if self.errors is None:
            self.errors = {}
        text = error[:MAX_ERROR_LENGTH]
        if text not in self.errors and len(self.errors) >= MAX_ERRORS_PER_BUCKET:
            text = OTHER_ERRORS
        self.errors[text] = self.errors.get(text, 0) + count


class SlidingWindow:
    """Counts of events and warnings (with their error texts) over a trailing window."""

    __slots__ = ("_buckets", "_head", "_oldest", "events", "spec", "warnings")

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self._buckets: dict[int, Bucket] = {}
        self._head: int | None = None  # bucket index of the clock
        self._oldest: int | None = None  # no bucket is older than this
        self.events = 0
        self.warnings = 0

    @property
    def clock_bucket(self) -> int | None:
        return self._head

    def __len__(self) -> int:
        """Buckets held."""
        return len(self._buckets)

    def advance(self, now_ms: int) -> int:
        """Move the clock to ``now_ms`` (never back); returns how many buckets expired."""
        target = self.spec.bucket_of(now_ms)
        if self._head is not None and target <= self._head:
            return 0
        self._head = target
        cutoff = target - self.spec.buckets + 1
        if self._oldest is None or self._oldest >= cutoff:
            return 0
        if cutoff - self._oldest <= len(self._buckets):  # the usual case: a few buckets to look at
            expired = [k for k in range(self._oldest, cutoff) if k in self._buckets]
        else:
            expired = [k for k in self._buckets if k < cutoff]
        for k in expired:
            bucket = self._buckets.pop(k)
            self.events -= bucket.events
            self.warnings -= bucket.warnings
        self._oldest = cutoff if self._buckets else None
        return len(expired)

    def add(self, t_ms: int, *, event: bool, warning: bool, error: str | None = None) -> bool:
        """Count one observation at ``t_ms``; False (and nothing counted) when it is older than the window."""
        self.advance(t_ms)
        if not event and not warning:
            return True
        index = self.spec.bucket_of(t_ms)
        assert self._head is not None
        if index <= self._head - self.spec.buckets:
            return False
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = Bucket()
            if self._oldest is None or index < self._oldest:
                self._oldest = index
        if event:
            bucket.events += 1
            self.events += 1
        if warning:
            bucket.warnings += 1
            self.warnings += 1
            if error is not None:
                bucket.add_error(error)
        return True

    def items(self) -> Iterator[tuple[int, Bucket]]:
        """(bucket index, bucket) of every bucket held, oldest first."""
        for index in sorted(self._buckets):
            yield index, self._buckets[index]

    def merge(self, t_ms: int, other: Bucket) -> bool:
        """Add the counts of ``other`` at ``t_ms`` (as :meth:`add` would, one by one)."""
        self.advance(t_ms)
        index = self.spec.bucket_of(t_ms)
        assert self._head is not None
        if index <= self._head - self.spec.buckets:
            return False
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = Bucket()
            if self._oldest is None or index < self._oldest:
                self._oldest = index
        bucket.events += other.events
        bucket.warnings += other.warnings
        self.events += other.events
        self.warnings += other.warnings
        for error, count in (other.errors or {}).items():
            bucket.add_error(error, count)
        return True

    def top_errors(self, limit: int = 5) -> list[tuple[str, int]]:
        """The most frequent error texts in the window, most frequent first (ties by text)."""
        total: Counter[str] = Counter()
        for bucket in self._buckets.values():
            if bucket.errors:
                total.update(bucket.errors)
        return sorted(total.items(), key=lambda item: (-item[1], item[0]))[:limit]

    def bounds(self) -> tuple[int, int] | None:
        """``[start, end)`` in ms of the window at its clock, or None before anything was seen."""
        if self._head is None:
            return None
        return self.spec.bounds(self._head * self.spec.bucket_ms)


def percent(events: int, warnings: int) -> float:
    """warnings / events * 100, or 0 when there were no events (the alert record's definition)."""
    return warnings * 100.0 / events if events else 0.0
