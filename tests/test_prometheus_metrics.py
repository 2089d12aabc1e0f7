"""Metric hygiene of a live ``eventmail run``: ``promtool check metrics`` passes on its ``/metrics``
(names, units, help texts), and its series count is bounded by the label sets of docs/metrics.md
(*Cardinality*), whatever the number of events and rules: 10,000 distinct events through 100 rules
leave it where the first 1,000 put it, and under :func:`series_bound`.

The aggregator's ``/metrics`` goes through the same lint in tests/test_prometheus_e2e.py, where every
label set of both services has a sample.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from consumer.events.triggers import CALL_LOGIC_TRIGGERS, LMS_TRIGGERS, Platform, triggers_for
from consumer.observability.metrics import LATENCY_BUCKETS
from tests.factories import make_event
from tests.pipeline_support import apply_rules, esp, publish, rule_doc
from tests.support.kafka import TopicFactory
from tests.support.prometheus import run_promtool
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory

RULES = 100
EVENTS = 10_000
FIRST = 1_000


def series_bound(connections: int, reasons: int, partitions: int, kafka_codes: int) -> int:
    """The most series ``eventmail run`` serves (docs/metrics.md, *Cardinality*): counters count 2
    (``_total`` and ``_created``), a labelled histogram ``len(buckets) + 1`` buckets, ``_sum``,
    ``_count`` and ``_created``."""
    pairs = len(LMS_TRIGGERS) + len(CALL_LOGIC_TRIGGERS)
    histogram = len(LATENCY_BUCKETS) + 4
    per_pair = 2 * 2  # events consumed, rules matched
    per_platform = 2 + histogram  # decode failures, end-to-end latency
    per_connection = 2 + histogram + 1  # mails sent, send duration, circuit open
    per_connection_reason = 2 * 2  # mails failed, mails retried
    per_event_topic = 2  # dead letters
    fixed = 4 * 2 + 2 * 2 + 4 + 2 + 60  # outcome statuses, rule errors etc., gauges, ready, process
    return (
        fixed
        + pairs * per_pair
        + 2 * per_platform
        + 2 * per_event_topic
        + connections * (per_connection + reasons * per_connection_reason)
        + partitions
        + 2 * kafka_codes
    )


def scrape(service: ServiceProcess) -> tuple[str, set[str], dict[str, set[str]]]:
    """(/metrics text, its series, values of each label)."""
    code, body = service.get("/metrics")
    assert code == 200, body
    series: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            series.add(sample.name + str(sorted(sample.labels.items())))
            for name, value in sample.labels.items():
                labels.setdefault(name, set()).add(value)
    return body, series, labels


def wait_consumed(service: ServiceProcess, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while service.metric("eventmail_events_consumed_total") < total:
        service.check_alive()
        if time.monotonic() > deadline:
            got = service.metric("eventmail_events_consumed_total")
            raise TimeoutError(f"{got} of {total} events consumed after {timeout}s:\n{service.tail()}")
        time.sleep(0.5)


def events(start: int, count: int) -> list[Any]:
    """Distinct events over every (platform, trigger) and 100 products; lead_sold ones mail."""
    pairs = [(p, t) for p in Platform for t in triggers_for(p)]
    out = []
    for n in range(start, start + count):
        platform, trigger = pairs[n % len(pairs)]
        out.append(make_event(platform, trigger, product_id=f"p-{n % RULES}", lead_id=f"lead-{n}"))
    return out


def test_series_stay_bounded_and_pass_promtool_check_metrics(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
) -> None:
    servers = [smtp_server_factory("plain") for _ in range(3)]
    deployment = Deployment.create(kafka_bootstrap, topic_factory, partitions=2)
    deployment.with_esp({"default": esp(servers[0]), "second": esp(servers[1])})
    deployment.extra_env["EVENTMAIL_LOG_LEVEL"] = "WARNING"
    rules = []
    for k in range(RULES):
        if k % 3 == 2:  # a rule's own server: the label is a hash of host:port, not the rule
            server = servers[2] if k % 2 else servers[1]
            connection: dict[str, Any] = {
                "type": "manual",
                "host": server.host,
                "port": server.port,
                "encryption": "none",
            }
        else:
            connection = {"type": "esp", "name": "default" if k % 2 else "second"}
        rules.append(
            rule_doc(f"r-{k}", product_id=f"p-{k}", triggers=["lead_sold"], action={"connection": connection})
        )
    for k in range(0, RULES, 10):  # ... and call_logic rules, so both platforms match and mail
        rules.append(
            rule_doc(
                f"r-cl-{k}",
                platform="call_logic",
                product_id=f"p-{k}",
                triggers=list(CALL_LOGIC_TRIGGERS[:3]),
                action={"connection": {"type": "esp", "name": "default"}},
            )
        )
    apply_rules(deployment, tmp_path, *rules)
    consumer = ServiceProcess("run", deployment.env(), tmp_path).start()
    try:
        consumer.wait_ready(120)
        publish(deployment, events(0, FIRST))
        wait_consumed(consumer, FIRST, 120)
        # the lag gauges come with librdkafka's statistics, a moment after the assignment
        deadline = time.monotonic() + 60
        while True:
            _, after_first, _ = scrape(consumer)
            lag = [s for s in after_first if s.startswith("eventmail_consumer_lag_messages")]
            if len(lag) >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        publish(deployment, events(FIRST, EVENTS - FIRST))
        wait_consumed(consumer, EVENTS, 300)
        deadline = time.monotonic() + 120
        while consumer.metric("eventmail_mails_in_flight") > 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        body, after_all, labels = scrape(consumer)
        sent = consumer.metric("eventmail_mails_sent_total")
    finally:
        consumer.stop()

    assert sent >= EVENTS // 21  # the lead_sold events of the 100 rules, and the call_logic rules'
    lint = run_promtool("check", "metrics", stdin=body)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr

    connections = labels["connection"]
    assert connections == {"default", "second", *{c for c in connections if c.startswith("manual-")}}
    assert len(connections) == 4, connections  # two ESP names, two servers of rules
    bound = series_bound(
        connections=len(connections),
        reasons=len(labels.get("reason", ())),
        partitions=len(labels["partition"]),
        kafka_codes=len(labels.get("code", ())),
    )
    print(f"series: {len(after_first)} after {FIRST} events, {len(after_all)} after {EVENTS}; bound {bound}")
    assert after_all == after_first, f"new series: {sorted(after_all - after_first)}"
    assert len(after_all) <= bound
