"""Every Prometheus metric of eventmail, defined once here.

Names are ``eventmail_*`` with units in the name; label values come from bounded sets (platform,
trigger, connection name, status, reason class), never from event ids, addresses or error texts.
``docs/metrics.md`` is generated from this module and a test fails when it is stale.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from prometheus_client import Counter, Gauge, Histogram

M = TypeVar("M", Counter, Gauge, Histogram)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

# --- consumer (eventmail run) ---------------------------------------------------------------------------
EVENTS_CONSUMED = Counter(
    "eventmail_events_consumed_total", "Events decoded from the event topics.", ["platform", "trigger"]
)
DECODE_FAILURES = Counter(
    "eventmail_decode_failures_total", "Records that could not be decoded or validated.", ["platform"]
)
DLQ_RECORDS = Counter("eventmail_dlq_records_total", "Records written to the dead-letter topic.", ["source"])
RULES_MATCHED = Counter(
    "eventmail_rules_matched_total",
    "Rule matches (one event may match several rules).",
    ["platform", "trigger"],
)
MAILS_SENT = Counter("eventmail_mails_sent_total", "Mails accepted by the SMTP server.", ["connection"])
MAILS_FAILED = Counter(
    "eventmail_mails_failed_total", "Mails given up (a failed outcome).", ["connection", "reason"]
)
MAILS_RETRIED = Counter(
    "eventmail_mails_retried_total", "Transient send failures that will be retried.", ["connection", "reason"]
)
SMTP_SEND_SECONDS = Histogram(
    "eventmail_smtp_send_duration_seconds",
    "Time to hand one mail to the SMTP server (from taking a connection to the server's reply).",
    ["connection"],
    buckets=LATENCY_BUCKETS,
)
END_TO_END_SECONDS = Histogram(
    "eventmail_end_to_end_latency_seconds",
    "From the event's occurred_at to the SMTP server accepting the mail.",
    ["platform"],
    buckets=LATENCY_BUCKETS,
)
MAILS_IN_FLIGHT = Gauge("eventmail_mails_in_flight", "Mails being rendered or sent right now.")
CONSUMER_LAG = Gauge(
    "eventmail_consumer_lag_messages",
    "Records behind the high watermark, per partition.",
    ["topic", "partition"],
)
PARTITIONS_PAUSED = Gauge("eventmail_partitions_paused", "Partitions paused for backpressure.")
OUTCOMES_WRITTEN = Counter("eventmail_outcomes_written_total", "Outcome records acknowledged.", ["status"])
RULES_LOADED = Gauge("eventmail_rules_loaded", "Valid rules in force.")
RULE_ERRORS = Counter("eventmail_rule_errors_total", "Invalid records read from the rules topic.")
BILLABLE_EVENTS = Counter(
    "eventmail_billable_events_total",
    "Deliveries of rules with warning notifications enabled (billed at $0.0001 each).",
)
DUPLICATES_SKIPPED = Counter(
    "eventmail_duplicates_skipped_total", "Deliveries skipped because their outcome was already written."
)
SMTP_CIRCUIT_OPEN = Gauge(
    "eventmail_smtp_circuit_open", "1 while the circuit of a connection is open.", ["connection"]
)
KAFKA_ERRORS = Counter("eventmail_kafka_errors_total", "Errors reported by librdkafka.", ["code"])
KAFKA_PRODUCERS_RECREATED = Counter(
    "eventmail_kafka_producers_recreated_total",
    "Producers replaced after a fatal librdkafka error (unacknowledged records are written again).",
    ["producer"],
)
READY = Gauge("eventmail_ready", "1 when the service reports ready.", ["service"])

# --- aggregator (eventmail aggregate) -------------------------------------------------------------------
ALERTS_FIRED = Counter("eventmail_alerts_fired_total", "Warning alerts raised.", ["kind"])
ALERT_SEND_FAILURES = Counter("eventmail_alert_send_failures_total", "Alert emails that could not be sent.")
OUTCOMES_AGGREGATED = Counter(
    "eventmail_outcomes_aggregated_total", "Outcome records read by the aggregator.", ["status"]
)
WINDOW_RULES = Gauge("eventmail_window_rules", "Rules with window state in the aggregator.")
WINDOW_BUCKETS = Gauge("eventmail_window_buckets", "Time buckets held across all windows.")
AGGREGATOR_LAG_SECONDS = Gauge(
    "eventmail_aggregator_lag_seconds", "Age of the newest outcome the aggregator has processed."
)


_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: M, *values: str) -> M:
    """``metric.labels(*values)``, looked up once per label values (they come from bounded sets) and
    kept: ``labels()`` costs a lock and a dictionary of its own on every call, on the hot path of
    every mail. Label values are positional, in the order of the metric's label names."""
    key = (id(metric), values)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*values)
    return cast("M", found)
