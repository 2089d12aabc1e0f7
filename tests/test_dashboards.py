"""The Grafana dashboard and the Prometheus alerts, checked statically: they parse, every query is
valid PromQL (``promtool check rules``, Debian's Prometheus 2.42 from deploy/prometheus/install.sh),
every metric they read is one ``consumer/observability/metrics.py`` exposes, and every alert links a
section of docs/operations.md. That the queries return data and the alerts fire is shown against a
real Prometheus in tests/test_prometheus_e2e.py.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase

from consumer.observability import metrics
from tests.support.prometheus import check_expressions

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "eventmail.json"
CHART_DASHBOARD = ROOT / "deploy" / "helm" / "eventmail" / "files" / "eventmail.json"
ALERTS = ROOT / "deploy" / "prometheus" / "eventmail-alerts.yaml"
RUNBOOK = ROOT / "docs" / "operations.md"
RUNBOOK_URL = "https://github.com/eventmail/eventmail/blob/main/docs/operations.md"

#: Grafana's variables, replaced by values of the same type so the query parses as plain PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h", "$namespace": ".*"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}

#: What the dashboard must show (the exposed series names).
DASHBOARD_MUST_SHOW = {
    "eventmail_events_consumed_total",
    "eventmail_rules_matched_total",
    "eventmail_mails_sent_total",
    "eventmail_mails_failed_total",
    "eventmail_mails_retried_total",
    "eventmail_smtp_send_duration_seconds_bucket",
    "eventmail_end_to_end_latency_seconds_bucket",
    "eventmail_consumer_lag_messages",
    "eventmail_dlq_records_total",
    "eventmail_rules_loaded",
    "eventmail_rule_errors_total",
    "eventmail_alerts_fired_total",
    "eventmail_billable_events_total",
    "eventmail_mails_in_flight",
    "eventmail_partitions_paused",
    "eventmail_smtp_circuit_open",
    "eventmail_aggregator_lag_seconds",
}
#: The alerts operators were promised, and what each one watches.
REQUIRED_ALERTS = {
    "EventmailConsumerLagGrowing": "eventmail_consumer_lag_messages",
    "EventmailMailFailureRatioHigh": "eventmail_mails_failed_total",
    "EventmailDeadLettersReceived": "eventmail_dlq_records_total",
    "EventmailNotReady": "eventmail_ready",
    "EventmailAggregatorBehind": "eventmail_aggregator_lag_seconds",
    "EventmailSmtpCircuitOpen": "eventmail_smtp_circuit_open",
    "EventmailKafkaErrors": "eventmail_kafka_errors_total",
}


def exposed_names() -> set[str]:
    """The series names a scrape of eventmail can contain, from the collectors of the metrics module."""
    names: set[str] = set()
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        for family in value.describe():
            if family.type == "gauge":
                names.add(family.name)
            names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
    return names


def parse_promql(exprs: list[str]) -> list[dict[str, Any]]:
    """Each expression parsed by promtool: [{"error": ... (if invalid), "metrics": [eventmail_* names]}]."""
    with tempfile.TemporaryDirectory() as workdir:
        parsed = check_expressions(exprs, Path(workdir))
    assert len(parsed) == len(exprs)
    return parsed


def plain_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # panels inside collapsed rows
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in panels(dashboard())
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", RUNBOOK.read_text(), re.M)
    return {github_anchor(h) for h in headings}


def test_exposed_names_follow_the_suffix_rules() -> None:
    names = exposed_names()
    assert "eventmail_mails_sent_total" in names
    assert "eventmail_mails_sent" not in names
    assert {
        "eventmail_smtp_send_duration_seconds_bucket",
        "eventmail_smtp_send_duration_seconds_count",
    } <= names
    assert "eventmail_smtp_send_duration_seconds" not in names
    assert "eventmail_ready" in names


def test_dashboard_is_a_grafana_dashboard() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    assert board["uid"] == "eventmail"
    assert board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip()


def test_chart_carries_the_same_dashboard() -> None:
    assert CHART_DASHBOARD.read_bytes() == DASHBOARD.read_bytes(), (
        "copy deploy/grafana/eventmail.json to deploy/helm/eventmail/files/"
    )


def test_dashboard_queries_parse_and_read_real_metrics() -> None:
    queries = dashboard_queries()
    parsed = parse_promql([plain_promql(expr) for _, expr in queries])
    known = exposed_names()
    shown: set[str] = set()
    for (title, expr), result in zip(queries, parsed, strict=True):
        assert "error" not in result, f"{title}: {result.get('error')}: {expr}"
        assert result["metrics"], f"{title}: reads no metric"
        unknown = set(result["metrics"]) - known
        assert not unknown, f"{title}: not exposed by consumer/observability/metrics.py: {unknown}"
        # Belt and braces: every eventmail_* token in the text, whatever the parser saw.
        assert set(re.findall(r"eventmail_\w+", expr)) <= known, title
        shown.update(result["metrics"])
    missing = DASHBOARD_MUST_SHOW - shown
    assert not missing, f"the dashboard has no panel for {missing}"


def test_latency_quantiles_aggregate_buckets_by_le() -> None:
    quantiles = [(t, e) for t, e in dashboard_queries() if "histogram_quantile" in e]
    assert {m for _, e in quantiles for m in re.findall(r"eventmail_\w+_bucket", e)} == {
        "eventmail_smtp_send_duration_seconds_bucket",
        "eventmail_end_to_end_latency_seconds_bucket",
    }
    for title, expr in quantiles:
        assert re.search(r"histogram_quantile\(0\.(5|99), sum by \(le\b", expr), f"{title}: {expr}"
    levels = {level for _, e in quantiles for level in re.findall(r"histogram_quantile\((0\.\d+)", e)}
    assert levels == {"0.5", "0.99"}


def test_namespace_variable_filters_every_query() -> None:
    for title, expr in dashboard_queries():
        for selector in re.findall(r"eventmail_\w+(\{[^}]*\})?", expr):
            assert 'namespace=~"$namespace"' in selector, f"{title}: {expr}"


def test_alert_rules_are_well_formed() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    assert set(REQUIRED_ALERTS) <= set(names)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), rule["alert"]
        assert annotations["description"].strip(), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
    not_ready = next(r for r in rules if r["alert"] == "EventmailNotReady")
    assert not_ready["expr"].strip() == "eventmail_ready == 0"
    assert not_ready["for"] == "5m"


def test_alert_expressions_parse_and_read_real_metrics() -> None:
    rules = alert_rules()
    parsed = parse_promql([rule["expr"] for rule in rules])
    known = exposed_names()
    for rule, result in zip(rules, parsed, strict=True):
        assert "error" not in result, f"{rule['alert']}: {result.get('error')}"
        assert result["metrics"], rule["alert"]
        assert set(result["metrics"]) <= known, f"{rule['alert']}: {set(result['metrics']) - known}"
        if rule["alert"] in REQUIRED_ALERTS:
            assert REQUIRED_ALERTS[rule["alert"]] in result["metrics"], rule["alert"]


def test_every_alert_links_its_runbook_section() -> None:
    anchors = runbook_anchors()
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base == RUNBOOK_URL, url
        assert anchor == github_anchor(rule["alert"]), url
        assert anchor in anchors, f"docs/operations.md has no section #{anchor}"


def test_runbook_has_no_section_for_a_missing_alert() -> None:
    text = RUNBOOK.read_text()
    alerts_part = text.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    sections = re.findall(r"^### (Eventmail\w+)$", alerts_part, re.M)
    assert sorted(sections) == sorted(r["alert"] for r in alert_rules())
    for section in sections:
        body = alerts_part.split(f"### {section}\n", 1)[1].split("\n### ", 1)[0]
        for part in ("**Means:**", "**Check:**", "**Do:**"):
            assert part in body, f"{section}: no {part}"
