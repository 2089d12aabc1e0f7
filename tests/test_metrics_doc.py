"""docs/metrics.md is generated from consumer/observability/metrics.py and must never be stale."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from consumer.observability import metrics_doc
from tests.test_dashboards import exposed_names

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "metrics.md"


def test_the_page_in_the_repository_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "consumer.observability.metrics_doc", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, (
        f"{result.stderr.strip()}\n(run: python -m consumer.observability.metrics_doc)"
    )
    assert PAGE.read_text(encoding="utf-8") == metrics_doc.render()


def test_check_fails_on_a_stale_page_and_passes_once_regenerated(tmp_path: Path) -> None:
    page = tmp_path / "metrics.md"
    assert metrics_doc.main(["--check", "--output", str(page)]) == 1  # missing
    page.write_text(metrics_doc.render().replace("eventmail_mails_sent_total", "eventmail_mails_total"))
    assert metrics_doc.main(["--check", "--output", str(page)]) == 1  # a renamed metric
    assert metrics_doc.main(["--output", str(page)]) == 0
    assert metrics_doc.main(["--check", "--output", str(page)]) == 0
    assert page.read_text(encoding="utf-8") == metrics_doc.render()


def test_every_metric_is_documented_with_its_type_labels_and_help() -> None:
    text = PAGE.read_text(encoding="utf-8")
    rows = {
        match.group(1): match.group(0)
        for match in re.finditer(r"^\| `(eventmail_\w+?)(?:_bucket / _sum / _count)?` \|.*$", text, re.M)
    }
    docs = metrics_doc.collect()
    assert len(docs) >= 20
    for doc in docs:
        key = doc.name if doc.type == "histogram" else doc.series[0]
        assert key in rows, f"{key} is not in docs/metrics.md"
        row = rows[key]
        assert f"| {doc.type} |" in row
        for label in doc.labels:
            assert f"`{label}`" in row, f"{key}: label {label} missing"
        assert doc.help.replace("|", "\\|") in row
    # Nothing documented that the code does not define, and every queryable series is covered.
    documented = {name for doc in docs for name in doc.series}
    assert documented == {name for name in exposed_names() if not name.endswith("_created")}
    assert len(rows) == len(docs)


def test_every_label_is_explained() -> None:
    labels = {label for doc in metrics_doc.collect() for label in doc.labels}
    assert labels <= set(metrics_doc.LABELS), (
        f"explain in metrics_doc.LABELS: {labels - set(metrics_doc.LABELS)}"
    )
    text = PAGE.read_text(encoding="utf-8")
    for label in labels:
        assert re.search(rf"^\| `{label}` \| [^—]", text, re.M), label


def test_sections_and_services_follow_the_code() -> None:
    docs = {doc.variable: doc for doc in metrics_doc.collect()}
    assert docs["EVENTS_CONSUMED"].section.startswith("consumer")
    assert docs["ALERTS_FIRED"].section.startswith("aggregator")
    assert docs["EVENTS_CONSUMED"].services == ("run",)
    assert docs["ALERTS_FIRED"].services == ("aggregate",)
    # Shared code: the rule store and the mail transport run in both services.
    assert docs["RULES_LOADED"].services == ("run", "aggregate")
    assert docs["SMTP_SEND_SECONDS"].services == ("run", "aggregate")
    assert all(doc.services for doc in docs.values()), [v for v, d in docs.items() if not d.services]
    assert docs["SMTP_SEND_SECONDS"].buckets == metrics_doc.metrics.LATENCY_BUCKETS
