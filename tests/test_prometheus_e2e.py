"""Paging proven end to end: Debian's Prometheus 2.42 scrapes a live ``eventmail run`` and ``eventmail
aggregate`` on the real broker, evaluates the shipped alert rules, and every alert goes ``firing`` when
its failure is driven and back to inactive when the cause is removed. Every query of the Grafana
dashboard returns a series during the run.

Time scale: the rules are the shipped file passed through ``deploy/prometheus/timescale.py`` with
:data:`SCALE` (a minute of the shipped rules is a second here: ``for: 15m`` -> ``15s``, ``[10m]`` ->
``[10s]``); Prometheus scrapes and evaluates every second. Thresholds are the shipped ones; those that
are rates (at least 5 failures in the window) are therefore met by 60 times the traffic.

Two deployments, each scraped as the pods of one namespace label:

- ``e2e``: the consumer and the aggregator; SMTP servers ``default`` (accepts), ``refusing`` (550 to
  everything; also the connection of warning-alert emails) and ``busy`` (451 to everything, circuit
  after one failure).
- ``e2e-lag``: a consumer whose connection is rate-limited to 2 mails/s, fed 1,500 events and more.

``eventmail_ready`` of ``eventmail run`` is refreshed when ``/readyz`` is probed, so the test probes
both services every half second, as the kubelet's readiness probe does.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from consumer.events.triggers import Platform
from consumer.outcomes.codec import encode_outcome
from consumer.outcomes.model import Outcome, OutcomeStatus
from tests.factories import make_event
from tests.pipeline_support import apply_rules, esp, publish, rule_doc
from tests.support.kafka import LocalBroker, TopicFactory, produce
from tests.support.prometheus import RULES, PrometheusError, PrometheusServer, run_promtool
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory
from tests.test_dashboards import dashboard_queries

SCALE = 60
NAMESPACE = "e2e"
LAG_NAMESPACE = "e2e-lag"
#: Grafana's variables as a dashboard over the last few minutes of this run fills them.
DASHBOARD_VARIABLES = {
    "$__rate_interval": "10s",
    "$__interval": "2s",
    "$__range": "5m",
    "$namespace": "e2e.*",
}
FAST = {
    "EVENTMAIL_PIPELINE__COMMIT_INTERVAL_SECONDS": "0.2",
    "EVENTMAIL_PIPELINE__DRAIN_TIMEOUT_SECONDS": "5",
    "EVENTMAIL_LOG_LEVEL": "WARNING",
}


def timescaled_rules() -> str:
    import importlib.util

    spec = importlib.util.spec_from_file_location("timescale", RULES.parent / "timescale.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scaled: str = module.timescale(RULES.read_text(), SCALE)
    return scaled


def grafana_expr(expr: str) -> str:
    for variable, value in DASHBOARD_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, expr
    return expr


# --- what Prometheus shows -------------------------------------------------------------------------------
@dataclass
class Seen:
    """One alert instance as the test saw it: when it fired and resolved, and the figures at firing."""

    name: str
    labels: dict[str, str]
    cause_at: float
    fired_at: float | None = None
    value: str = ""
    figures: dict[str, float] = field(default_factory=dict)
    removed_at: float | None = None
    resolved_at: float | None = None

    #: The cause ended without the test's doing (e.g. every alert email has been tried): not timed.
    ends_by_itself: bool = False

    def line(self) -> str:
        fire = f"{self.fired_at - self.cause_at:.1f}s" if self.fired_at else "never"
        figures = ", ".join(f"{k}={v:g}" for k, v in self.figures.items())
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        text = f"{self.name}{{{labels}}}: firing {fire} after the cause began (value {self.value}; {figures})"
        if self.resolved_at is not None and self.fired_at is not None:
            text += f"; firing for {self.resolved_at - self.fired_at:.1f}s"
            if self.removed_at is not None and not self.ends_by_itself:
                text += f", inactive {self.resolved_at - self.removed_at:.1f}s after the cause ended"
        return text


class Watch:
    """Polls Prometheus' alerts and the dashboard's queries in a thread."""

    def __init__(self, prometheus: PrometheusServer) -> None:
        self.prometheus = prometheus
        self.firing: dict[tuple[str, frozenset[tuple[str, str]]], dict[str, Any]] = {}
        #: When each alert instance was last seen firing.
        self.last_firing: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.queries = [(title, grafana_expr(expr)) for title, expr in dashboard_queries()]
        self.with_data: set[str] = set()
        self.query_errors: dict[str, str] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        turn = 0
        while not self.stop.is_set():
            try:
                alerts = self.prometheus.alerts()
            except (PrometheusError, OSError):
                alerts = []
            with self.lock:
                self.firing = {
                    (a["labels"]["alertname"], frozenset(a["labels"].items())): a
                    for a in alerts
                    if a["state"] == "firing"
                }
                now = time.monotonic()
                self.last_firing.update(dict.fromkeys(self.firing, now))
            if turn % 4 == 0:
                for _, expr in self.queries:
                    if expr in self.with_data:
                        continue
                    try:
                        if self.prometheus.query(expr):
                            self.with_data.add(expr)
                    except PrometheusError as exc:
                        self.query_errors[expr] = str(exc)
            turn += 1
            self.stop.wait(0.5)

    def last_seen_firing(self, name: str, labels: dict[str, str]) -> float:
        with self.lock:
            return max(
                at
                for (alertname, key), at in self.last_firing.items()
                if alertname == name and labels.items() <= dict(key).items()
            )

    def find(self, name: str, labels: dict[str, str]) -> dict[str, Any] | None:
        with self.lock:
            for (alertname, _), alert in self.firing.items():
                if alertname == name and all(alert["labels"].get(k) == v for k, v in labels.items()):
                    return alert
        return None

    def wait(
        self,
        predicate: Callable[[], bool],
        timeout: float,
        what: Callable[[], str],
        check: Callable[[], None],
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            check()
            if time.monotonic() > deadline:
                firing = sorted(k[0] for k in self.firing)
                raise TimeoutError(f"{what()} within {timeout}s; firing now: {firing}")
            time.sleep(0.2)


class Prober:
    """GET /readyz of each service twice a second (the kubelet's readiness probe)."""

    def __init__(self, services: list[ServiceProcess]) -> None:
        self.services = services
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            for service in self.services:
                with contextlib.suppress(OSError):
                    service.get("/readyz")
            self.stop.wait(0.5)


class Traffic:
    """Events produced every ``every`` seconds by ``tick(n)`` in a thread, until stopped."""

    def __init__(self, tick: Callable[[int], None], every: float = 0.5) -> None:
        self.tick = tick
        self.every = every
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                self.tick(n)
            except BaseException as exc:  # reported by check()
                self.error = exc
                return
            n += 1
            self.stop.wait(self.every)

    def start(self) -> Traffic:
        self.thread.start()
        return self

    def end(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.check()

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"producing traffic failed: {self.error!r}")


def scrape_config(targets: dict[str, tuple[ServiceProcess, str]]) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": pod,
                "static_configs": [
                    {"targets": [f"127.0.0.1:{service.port}"], "labels": {"namespace": namespace, "pod": pod}}
                ],
            }
            for pod, (service, namespace) in targets.items()
        ],
    }


