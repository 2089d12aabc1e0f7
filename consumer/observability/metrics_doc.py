"""The metrics reference, ``docs/metrics.md``, generated from :mod:`consumer.observability.metrics`.

``python -m consumer.observability.metrics_doc`` writes the page; ``--check`` writes nothing and exits 1
when the page on disk differs from what the code defines (a test runs it, so a metric added, renamed or
re-labelled without regenerating the page fails the build). ``--output PATH`` writes elsewhere.

What the page says comes from the code only: the name, type, labels, help text and buckets from the
collectors themselves, the section from the ``# --- section ---`` comments of ``metrics.py``, and the
service whose ``/metrics`` carries samples from where the code updates the metric (a module of
``consumer/pipeline`` is ``eventmail run``, of ``consumer/aggregator`` is ``eventmail aggregate``, and
the code both share, the rule store and the mail transport, counts for both). It never imports a
service or opens a port.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from consumer.observability import metrics

PACKAGE = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = PACKAGE.parent / "docs" / "metrics.md"
COMMAND = "python -m consumer.observability.metrics_doc"

#: Series a family of each type exposes, after its name (counters also carry a ``_created`` sample).
SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}
#: The service whose process runs the code of each subpackage of ``consumer``.
SERVICES_BY_PACKAGE: dict[str, tuple[str, ...]] = {
    "pipeline": ("run",),
    "aggregator": ("aggregate",),
    "mail": ("run", "aggregate"),  # the transport sends rule mail (run) and alert mail (aggregate)
    "rules": ("run", "aggregate"),  # both services keep the rules topic as a table
}
SERVICE_ORDER = ("run", "aggregate")
#: What the labels hold. Label values come from bounded sets, never from ids, addresses or error texts.
LABELS: dict[str, str] = {
    "platform": "`lms` or `call_logic` (from the topic the event came from)",
    "trigger": "the event's trigger, one of its platform's triggers (e.g. `lead_sold`, `amd`)",
    "connection": "the ESP connection's `NAME` (of `EVENTMAIL_ESP_CONNECTIONS`), or for a rule's own "
    "server (`type: manual`) `manual-` and 8 hex digits of a hash of its host and port, the same in "
    "every process; after 64 distinct servers in one process, `manual-other`",
    "reason": "a short class of the failure: `smtp_4xx`, `smtp_5xx`, `timeout`, `connection`, `tls`, "
    "`auth`, `circuit_open`, `deadline` (retried until `EVENTMAIL_PIPELINE__RETRY_DEADLINE_SECONDS`), "
    "`render`, `config` …",
    "source": "the event topic a dead letter came from",
    "status": "an outcome status: `sent`, `failed`, `retrying` or `config_error`",
    "topic": "a topic the consumer group reads (the event topics and the retry topic)",
    "partition": "a partition number of that topic",
    "code": "librdkafka's error name, e.g. `_TRANSPORT`, `_ALL_BROKERS_DOWN`, `_AUTHENTICATION`",
    "service": "`run` or `aggregate`",
    "producer": "`outcomes` (the outcome and dead-letter producer) or `handoff` (the retry hand-off's "
    "transactional producer)",
    "kind": "`fired` or `resolved`",
}

#: How many series a process serves (tests/test_prometheus_metrics.py measures it against this).
CARDINALITY = [
    "## Cardinality",
    "",
    "The number of series does not depend on the number of events, rules, recipients or products:",
    "10,000 distinct events through 100 rules serve exactly the series the first 1,000 did",
    "(tests/test_prometheus_metrics.py). `eventmail run` serves at most",
    "",
    "    78 + 84 + 2 * 20 + 4 + C * (21 + 4 * R) + P + 2 * K + 2 * F",
    "",
    "series: 84 for the 21 (platform, trigger) pairs (events consumed, rules matched), 20 per platform",
    "(decode failures, the end-to-end latency histogram), 2 per event topic (dead letters), per",
    "connection `C` 21 (mails sent, the send-duration histogram, the circuit) and 4 per failure reason",
    "`R` (mails failed, retried), one lag gauge per assigned partition `P`, 2 per librdkafka error",
    "code `K`, 2 per producer `F` replaced after a fatal error (at most 2), and 78 fixed ones",
    "(outcome statuses, unlabelled metrics, the process and Python collectors). A counter counts",
    "twice (`_total`, `_created`), a histogram 19 times. `C` is the ESP connections plus the distinct",
    "servers of rules, at most 64 of those (then `manual-other`); `R` at most the dozen reasons under",
    "[Labels](#labels). With 4 connections, 4 reasons and 6",
    "partitions that is under 400 series.",
    "",
]

_SECTION = re.compile(r"^# -+ (?P<title>.+?) -+\s*$")


@dataclass(frozen=True)
class MetricDoc:
    """One metric as the page shows it."""

    variable: str
    name: str
    type: str
    labels: tuple[str, ...]
    help: str
    section: str
    services: tuple[str, ...]
    buckets: tuple[float, ...] = ()

    @property
    def series(self) -> tuple[str, ...]:
        """The series names a scrape carries (what PromQL queries read)."""
        return tuple(self.name + suffix for suffix in SUFFIXES.get(self.type, ("",)))


def _sections() -> dict[str, str]:
    """Variable name -> the title of the ``# --- title ---`` comment above its definition."""
    source = inspect.getsource(metrics)
    titles: list[tuple[int, str]] = []
    for number, line in enumerate(source.splitlines(), start=1):
        match = _SECTION.match(line)
        if match:
            titles.append((number, match.group("title")))
    out: dict[str, str] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    above = [title for line, title in titles if line < node.lineno]
                    out[target.id] = above[-1] if above else "Other"
    return out


