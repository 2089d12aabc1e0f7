"""Every command's table prints user-supplied strings as text: rich markup, emoji codes and stray
closing tags in rule names, subjects, errors or demo problems are shown as they are, never
interpreted (and never crash the command)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from consumer.cli.logs import outcome_table
from consumer.cli.tables import TextTable
from consumer.demo.runner import Demo, Options
from consumer.outcomes.model import Outcome, OutcomeStatus

HOSTILE = ["Order [js-0073]", "[/oops]", "[bold red]x[/]", ":smile:", "[link=http://e.example]y[/link]"]


def rendered(renderable: object) -> str:
    console = Console(width=400, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_text_table_cells_and_title_are_literal() -> None:
    table = TextTable(title="[b]title[/b] [/oops]", caption="[i]cap")
    table.add_column("v")
    for value in HOSTILE:
        table.add_row(value)
    out = rendered(table)
    for value in [*HOSTILE, "[b]title[/b] [/oops]", "[i]cap"]:
        assert value in out


def test_outcome_table_shows_subject_and_error_as_text() -> None:
    outcome = Outcome(
        created=datetime(2026, 12, 1, tzinfo=UTC),
        event_id="ev-1",
        rule_id="r-1",
        platform="lms",
        trigger="lead_sold",
        status=OutcomeStatus.FAILED,
        to=["[red]ops[/red] <ops@example.com>"],
        subject="Lead sold [js-0073]",
        error="field [/oops] missing",
    )
    out = rendered(outcome_table([outcome], title="log [/x]"))
    assert "Subject: Lead sold [js-0073]" in out
    assert "field [/oops] missing" in out
    assert "[red]ops[/red] <ops@example.com>" in out
    assert "log [/x]" in out
    assert "failed" in out


def test_demo_steps_print_paths_and_names_as_text(tmp_path: Path) -> None:
    console = Console(width=400, record=True, color_system=None)
    demo = Demo(Options(output=tmp_path / "out [/oops]"), console)
    demo._step(f"output in {demo.output} [bold]rules[/bold]")
    assert f"✓ output in {tmp_path}/out [/oops] [bold]rules[/bold]" in console.export_text()
