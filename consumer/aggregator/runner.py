"""Start-up and shutdown of ``eventmail aggregate``.

Start: HTTP endpoint (``/metrics``, ``/healthz``, ``/readyz``) -> the rule store reads the rules
topic to its end -> the aggregator joins its consumer group, reads the alerts topic back and rebuilds
the windows of its partitions. ``/readyz`` answers 200 once all of that is done.
Stop (SIGTERM/SIGINT): stop fetching, finish alerts in flight (bounded by
``EVENTMAIL_PIPELINE__DRAIN_TIMEOUT_SECONDS``), commit, leave the group, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from consumer.aggregator.config import WarningsProvider, rule_store_provider
from consumer.aggregator.notify import AlertMailer, RetryPolicy
from consumer.aggregator.service import Aggregator, aggregator_group
from consumer.aggregator.smtp import alert_sender
from consumer.errors import EventmailError
from consumer.kafka.acls import Component, acls_for
from consumer.kafka.gate import PermissionGate
from consumer.mail import is_transient
from consumer.observability.http import HealthServer
from consumer.observability.metrics import READY
from consumer.settings import Settings

log = logging.getLogger(__name__)
DEFAULT_PORT = 9401
#: Rounds of sending one alert email (each with the transport's own in-place retries).
ALERT_SEND_ROUNDS = 3
SERVICE = "aggregate"


def mailer_for(settings: Settings) -> AlertMailer:
    # The transport already retries in place; these are further rounds, for transient failures only.
    policy = RetryPolicy(
        attempts=ALERT_SEND_ROUNDS,
        base_seconds=settings.smtp.retry_base_seconds,
        max_seconds=settings.smtp.retry_max_seconds,
    )
    sender = alert_sender(settings)
    if sender is None:
        log.error(
            "the alert connection is not one of EVENTMAIL_ESP_CONNECTIONS: alerts are recorded, not emailed",
            extra={"connection": settings.alerts.connection},
        )
    return AlertMailer(settings.alerts.sender, sender, policy, retryable=is_transient)


async def run_aggregator(
    settings: Settings,
    stop: asyncio.Event | None = None,
    provider: WarningsProvider | None = None,
) -> int:
    """Run until SIGTERM/SIGINT (or ``stop``); the process exit code."""
    from consumer.rules.checks import RuleContext
    from consumer.rules.store import RuleStore

    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Passwords and connection names of rules are the sender's concern, not the aggregator's.
    store = RuleStore(settings, context=RuleContext(stored=True)) if provider is None else None
    aggregator = Aggregator(settings, provider or rule_store_provider(store), mailer_for(settings))
    beat = {"loop": time.monotonic()}
    gate = PermissionGate(settings.kafka_config(), acls_for(Component.AGGREGATE, settings), "aggregate")

    def healthy() -> tuple[bool, dict[str, object]]:
        ok, details = aggregator.healthy()
        loop_ok = time.monotonic() - beat["loop"] < 30
        rules_ok = store is None or store.stopped is None  # stopped: no rule change is followed
        return ok and loop_ok and rules_ok, {**details, "rules": rules_ok}

    def ready() -> tuple[bool, dict[str, object]]:
        ok, details = aggregator.readiness()
        rules = store is None or store.ready
        ok = ok and rules and gate.ok
        READY.labels(service=SERVICE).set(1 if ok else 0)
        return ok, {"rules_loaded": rules, **gate.details(), **details}

    port = settings.http.port if settings.http.port is not None else DEFAULT_PORT
    http = HealthServer(settings.http.host, port, healthy, ready).start()
    log.info(
        "eventmail aggregate starting",
        extra={"http_port": http.port, "group_id": aggregator_group(settings)},
    )
    task: asyncio.Task[None] | None = None
    try:
        # Nothing is read before the broker says every ACL of `aggregate` is held.
        if not await gate.wait(stop):
            return 0
        if store is not None:
            store.start()
            while not stop.is_set() and not await asyncio.to_thread(store.wait_ready, 0.2):
                beat["loop"] = time.monotonic()
        if not stop.is_set():
            task = asyncio.create_task(aggregator.run(stop))
            while not task.done():
                beat["loop"] = time.monotonic()
                READY.labels(service=SERVICE).set(1 if ready()[0] else 0)
                await asyncio.wait({task}, timeout=0.5)
            task.result()
    except EventmailError as exc:  # a missing topic, an unreachable broker: one line says which
        log.error("eventmail aggregate cannot run", extra={"error": str(exc)})
        return 1
    except Exception:
        log.exception("eventmail aggregate failed")
        return 1
    finally:
        stop.set()
        if task is not None and not task.done():
            await asyncio.gather(task, return_exceptions=True)
        if store is not None:
            store.close()
        http.stop()
        READY.labels(service=SERVICE).set(0)
    if aggregator.fatal:
        log.error("eventmail aggregate stopped on a fatal error", extra={"error": aggregator.fatal})
        return 1
    log.info("eventmail aggregate stopped cleanly")
    return 0