def _code_by_package(root: Path = PACKAGE) -> list[tuple[str, str]]:
    """(subpackage, source) of every module that may update a metric (not ``observability`` itself)."""
    out: list[tuple[str, str]] = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if len(relative.parts) >= 2 and relative.parts[0] != "observability":
            out.append((relative.parts[0], path.read_text(encoding="utf-8")))
    return out


def _services(variable: str, code: list[tuple[str, str]]) -> tuple[str, ...]:
    """The services whose code updates the metric held in ``variable``."""
    pattern = re.compile(rf"\b{re.escape(variable)}\b")
    found: set[str] = set()
    for package, source in code:
        if pattern.search(source):
            found.update(SERVICES_BY_PACKAGE.get(package, SERVICE_ORDER))
    return tuple(s for s in SERVICE_ORDER if s in found)


def collect() -> list[MetricDoc]:
    """Every metric of :mod:`consumer.observability.metrics`, in the order it is defined."""
    sections = _sections()
    code = _code_by_package()
    out: list[MetricDoc] = []
    for variable, value in vars(metrics).items():
        if not isinstance(value, MetricWrapperBase):
            continue
        family = next(iter(value.describe()))
        labels: Sequence[str] = getattr(value, "_labelnames", ())
        bounds: Sequence[float] = getattr(value, "_upper_bounds", ())
        out.append(
            MetricDoc(
                variable=variable,
                name=family.name,
                type=family.type,
                labels=tuple(labels),
                help=family.documentation,
                section=sections.get(variable, "Other"),
                services=_services(variable, code),
                buckets=tuple(b for b in bounds if b != float("inf")),
            )
        )
    return out


def _code(items: Sequence[str]) -> str:
    return ", ".join(f"`{item}`" for item in items) or "—"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _seconds(value: float) -> str:
    return f"{value:g}"


def render(docs: Sequence[MetricDoc] | None = None) -> str:
    """The whole page."""
    docs = list(collect() if docs is None else docs)
    lines = [
        "# Metrics reference",
        "",
        f"<!-- Generated by `{COMMAND}` from consumer/observability/metrics.py.",
        "     Do not edit by hand: change the metrics, then run the command",
        "     (tests/test_metrics_doc.py fails while this page is stale). -->",
        "",
        "Both services serve Prometheus metrics in the text format on `/metrics` of their HTTP port:",
        "`eventmail run` on 9400 and `eventmail aggregate` on 9401 (`EVENTMAIL_HTTP__PORT`), next to",
        "`/healthz` and `/readyz`. The Grafana dashboard (`deploy/grafana/eventmail.json`) and the alert",
        "rules (`deploy/prometheus/eventmail-alerts.yaml`, explained in [operations.md](operations.md))",
        "read them.",
        "",
        "- **Series.** A counter `x_total` is scraped as `x_total` (plus `x_created`, its start time); a",
        "  histogram `x` as `x_bucket{le=…}`, `x_sum` and `x_count`; a gauge under its own name.",
        "- **Service.** Which service's `/metrics` has samples of the metric: the one whose code updates",
        "  it. Both processes list every metric (`# HELP` and `# TYPE` lines), but a metric with labels",
        "  has samples only once something happened (the first sent mail, the first dead letter …); a",
        "  metric without labels always has one (0 at start).",
        "- **Labels** take values from small, bounded sets (see [Labels](#labels)); event ids, addresses",
        "  and error texts never become label values.",
        "",
    ]
    sections: dict[str, list[MetricDoc]] = {}
    for doc in docs:
        sections.setdefault(doc.section, []).append(doc)
    for section, members in sections.items():
        lines += [f"## {section[:1].upper()}{section[1:]}", ""]
        lines += ["| metric | type | labels | service | meaning |", "|---|---|---|---|---|"]
        for doc in members:
            series = doc.series[0] if doc.type != "histogram" else f"{doc.name}_bucket / _sum / _count"
            services = ", ".join(f"`{s}`" for s in doc.services) or "—"
            lines.append(
                f"| `{series}` | {doc.type} | {_code(doc.labels)} | {services} | {_cell(doc.help)} |"
            )
        lines.append("")
    histograms = [doc for doc in docs if doc.type == "histogram"]
    if histograms:
        lines += ["## Histogram buckets", ""]
        for doc in histograms:
            bounds = ", ".join(_seconds(b) for b in doc.buckets)
            lines.append(f"- `{doc.name}`: {bounds} (and `+Inf`)")
        lines.append("")
    lines += CARDINALITY
    used = [label for label in dict.fromkeys(label for doc in docs for label in doc.labels)]
    lines += ["## Labels", "", "| label | values | on |", "|---|---|---|"]
    for label in used:
        on = ", ".join(f"`{doc.series[0]}`" for doc in docs if label in doc.labels)
        lines.append(f"| `{label}` | {_cell(LABELS.get(label, '—'))} | {on} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description="Write docs/metrics.md from the metrics.")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the page")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when the page on disk is stale"
    )
    args = parser.parse_args(argv)
    text = render()
    path: Path = args.output
    if args.check:
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current != text:
            print(f"{path} is stale: run `{COMMAND}`", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
