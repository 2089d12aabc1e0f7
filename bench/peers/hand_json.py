"""The hand-written filter loop: how a platform engineer reads an event topic and picks the events a
rule wants, with nothing of eventmail.

A confluent-kafka consumer in a group of its own (``subscribe``, ``auto.offset.reset=earliest``,
librdkafka's default auto-commit every 5 s), ``consume(500)`` batches, ``json.loads`` of each value
and a dict lookup of the event's ``trigger`` (then of its ``product_id``) in the rules, written as a
plain dict ``{trigger: {product_id: [rule, ...]}}``.

What it guarantees: each event is read once while nothing fails. What it does not: no validation of
any field (an event with a wrong type, a missing id or a bad timestamp goes through as if it were
fine, where eventmail sends it to the DLQ with a reason); a record that is not JSON is skipped
silently (no DLQ); auto-commit stores offsets as records are handed out, so a crash can skip records
that were read but not looked at, and a restart re-reads up to 5 s of them; no scopes other than the
product, no filters (publishers, buyers, price, ...), no schema registry, no Avro, no metrics.

:func:`consume` is called by :mod:`bench.pipeline` in the benchmark's process (as its plain decoding
consumer is), on the same records as the filter path of ``eventmail run``; CPU is the process's.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer


@dataclass(frozen=True)
class Result:
    #: Records read from the first batch on (the first batch's records are not counted).
    counted: int
    seconds: float
    cpu_seconds: float
    matched: int

    @property
    def per_s(self) -> float:
        return self.counted / self.seconds

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_seconds / self.counted * 1e6


def consume(
    servers: str,
    topic: str,
    group: str,
    total: int,
    rules: dict[str, dict[str, list[Any]]],
    timeout: float = 300.0,
) -> Result:
    """Read ``total`` records of ``topic`` and look each event's trigger and product up in ``rules``;
    timed from the first batch (its records not counted) to the last record."""
    consumer = Consumer({"bootstrap.servers": servers, "group.id": group, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    seen = matched = first = 0
    started = cpu = 0.0
    deadline = time.monotonic() + timeout
    try:
        while seen < total and time.monotonic() < deadline:
            batch = consumer.consume(num_messages=500, timeout=0.05)
            for msg in batch:
                if msg.error() is not None:
                    continue
                seen += 1
                try:
                    event = json.loads(msg.value())
                except ValueError:
                    continue
                by_product = rules.get(event.get("trigger"))
                if by_product is not None:
                    matched += len(by_product.get(event.get("product_id"), ()))
            if batch and not started:
                started, cpu, first = time.perf_counter(), time.process_time(), seen
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    finally:
        consumer.close()
    if seen < total:
        raise RuntimeError(f"the hand-written consumer read {seen} of {total} records")
    return Result(total - first, elapsed, cpu, matched)