@pytest.fixture
def started() -> Iterator[list[Callable[[], None]]]:
    """Stop callbacks, run at the end of the test in reverse order."""
    stops: list[Callable[[], None]] = []
    yield stops
    for stop in reversed(stops):
        stop()


def test_every_alert_fires_and_resolves_against_a_real_prometheus(
    kafka_bootstrap: str,
    local_broker: LocalBroker,
    topic_factory: TopicFactory,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
    started: list[Callable[[], None]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    t0 = time.monotonic()
    good = smtp_server_factory("plain")
    refusing = smtp_server_factory("reject")
    busy = smtp_server_factory("flaky", fail_code=451, fail_times=None)

    main = Deployment.create(kafka_bootstrap, topic_factory, partitions=2)
    main.with_esp({"default": esp(good), "refusing": esp(refusing), "busy": esp(busy)})
    main.extra_env.update(
        {
            **FAST,
            "EVENTMAIL_SMTP__IN_PLACE_RETRIES": "0",
            "EVENTMAIL_SMTP__CIRCUIT_FAILURES": "1",
            "EVENTMAIL_SMTP__CIRCUIT_OPEN_SECONDS": "1",
            "EVENTMAIL_PIPELINE__RETRY_BASE_SECONDS": "0.5",
            "EVENTMAIL_PIPELINE__RETRY_DEADLINE_SECONDS": "6",
            "EVENTMAIL_ALERTS__CONNECTION": "refusing",
            "EVENTMAIL_ALERTS__SENDER": "alerts@example.com",
            # Reconnect to a broker that is gone at least every second, so errors keep being reported.
            "EVENTMAIL_KAFKA__EXTRA": json.dumps({"reconnect.backoff.max.ms": 1000}),
        }
    )
    refused_products = [f"p-r{k}" for k in range(6)]
    apply_rules(
        main,
        tmp_path,
        rule_doc("r-sent"),
        *[
            rule_doc(
                f"r-refused-{product}",
                triggers=["lead_rejected"],
                product_id=product,
                action={"connection": {"type": "esp", "name": "refusing"}},
                warnings={"enabled": True, "timeframe": "5m", "count": 0, "emails": "oncall@example.com"},
            )
            for product in refused_products
        ],
        rule_doc(
            "r-busy",
            platform="call_logic",
            triggers=["buyer_response"],
            action={"connection": {"type": "esp", "name": "busy"}},
        ),
    )
    lagging = Deployment.create(kafka_bootstrap, topic_factory, partitions=2)
    lagging.with_esp({"default": esp(good, rate_limit_per_second=2)})
    lagging.extra_env.update(FAST)
    apply_rules(lagging, tmp_path, rule_doc("r-slow"))

    consumer = ServiceProcess("run", main.env(), tmp_path, name="consumer").start()
    aggregator = ServiceProcess("aggregate", main.env(), tmp_path, name="aggregator").start()
    slow = ServiceProcess("run", lagging.env(), tmp_path, name="slow-consumer").start()
    # An aggregator that reads only outcomes 20 minutes old (a topic the test feeds) while the slow
    # consumer of its namespace keeps writing fresh ones: it is that far behind.
    stale_outcomes = topic_factory("stale-outcomes", 1)
    late = ServiceProcess(
        "aggregate", lagging.env(EVENTMAIL_TOPICS__OUTCOMES=stale_outcomes), tmp_path, name="late-aggregator"
    ).start()
    services = [consumer, aggregator, slow, late]

    def stop_services() -> None:
        for service in services:
            service.stop()

    started.append(stop_services)
    prober = Prober(services)
    prober.thread.start()
    started.append(prober.stop.set)

    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    prometheus = PrometheusServer(
        prom_dir,
        scrape_config(
            {
                "consumer-0": (consumer, NAMESPACE),
                "aggregator-0": (aggregator, NAMESPACE),
                "consumer-slow-0": (slow, LAG_NAMESPACE),
                "aggregator-late-0": (late, LAG_NAMESPACE),
            }
        ),
        {"eventmail-alerts.yaml": timescaled_rules()},
    ).start()
    started.append(prometheus.stop)
    watch = Watch(prometheus)
    watch.thread.start()
    started.append(watch.stop.set)
    for service in services:
        service.wait_ready(120)

    def check() -> None:
        prometheus.check_alive()
        for service in services:
            service.check_alive()
        for traffic in running:
            traffic.check()

    def value(expr: str) -> float:
        result = prometheus.query(expr)
        return sum(float(r["value"][1]) for r in result)

    seen: list[Seen] = []
    running: list[Traffic] = []

    def expect(name: str, labels: dict[str, str], cause_at: float, figures: dict[str, str]) -> Seen:
        entry = Seen(name, labels, cause_at)
        seen.append(entry)
        entry.figures = {k: float("nan") for k in figures}
        entry_figures[name, frozenset(labels.items())] = figures
        return entry

    entry_figures: dict[tuple[str, frozenset[tuple[str, str]]], dict[str, str]] = {}

    def figures_now(entry: Seen) -> dict[str, float]:
        return {k: value(q) for k, q in entry_figures[entry.name, frozenset(entry.labels.items())].items()}

    def wait_firing(entries: list[Seen], timeout: float) -> None:
        def all_fired() -> bool:
            for entry in entries:
                if entry.fired_at is None:
                    alert = watch.find(entry.name, entry.labels)
                    if alert is not None:
                        entry.fired_at = time.monotonic()
                        entry.value = f"{float(alert['value']):.4g}"
                        entry.figures = figures_now(entry)
                        assert alert["annotations"]["runbook_url"].endswith("#" + entry.name.lower())
            return all(e.fired_at is not None for e in entries)

        def missing() -> str:
            return "; ".join(f"{e.name} not firing: {figures_now(e)}" for e in entries if e.fired_at is None)

        watch.wait(all_fired, timeout, missing, check)

    def wait_inactive(entries: list[Seen], timeout: float) -> None:
        now = time.monotonic()
        for entry in entries:
            entry.removed_at = entry.removed_at or now

        def all_gone() -> bool:
            for entry in entries:
                if entry.resolved_at is None and watch.find(entry.name, entry.labels) is None:
                    # inactive, i.e. neither firing nor pending again
                    pending = [
                        a
                        for a in prometheus.alerts()
                        if a["labels"]["alertname"] == entry.name
                        and all(a["labels"].get(k) == v for k, v in entry.labels.items())
                    ]
                    if not pending:
                        entry.resolved_at = watch.last_seen_firing(entry.name, entry.labels)
            return all(e.resolved_at is not None for e in entries)

        def active() -> str:
            return "; ".join(
                f"{e.name} still active: {figures_now(e)}" for e in entries if e.resolved_at is None
            )

        watch.wait(all_gone, timeout, active, check)

    ns = {"namespace": NAMESPACE}
    # --- phase 1: failures under traffic ---------------------------------------------------------------
    start = time.monotonic()
    old = datetime.now(UTC) - timedelta(minutes=20)

    def main_tick(n: int) -> None:
        elapsed = time.monotonic() - start
        events = [make_event(Platform.LMS, "lead_sold", product_id="p-1", occurred_at=datetime.now(UTC))]
        if not refused_done.is_set():
            product = refused_products[min(int(elapsed // 4), len(refused_products) - 1)]
            events.append(make_event(Platform.LMS, "lead_rejected", product_id=product))
        if n % 2 == 0:
            events.append(make_event(Platform.CALL_LOGIC, "buyer_response", product_id="p-1"))
        publish(main, events)
        if not behind_done.is_set():
            # outcomes 20 minutes old reach the aggregator: it is that far behind
            outcome = Outcome(created=old, rule_id="r-slow", status=OutcomeStatus.SENT, event_id=f"old-{n}")
            produce(kafka_bootstrap, stale_outcomes, [(b"r-slow", encode_outcome(outcome))])

    refused_done = threading.Event()
    behind_done = threading.Event()
    traffic = Traffic(main_tick).start()
    running.append(traffic)
    started.append(traffic.stop.set)

    poison_at = time.monotonic()
    produce(kafka_bootstrap, main.topics["lms"], [(b"bad", b"not an event")] * 3)
    produce(kafka_bootstrap, main.topics["rules"], [(b"r-broken", b"{not a rule")])
    burst_end = time.monotonic()  # the poison and the bad rule are one burst each
    publish(lagging, [make_event(Platform.LMS, "lead_sold", product_id="p-1") for _ in range(1500)])
    lag_traffic = Traffic(
        lambda n: publish(
            lagging, [make_event(Platform.LMS, "lead_sold", product_id="p-1") for _ in range(20)]
        )
    ).start()
    running.append(lag_traffic)
    started.append(lag_traffic.stop.set)

    dlq = expect(
        "EventmailDeadLettersReceived",
        {**ns, "source": main.topics["lms"]},
        poison_at,
        {"eventmail_dlq_records_total": "sum(eventmail_dlq_records_total{namespace='e2e'})"},
    )
    rejected = expect(
        "EventmailRuleRejected",
        ns,
        poison_at,
        {"eventmail_rule_errors_total": "sum(eventmail_rule_errors_total{namespace='e2e'})"},
    )
    ratio = expect(
        "EventmailMailFailureRatioHigh",
        {**ns, "connection": "refusing"},
        start,
        {
            "failed_per_s": "sum(rate(eventmail_mails_failed_total{connection='refusing'}[15s]))",
            "sent_per_s": "sum(rate(eventmail_mails_sent_total{connection='refusing'}[15s]))",
        },
    )
    circuit = expect(
        "EventmailSmtpCircuitOpen",
        {**ns, "connection": "busy"},
        start,
        {
            "circuit_open": "max(max_over_time(eventmail_smtp_circuit_open{connection='busy'}[5s]))",
            "retried_per_s": "sum(rate(eventmail_mails_retried_total{connection='busy'}[15s]))",
        },
    )
    send_failing = expect(
        "EventmailAlertSendFailing",
        ns,
        start,
        {
            "alert_send_failures_total": "sum(eventmail_alert_send_failures_total{namespace='e2e'})",
            "alerts_fired_total": "sum(eventmail_alerts_fired_total{namespace='e2e',kind='fired'})",
        },
    )
    behind = expect(
        "EventmailAggregatorBehind",
        {"namespace": LAG_NAMESPACE},
        start,
        {
            "aggregator_lag_seconds": "max(eventmail_aggregator_lag_seconds{namespace='e2e-lag'})",
            "outcomes_written_per_s": "sum(rate(eventmail_outcomes_written_total{namespace='e2e-lag'}[10s]))",
        },
    )
    lag = expect(
        "EventmailConsumerLagGrowing",
        {"namespace": LAG_NAMESPACE, "topic": lagging.topics["lms"]},
        start,
        {
            "consumer_lag_messages": "sum(eventmail_consumer_lag_messages{namespace='e2e-lag'})",
            "lag_deriv_per_s": "sum(deriv(eventmail_consumer_lag_messages{namespace='e2e-lag'}[15s]))",
        },
    )
    dlq.removed_at = rejected.removed_at = burst_end
    send_failing.ends_by_itself = True  # one alert email per rule, then no more attempts
    phase1 = [dlq, rejected, ratio, circuit, send_failing, behind, lag]
    wait_firing(phase1, 90)
    # Every label set of the failures above is on /metrics now: promtool's lint of names, units, help.
    for service in (consumer, aggregator):
        code, body = service.get("/metrics")
        assert code == 200, body
        lint = run_promtool("check", "metrics", stdin=body)
        assert lint.returncode == 0, f"{service.name}: {lint.stdout}{lint.stderr}"
        assert not (lint.stdout + lint.stderr).strip(), f"{service.name}: {lint.stdout}{lint.stderr}"

    # the causes end: no more poison (it was one burst), refused mail, old outcomes or surge, and the
    # busy server recovers
    refused_done.set()
    behind_done.set()
    busy.fail_times = busy.attempts  # the busy server accepts again: the next probe closes the circuit
    fresh = Outcome(rule_id="r-slow", status=OutcomeStatus.SENT, event_id="fresh")
    produce(kafka_bootstrap, stale_outcomes, [(b"r-slow", encode_outcome(fresh))])
    lag_traffic.end()
    running.remove(lag_traffic)
    wait_inactive(phase1, 60)

    # --- phase 2: the aggregator and the consumer stop while events keep arriving ---------------------
    stopped_at = time.monotonic()
    aggregator.kill()
    consumer.kill()
    aggregator_down = expect(
        "EventmailServiceDown",
        {**ns, "service": "aggregate"},
        stopped_at,
        {
            "aggregator_targets_up": "sum(up{job='aggregator-0'})",
        },
    )
    consumer_down = expect(
        "EventmailServiceDown",
        {**ns, "service": "run"},
        stopped_at,
        {
            "consumer_targets_up": "sum(up{job='consumer-0'})",
        },
    )
    services.remove(aggregator)
    services.remove(consumer)
    wait_firing([aggregator_down, consumer_down], 60)
    aggregator.start()
    consumer.start()
    aggregator_down.removed_at = consumer_down.removed_at = time.monotonic()
    services.extend([aggregator, consumer])
    consumer.wait_ready(120)
    aggregator.wait_ready(120)
    wait_inactive([aggregator_down, consumer_down], 60)

    # --- phase 3: the broker goes away: the consumer is alive and not ready, librdkafka reports errors --
    traffic.end()  # its producer would fail on the outage; the services' own clients report errors
    running.remove(traffic)
    broker_at = time.monotonic()
    local_broker.stop()
    not_ready = expect(
        "EventmailNotReady",
        {**ns, "service": "run", "pod": "consumer-0"},
        broker_at,
        {
            "eventmail_ready": "min(eventmail_ready{namespace='e2e',service='run'})",
        },
    )
    kafka_errors = expect(
        "EventmailKafkaErrors",
        ns,
        broker_at,
        {
            "kafka_errors_per_s": "sum(rate(eventmail_kafka_errors_total{namespace='e2e'}[5s]))",
        },
    )
    try:
        wait_firing([not_ready, kafka_errors], 60)
    finally:
        local_broker.start()
    not_ready.removed_at = kafka_errors.removed_at = time.monotonic()
    wait_inactive([not_ready, kafka_errors], 90)

    elapsed = time.monotonic() - t0
    with capsys.disabled():
        print(f"\nprometheus e2e figures | {elapsed:.0f}s in all")
        for entry in seen:
            print("prometheus e2e figures | " + entry.line())
    watch.stop.set()
    watch.thread.join(10)

    shipped = {rule.split(":", 1)[1].strip() for rule in re.findall(r"- alert: \w+", RULES.read_text())}
    assert shipped == {entry.name for entry in seen}, "every shipped alert is driven here"
    # the dashboard's namespace variable: label_values(eventmail_ready, namespace)
    namespaces = prometheus.api("label/namespace/values", **{"match[]": "eventmail_ready"})
    assert {NAMESPACE, LAG_NAMESPACE} <= set(namespaces)
    assert not watch.query_errors, watch.query_errors
    empty = [title for title, expr in watch.queries if expr not in watch.with_data]
    assert not empty, f"dashboard panels without data during the run: {empty}"
