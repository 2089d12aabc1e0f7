"""Every metric a panel of the Grafana dashboard queries is really served by a running service.

``eventmail run`` and ``eventmail aggregate`` run as processes of one deployment with three SMTP
servers (one accepts, one refuses with 550, one answers 451 to everything) and three rules, one per
server; the one refusing has warning notifications that fire on the first failure. The traffic --
mail sent, refused and retried, malformed records on both event topics, an alert -- gives every
labelled series the dashboard reads a sample. The test then scrapes both ``/metrics`` endpoints until
each series a panel queries (parsed with Prometheus' parser, as tests/test_dashboards.py does) has a
sample on one of them.

One exception, decided here: ``eventmail_kafka_errors_total`` has a sample only once librdkafka
reports an error, which a healthy broker never does (a bad extra bootstrap address is not reported
while another broker answers), and this test must not break the broker other tests share. For it
alone, exposure by its ``# HELP``/``# TYPE`` lines counts. A metric without labels always has a
sample, so the exception is limited to labelled metrics and named one by one.
"""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from consumer.events.triggers import Platform
from consumer.observability import metrics_doc
from tests.factories import make_event
from tests.pipeline_support import apply_rules, esp, publish, rule_doc
from tests.support.kafka import TopicFactory, produce
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory
from tests.test_dashboards import dashboard_queries, parse_promql, plain_promql

#: Series exposed without a sample are accepted for these (see the module docstring), and only these.
EXPOSURE_IS_ENOUGH = {
    "eventmail_kafka_errors_total": "librdkafka errors need a failing broker",
}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def dashboard_series() -> set[str]:
    queries = dashboard_queries()
    parsed = parse_promql([plain_promql(expr) for _, expr in queries])
    series: set[str] = set()
    for (title, expr), result in zip(queries, parsed, strict=True):
        assert "error" not in result, f"{title}: {result['error']}: {expr}"
        series.update(result["metrics"])
    return series


def scrape(service: ServiceProcess) -> tuple[set[str], set[str]]:
    """(series with a sample, series announced by # HELP/# TYPE) of a service's /metrics."""
    code, body = service.get("/metrics")
    assert code == 200, body
    sampled: set[str] = set()
    announced: set[str] = set()
    for family in text_string_to_metric_families(body):
        sampled.update(sample.name for sample in family.samples)
        announced.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return sampled, announced


def test_every_dashboard_metric_is_served_by_a_running_service(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
) -> None:
    wanted = dashboard_series()
    assert len(wanted) >= 20
    good = smtp_server_factory("plain")
    refusing = smtp_server_factory("reject")
    busy = smtp_server_factory("flaky", fail_code=451, fail_times=None)
    deployment = Deployment.create(kafka_bootstrap, topic_factory, partitions=2)
    deployment.with_esp({"default": esp(good), "refusing": esp(refusing), "busy": esp(busy)})
    deployment.extra_env.update(
        {
            "EVENTMAIL_SMTP__IN_PLACE_RETRIES": "0",  # the first 451 goes to the retry topic
            "EVENTMAIL_SMTP__CIRCUIT_FAILURES": "1",  # ... and opens the circuit of "busy"
            "EVENTMAIL_ALERTS__CONNECTION": "default",
            "EVENTMAIL_ALERTS__SENDER": "alerts@example.com",
        }
    )
    apply_rules(
        deployment,
        tmp_path,
        rule_doc("r-sent"),
        rule_doc(
            "r-refused",
            triggers=["lead_rejected"],
            action={"connection": {"type": "esp", "name": "refusing"}},
            warnings={"enabled": True, "timeframe": "5m", "count": 0, "emails": "oncall@example.com"},
        ),
        rule_doc(
            "r-busy",
            platform="call_logic",
            triggers=["buyer_response"],
            action={"connection": {"type": "esp", "name": "busy"}},
        ),
    )
    services = [
        ServiceProcess("run", deployment.env(), tmp_path).start(),
        ServiceProcess("aggregate", deployment.env(), tmp_path).start(),
    ]
    try:
        for service in services:
            service.wait_ready(120)
        events = [make_event(Platform.LMS, "lead_sold", product_id="p-1") for _ in range(3)]
        events += [make_event(Platform.LMS, "lead_rejected", product_id="p-1") for _ in range(2)]
        events.append(make_event(Platform.CALL_LOGIC, "buyer_response", product_id="p-1"))
        publish(deployment, events)
        for topic in ("lms", "call_logic"):
            produce(kafka_bootstrap, deployment.topics[topic], [(b"bad", b"not an event")])

        deadline = time.monotonic() + 120
        sampled: set[str] = set()
        announced: set[str] = set()
        by_service: dict[str, set[str]] = {}
        while time.monotonic() < deadline:
            by_service = {}
            announced = set()
            for service in services:
                samples, names = scrape(service)
                by_service[service.command] = samples
                announced |= names
            sampled = set().union(*by_service.values())
            if wanted <= sampled | set(EXPOSURE_IS_ENOUGH):
                break
            time.sleep(1)
        # The traffic did what the comments above say, so the samples mean something.
        # (Each waited for: a series may have its first sample before the traffic is all through.)
        run, aggregate = services
        run.wait_metric("eventmail_mails_sent_total", lambda n: n >= 3)
        run.wait_metric("eventmail_mails_failed_total", lambda n: n >= 1, {"connection": "refusing"})
        run.wait_metric("eventmail_mails_retried_total", lambda n: n >= 1, {"connection": "busy"})
        assert run.wait_metric("eventmail_dlq_records_total", lambda n: n >= 2) == 2
        assert aggregate.wait_metric("eventmail_alerts_fired_total", lambda n: n >= 1, {"kind": "fired"}) == 1
    finally:
        for service in services:
            service.stop()

    missing = wanted - sampled - set(EXPOSURE_IS_ENOUGH)
    assert not missing, f"no sample on either /metrics for: {sorted(missing)}"
    for name in set(EXPOSURE_IS_ENOUGH) & wanted:
        assert name in announced, f"{name} is not even announced by # HELP/# TYPE"
    # Where the reference page (docs/metrics.md) says a metric is served, it is.
    documented = {series: doc.services for doc in metrics_doc.collect() for series in doc.series}
    for name in wanted - set(EXPOSURE_IS_ENOUGH):
        serving = {service for service, samples in by_service.items() if name in samples}
        assert serving & set(documented[name]), f"{name}: served by {serving}, documented {documented[name]}"
