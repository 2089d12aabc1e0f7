"""Benchmark of ``eventmail aggregate``: how fast outcomes are aggregated, and how long a restart
takes to rebuild a full 6 h window.

* ``aggregate_per_s``: outcomes decoded and applied to the windows per second, in memory (one
  core, no broker): the aggregator's ceiling per partition owner.
* ``window_apply_per_s``: the same without decoding (window arithmetic and alert decisions only).
* ``rebuild_seconds`` / ``rebuild_per_s``: a real broker holds a 6 h window of outcomes at 100 per
  second (2,160,000; quick mode: 10 per second, 216,000) on 3 partitions for 100 rules; the time
  from starting an aggregator to ``/readyz`` (state rebuilt), and the rate that makes.

``python -m bench.aggregate [--quick]``. Needs a broker at ``KAFKA_BOOTSTRAP_SERVERS`` (default
``127.0.0.1:$KAFKA_PORT``, port 9092), as ``make bench`` starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.aggregator.config import StaticWarnings, WarningConfig
from consumer.aggregator.notify import AlertMailer, RetryPolicy
from consumer.aggregator.records import _outcome_schema, decode_observation
from consumer.aggregator.service import Aggregator
from consumer.aggregator.state import PartitionState
from consumer.aggregator.thresholds import Thresholds
from consumer.aggregator.windows import Timeframe
from consumer.avro import encode_schemaless
from consumer.devtools.produce import produce_every
from consumer.settings import Settings

RULES = [f"bench-rule-{i:03d}" for i in range(100)]
SIX_HOURS_S = 6 * 3600


def _provider(count: int) -> StaticWarnings:
    timeframes = list(Timeframe)
    return StaticWarnings(
        {
            rule: WarningConfig(rule, timeframes[i % 4], Thresholds(count=count), 30)
            for i, rule in enumerate(RULES)
        }
    )


def _record(i: int, created_ms: int) -> tuple[str, bytes]:
    rule = RULES[i % len(RULES)]
    failed = i % 7 == 0
    value = encode_schemaless(
        {
            "created": created_ms,
            "event_id": f"ev-{i}",
            "rule_id": rule,
            "platform": "lms",
            "trigger": "lead_sold",
            "status": "failed" if failed else "sent",
            "to": ["ops@example.com"],
            "subject": "Lead sold",
            "message_id": f"<{i}@bench>",
            "error": "550 mailbox unavailable" if failed else None,
            "smtp_code": 550 if failed else None,
            "attempts": 1,
            "latency_ms": 40,
            "connection": "esp:default",
            "warnings_enabled": True,
        },
        _outcome_schema(),
    )
    return rule, value


def in_memory(n: int) -> dict[str, float]:
    start_ms = 1_800_000_000_000
    records = [_record(i, start_ms + i * 10) for i in range(n)]  # 100 per second of event time
    state = PartitionState(_provider(count=10**9))
    t0 = time.perf_counter()
    for _, value in records:
        state.apply(decode_observation(value))
    decoded = time.perf_counter() - t0
    observations = [decode_observation(value) for _, value in records]
    state = PartitionState(_provider(count=10**9))
    t0 = time.perf_counter()
    for obs in observations:
        state.apply(obs)
    applied = time.perf_counter() - t0
    return {"aggregate_per_s": n / decoded, "window_apply_per_s": n / applied}


def _bootstrap() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}"


def rebuild(rate: int) -> dict[str, float]:
    bootstrap = _bootstrap()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    suffix = uuid.uuid4().hex[:8]
    outcomes, alerts = f"bench.aggregate.outcomes-{suffix}", f"bench.aggregate.alerts-{suffix}"
    futures = admin.create_topics([NewTopic(outcomes, 3, 1), NewTopic(alerts, 1, 1)], operation_timeout=30)
    for future in futures.values():
        future.result(timeout=30)
    try:
        total = rate * SIX_HOURS_S
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 50,
                "batch.size": 1_000_000,
                "compression.type": "lz4",
            }
        )
        first_ms = int((time.time() - SIX_HOURS_S + 60) * 1000)
        step_ms = 1000 / rate
        rows = (_record(i, first_ms + int(i * step_ms)) for i in range(total))
        produce_every(producer, outcomes, ((key, value, None) for key, value in rows))
        settings = Settings(
            kafka={"bootstrap_servers": bootstrap},
            group_id=f"bench-{suffix}",
            topics={"outcomes": outcomes, "alerts": alerts},
        )
        seconds = asyncio.run(_time_to_ready(settings))
        return {
            "rebuild_outcomes": float(total),
            "rebuild_seconds": seconds,
            "rebuild_per_s": total / seconds,
        }
    finally:
        admin.delete_topics([outcomes, alerts], operation_timeout=30)


async def _time_to_ready(settings: Settings) -> float:
    aggregator = Aggregator(
        settings, _provider(count=10**9), AlertMailer("bench@localhost", None, RetryPolicy())
    )
    stop = asyncio.Event()
    t0 = time.perf_counter()
    task = asyncio.create_task(aggregator.run(stop))
    try:
        while not (aggregator.ready and aggregator.parts):
            if task.done():
                task.result()
                raise RuntimeError("the aggregator stopped before it was ready")
            await asyncio.sleep(0.01)
        return time.perf_counter() - t0
    finally:
        stop.set()
        await task


def run(quick: bool) -> dict[str, float]:
    figures: dict[str, Any] = in_memory(50_000 if quick else 300_000)
    figures.update(rebuild(10 if quick else 100))
    return {k: round(float(v), 2) for k, v in figures.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.aggregate")
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(run(parser.parse_args().quick), indent=2))
