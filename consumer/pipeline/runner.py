"""Start-up and shutdown of ``eventmail run``.

Start: settings are valid -> HTTP endpoint -> rule store reads the rules topic to its end ->
producers -> the source thread joins the group. Stop (SIGTERM/SIGINT): stop fetching, drain
in-flight work within the grace period, flush outcomes, commit, leave the group, exit 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

from consumer.events.codec import EventDecoder
from consumer.events.registry import registry_lookup
from consumer.kafka.acls import Component, acls_for
from consumer.kafka.gate import PermissionGate
from consumer.observability.http import HealthServer
from consumer.pipeline.deliver import MailDeliverer
from consumer.pipeline.handoff import RetryHandoff
from consumer.pipeline.producer import AsyncProducer
from consumer.pipeline.records import RecordProcessor
from consumer.pipeline.service import Pipeline, install_signal_handlers, set_ready
from consumer.pipeline.source import SourceConsumer
from consumer.rules.store import RuleStore
from consumer.settings import Settings

log = logging.getLogger(__name__)
DEFAULT_PORT = 9400
#: Allocations (net) between collections of the youngest generation (CPython's default: 700).
GC_YOUNG_THRESHOLD = 10_000


def outcome_producer_config(settings: Settings) -> dict[str, Any]:
    """The outcome producer's librdkafka settings: the deployment's, lingering as configured (the
    time from the SMTP server's acceptance to the outcome reaching the broker is the window in which
    a crash sends a mail twice; docs/delivery.md)."""
    return settings.kafka_config(**{"linger.ms": settings.pipeline.outcome_linger_ms})


async def run_service(settings: Settings, stop: asyncio.Event | None = None) -> int:
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    install_signal_handlers(loop, stop)
    fatal: list[str] = []

    def on_fatal(message: str) -> None:
        fatal.append(message)
        loop.call_soon_threadsafe(stop.set)

    producer = AsyncProducer(outcome_producer_config(settings), name="outcomes")
    handoff = _HandoffAfterGate(
        settings.kafka_config(), settings.group_id, settings.pipeline.handoff_transaction_timeout_ms
    )
    deliverer = MailDeliverer(settings)
    store = RuleStore(settings, on_error=lambda *args: _config_error(loop, processor, *args))
    processor = RecordProcessor(
        settings,
        EventDecoder(settings.pipeline.input_format, registry_lookup(settings.schema_registry)),
        lambda: store.index,
        deliverer,
        producer,
        handoff,
        lambda tp, offset: pipeline.already_delivered(tp, offset),
    )
    pipeline = Pipeline(settings, loop, processor)
    source = SourceConsumer(
        settings.kafka_config(**{"group.id": settings.group_id}),
        [settings.topics.lms, settings.topics.call_logic],
        settings.topics.retry,
        pipeline,
        max_pending=settings.pipeline.max_in_flight,
        max_retry_pending=settings.pipeline.max_retry_pending,
        commit_interval=settings.pipeline.commit_interval_seconds,
        drain_timeout=settings.pipeline.drain_timeout_seconds,
        on_fatal=on_fatal,
        max_uncommitted=settings.pipeline.max_uncommitted_per_partition,
        group_stuck_after=settings.kafka.group_stuck_seconds,
    )
    beat = {"loop": time.monotonic()}
    gate = PermissionGate(settings.kafka_config(), acls_for(Component.RUN, settings), "run")

    def healthy() -> tuple[bool, dict[str, object]]:
        loop_ok = time.monotonic() - beat["loop"] < 30
        source_ok = source.alive()
        rules_ok = store.stopped is None  # a store that stopped follows no rule change: restart
        details = {"loop": loop_ok, "source": source_ok, "rules": rules_ok, **source.group.details()}
        return loop_ok and source_ok and rules_ok and not fatal, details

    def ready() -> tuple[bool, dict[str, object]]:
        details: dict[str, object] = {
            "rules_loaded": store.ready,
            "assignment_received": source.assignment_received.is_set(),
            "broker_reachable": source.broker_reachable,
            **gate.details(),
        }
        ok = all(bool(v) for v in details.values()) and not fatal
        set_ready("run", ok)
        return ok, details

    http = HealthServer(settings.http.host, _port(settings), healthy, ready).start()
    set_ready("run", False)  # the series exists from the start, 0 until ready
    log.info("eventmail run starting", extra={"http_port": http.port, "group_id": settings.group_id})
    try:
        # No event is taken before the broker says every ACL of `run` is held (readiness says which lack).
        if await gate.wait(stop):
            handoff.start()
            store.start()
        while not stop.is_set() and not await asyncio.to_thread(store.wait_ready, 0.5):
            pass  # the rules topic is read to its end before any event is taken
        if not stop.is_set():
            source.start()
            _tune_gc()
        while not stop.is_set():
            beat["loop"] = time.monotonic()
            if pipeline.fatal:
                fatal.append(pipeline.fatal)
                break
            ready()  # eventmail_ready follows the state even when nothing asks /readyz
            await asyncio.sleep(0.2)
    finally:
        log.info("stopping: draining in-flight work", extra={"in_flight": pipeline.in_flight()})
        grace = settings.pipeline.drain_timeout_seconds
        await asyncio.to_thread(source.stop, 10.0)
        await asyncio.to_thread(source.close, grace)
        await _cancel_leftovers(pipeline)
        await asyncio.to_thread(producer.close, 30.0)
        handoff.close()
        await deliverer.close()
        store.close()
        http.stop()
        set_ready("run", False)
    if fatal:
        log.error("eventmail run stopped on a fatal error", extra={"error": fatal[0]})
        return 1
    log.info("eventmail run stopped cleanly")
    return 0


class _HandoffAfterGate(RetryHandoff):
    """The hand-off producer, made only once the permission check passed: it claims its
    transactional id at once, and a claim refused for a missing ACL leaves a librdkafka producer
    fatally broken for good (the service would run on and fail its first retry, or its stop)."""

    def __init__(self, config: dict[str, Any], group_id: str, transaction_timeout_ms: int) -> None:
        self._args = (config, group_id, transaction_timeout_ms)
        self._started = False

    def start(self) -> None:
        config, group_id, timeout_ms = self._args
        RetryHandoff.__init__(self, config, group_id, transaction_timeout_ms=timeout_ms)
        self._started = True

    def close(self) -> None:
        if self._started:
            super().close()


async def _cancel_leftovers(pipeline: Pipeline) -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    _ = pipeline


def _config_error(loop: asyncio.AbstractEventLoop, processor: RecordProcessor, *args: Any) -> None:
    """The rule store found an invalid record: write a config_error outcome (from the store's thread)."""
    from consumer.outcomes.model import Outcome, OutcomeStatus, SourcePosition

    rule_id, message, topic, partition, offset = args
    outcome = Outcome(
        rule_id=rule_id,
        status=OutcomeStatus.CONFIG_ERROR,
        error=message,
        source=SourcePosition(topic=topic, partition=partition, offset=offset),
    )
    asyncio.run_coroutine_threadsafe(processor.write_outcome(outcome), loop)


def _tune_gc() -> None:
    """Once started: leave the start-up objects (modules, settings, compiled rules) out of garbage
    collections, and collect the young generation less often. A mail allocates thousands of short-lived
    objects (rendering, parsing, asyncio), and with the defaults the collections took a third of a
    mail's CPU time, with full collections of 100-200 ms under load."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _port(settings: Settings) -> int:
    return settings.http.port if settings.http.port is not None else DEFAULT_PORT
