"""What the demo shows: the live screen (progress of the published events, counters, the newest
outcomes as the product's SMTP log) and the summary at the end, as a table or as JSON.

The SMTP log table is the one of ``eventmail logs`` (:func:`consumer.cli.logs.outcome_table`), so the
demo shows exactly what an admin sees later. Nothing here talks to Kafka or starts anything.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from consumer.cli.logs import outcome_table
from consumer.cli.tables import TextTable
from consumer.demo.plan import Plan
from consumer.demo.traffic import Tally
from consumer.outcomes.model import AlertKind

#: Lines one outcome row takes in the table (To, Subject, Cc or Bcc, and the separator).
LINES_PER_ROW = 4


def make_progress(console: Console, total: int) -> tuple[Progress, TaskID]:
    progress = Progress(
        TextColumn("[bold]events published"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    return progress, progress.add_task("publish", total=total)


def counters(tally: Tally, plan: Plan, mail_files: int) -> Text:
    """``sent 41/83 · failed 4/9 · ...``: what came out against what the plan expects."""
    fired = len(tally.alerts_of(AlertKind.FIRED))
    parts = [
        ("sent", f"{tally.final('sent')}/{plan.expected('sent')}", "green"),
        ("failed", f"{tally.final('failed')}/{plan.expected('failed')}", "red"),
        ("retrying", str(tally.records["retrying"]), "yellow"),
        ("dead letters", f"{tally.dead_letters}/{plan.malformed}", "magenta"),
        ("warning alerts", f"{fired}/{len(plan.alerting_rules)}", "bold red"),
        (".eml files", str(mail_files), "cyan"),
    ]
    text = Text()
    for i, (name, value, style) in enumerate(parts):
        if i:
            text.append("  ·  ", style="dim")
        text.append(f"{name} ")
        text.append(value, style=style)
    return text


def screen(title: str, progress: Progress, tally: Tally, plan: Plan, rows: int, mail_files: int) -> Group:
    newest = list(tally.outcomes)[-rows:] if rows > 0 else []
    parts: list[RenderableType] = [Text(title, style="bold"), progress, counters(tally, plan, mail_files)]
    if newest:
        parts.append(
            outcome_table(newest, title=f"SMTP log: the newest {len(newest)} of {tally.seen} outcomes")
        )
    else:
        parts.append(Text("waiting for the first outcome ...", style="dim"))
    return Group(*parts)


def table_rows(console: Console) -> int:
    """How many outcomes fit under the progress lines."""
    return max(2, (console.size.height - 8) // LINES_PER_ROW)


@dataclass
class Summary:
    """The demo's result; ``ok`` when everything expected came out."""

    ok: bool
    run_id: str
    bootstrap: str
    output: str
    published: int
    valid_events: int
    malformed: int
    unmatched: int
    expected: dict[str, int]
    outcomes: dict[str, int]
    mail_files: int
    alert_files: int
    alerts: list[dict[str, Any]]
    dead_letters: int
    per_rule: dict[str, dict[str, int]]
    topics: dict[str, str]
    env_file: str
    mail_dir: str
    alerts_dir: str
    logs_dir: str
    metrics: dict[str, str]
    logs_command: str
    duration_seconds: float
    console_url: str | None = None
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)


def summary_view(summary: Summary, services_running: bool) -> Group:
    expected = summary.expected
    counts = TextTable(title="eventmail demo: summary", show_header=True, title_justify="left")
    counts.add_column("", no_wrap=True)
    counts.add_column("count", justify="right")
    counts.add_column("expected", justify="right")
    counts.add_column("", overflow="fold")
    fired = [a for a in summary.alerts if a["kind"] == AlertKind.FIRED.value]
    counts.add_row(
        "events published",
        str(summary.published),
        "",
        f"{summary.valid_events} events ({summary.unmatched} of them match no rule), "
        f"{summary.malformed} malformed",
    )
    counts.add_row(
        "mails sent",
        str(summary.outcomes["sent"]),
        str(expected["sent"]),
        f"{summary.mail_files} .eml files in {summary.mail_dir}",
    )
    counts.add_row(
        "failures",
        str(summary.outcomes["failed"]),
        str(expected["failed"]),
        "refused by the partner relay (550): rule demo-partner-returns",
    )
    counts.add_row(
        "warning alerts",
        str(len(fired)),
        str(expected["alerts"]),
        ", ".join(f"{a['rule_id']}: {a['reason']}" for a in fired) + f" (mail in {summary.alerts_dir})",
    )
    counts.add_row("dead letters (DLQ)", str(summary.dead_letters), str(expected["dead_letters"]), "")
    per_rule = TextTable(title="per rule", title_justify="left")
    for column in ("rule", "sent", "failed"):
        per_rule.add_column(column, justify="left" if column == "rule" else "right")
    for rule_id, counts_of_rule in summary.per_rule.items():
        per_rule.add_row(rule_id, str(counts_of_rule.get("sent", 0)), str(counts_of_rule.get("failed", 0)))
    where = TextTable(title="where to look", show_header=False, title_justify="left")
    where.add_column(no_wrap=True)
    where.add_column(overflow="fold")
    where.add_row("mail", f"{summary.mail_dir}/*.eml (alert mail in {summary.alerts_dir}/)")
    where.add_row("SMTP log", summary.logs_command)
    running = "" if services_running else " (served while the demo runs)"
    for service, url in summary.metrics.items():
        where.add_row(f"metrics ({service})", url + running)
    if summary.console_url:
        where.add_row("console (no login, this machine only)", summary.console_url + running)
    where.add_row("service logs", summary.logs_dir)
    where.add_row("rules applied", f"{summary.output}/rules/")
    parts: list[RenderableType] = [counts, per_rule, where]
    for problem in summary.problems:
        parts.append(Text(f"problem: {problem}", style="bold red"))
    return Group(*parts)
