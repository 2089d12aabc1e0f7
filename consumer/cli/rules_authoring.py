"""``eventmail rules preview`` and ``eventmail rules test``: see what a rule does before it mails anyone.

Both work on rule files and events given on the command line; they read no topic and send nothing.
The mail shown is built by the function the consumer sends with, the event decoded by its decoder.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from consumer.cli.common import DURATION, CliState, fail, pass_state
from consumer.cli.rules import topic_rules, validated_rules
from consumer.errors import CodecError
from consumer.events.codec import EventDecoder
from consumer.events.triggers import Platform
from consumer.mail.errors import MessageError, RenderError
from consumer.rules.backtest import backtest
from consumer.rules.checks import RuleContext
from consumer.rules.diff import ChangeKind, diff_rules
from consumer.rules.history import rule_history
from consumer.rules.matching import compile_rule
from consumer.rules.model import Rule
from consumer.rules.preview import MailPreview, NoMatch, preview
from consumer.rules.ruletests import run_test_file

_PLATFORMS = click.Choice([p.value for p in Platform])


def _choose(rules: list[tuple[Path, Rule]], rule_id: str | None) -> Rule:
    ids = ", ".join(rule.id for _, rule in rules)
    if rule_id is not None:
        for _, rule in rules:
            if rule.id == rule_id:
                return rule
        fail(f"no rule {rule_id} in the given files (ids: {ids})")
    if len(rules) > 1:
        fail(f"the files hold {len(rules)} rules; choose one with --rule (ids: {ids})")
    return rules[0][1]


@click.command("preview")
@click.argument("file", type=click.Path(exists=True, path_type=Path), metavar="FILE")
@click.option("--rule", "rule_id", metavar="ID", help="The rule of FILE to preview (when it holds several).")
@click.option(
    "--event",
    "event_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="EVENT.json",
    help="The event, as the platform publishes it (JSON).",
)
@click.option("--platform", type=_PLATFORMS, help="The event's platform (default: the rule's).")
@click.option("--json", "as_json", is_flag=True, help="The preview as one JSON document.")
@pass_state
def preview_command(
    state: CliState, file: Path, rule_id: str | None, event_file: Path, platform: str | None, as_json: bool
) -> None:
    """Show the mail a rule would send for an event, without sending it.

    Prints the envelope (sender and every recipient, bcc included), every header of the message and
    each body part decoded. Exit 1 when the rule does not match the event, naming the first condition
    that rejects it (e.g. "filters.publishers.exclude contains pub-9"), or when the mail cannot be
    built (a template or address problem, as the consumer would report it).
    """
    rule = _choose(validated_rules(state.settings(), (file,)), rule_id)
    chosen = Platform(platform) if platform else rule.platform
    try:
        event = EventDecoder().decode(chosen, event_file.read_bytes())
    except CodecError as exc:
        fail(f"{event_file}: {exc}")
    try:
        result = preview(compile_rule(rule), event, state.settings().smtp.message_id_domain)
    except (RenderError, MessageError) as exc:
        fail(f"rule {rule.id}: the mail cannot be built: {exc}")
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
    if isinstance(result, NoMatch):
        if not as_json:
            click.echo(f"eventmail: rule {rule.id} does not match: {result.reason}", err=True)
        raise SystemExit(1)
    if not as_json:
        _print_preview(result)


def _print_preview(mail: MailPreview) -> None:
    click.echo(f"rule:          {mail.rule_id} (matches)")
    click.echo(f"envelope from: {mail.sender}")
    click.echo(f"envelope to:   {', '.join(mail.recipients)}")
    if mail.bcc:
        click.echo(f"bcc (envelope only): {', '.join(mail.bcc)}")
    if mail.empty_placeholders:
        click.echo(f"empty placeholders: {', '.join(mail.empty_placeholders)}")
    click.echo("--- headers")
    for name, value in mail.headers:
        click.echo(f"{name}: {value}")
    for kind, body in mail.parts:
        click.echo(f"--- {kind}")
        click.echo(body.rstrip("\n"))


@click.command("test")
@click.argument(
    "files",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="TESTS.yaml...",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per test file.")
@pass_state
def test_command(state: CliState, files: tuple[Path, ...], as_json: bool) -> None:
    """Run unit tests for rules: events and the mails they must (or must not) cause.

    A test file lists rule_files (relative to it) and tests, each with a platform, an event and
    expect: the rules that match it ([] for none) and, per rule, optionally the exact subject, the
    to/cc/bcc recipients and body_contains. One line per difference, FILE: test NAME: rule ID: what
    differs; exit 1 when any test fails. README's admin section has an example.
    """
    context = RuleContext.for_files(state.settings())
    cases = failed_cases = broken_files = 0
    for path in files:
        report = run_test_file(path, context)
        cases += report.cases
        failed_cases += report.failed_cases
        broken_files += 1 if report.failures and not report.failed_cases else 0
        if as_json:
            summary = {"file": str(path), "cases": report.cases, "failed": report.failed_cases}
            click.echo(json.dumps(summary | {"failures": report.failures}, ensure_ascii=False))
        else:
            for line in report.failures:
                click.echo(line, err=True)
    if failed_cases or broken_files:
        unusable = f", {broken_files} test file(s) unusable" if broken_files else ""
        fail(f"{failed_cases} of {cases} test case(s) failed{unusable}")
    if not as_json:
        click.echo(f"ok: {cases} test case(s) in {len(files)} file(s) passed")


EXIT_DIFFERENT = 3
_MARKS = {ChangeKind.ADDED: "+", ChangeKind.CHANGED: "~", ChangeKind.REMOVED: "-"}


@click.command("diff")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path), metavar="FILE..."
)
@click.option("--prune", is_flag=True, help="Also list the rules on the topic that the files no longer have.")
@click.option("--exit-code", is_flag=True, help="Exit 3 when there are differences (0 when in sync).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per differing rule.")
@pass_state
def diff_command(
    state: CliState, files: tuple[Path, ...], prune: bool, exit_code: bool, as_json: bool
) -> None:
    """Show what `eventmail rules apply` would change on the rules topic.

    Lists rules the files add (+), change (~, field by field) and, with --prune, the rules on the
    topic that no file has (-, which `rules apply --prune` deletes). Passwords are compared by what
    they open to (a fresh seal of the same password is no change) and never shown. Exit 1 on invalid
    files; with --exit-code, exit 3 when the topic differs from the files and 0 when in sync.
    """
    settings = state.settings()
    rules = [rule for _, rule in validated_rules(settings, files)]
    changes = diff_rules(rules, topic_rules(settings), settings.secret_key, prune=prune)
    for change in changes:
        if as_json:
            click.echo(json.dumps(change.as_dict(), ensure_ascii=False))
            continue
        click.echo(f"{_MARKS[change.kind]} {change.rule_id} ({change.kind.value})")
        for field_change in change.fields:
            click.echo(f"    {field_change.describe()}")
    if not as_json:
        click.echo(f"{len(changes)} rule(s) differ" if changes else "in sync: no differences", err=True)
    if changes and exit_code:
        raise SystemExit(EXIT_DIFFERENT)


@click.command("history")
@click.argument("rule_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per version.")
@pass_state
def history_command(state: CliState, rule_id: str, as_json: bool) -> None:
    """The versions of a rule still on the rules topic, oldest first.

    For each: partition and offset, time, author (the eventmail.author header that `rules apply` and
    `rules delete` record) and what changed from the version before. The rules topic is compacted, so
    versions older than the first shown may have been removed. Exit 1 when the topic has no record
    of the rule.
    """
    settings = state.settings()
    versions = rule_history(settings, rule_id)
    if not versions:
        fail(f"no record of rule {rule_id} on {settings.topics.rules}")
    for version in versions:
        if as_json:
            click.echo(json.dumps(version.as_dict(), ensure_ascii=False))
            continue
        when = _time(version.timestamp_ms)
        head = f"{version.partition}:{version.offset}  {when}  {version.author or 'author unknown'}"
        if version.deleted:
            click.echo(f"{head}  deleted")
        elif version.invalid is not None:
            click.echo(f"{head}  invalid record (ignored by the service): {version.invalid}")
        elif version.first:
            click.echo(f"{head}  added")
        else:
            click.echo(
                f"{head}  changed {len(version.changes)} field(s)" if version.changes else f"{head}  same"
            )
            for change in version.changes:
                click.echo(f"    {change.describe()}")
    if not as_json:
        topic = settings.topics.rules
        click.echo(
            f"{len(versions)} version(s); older ones may have been removed by compaction of {topic}", err=True
        )


def _time(timestamp_ms: int | None) -> str:
    if timestamp_ms is None:
        return "time unknown"
    return (
        datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


@click.command("backtest")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path), metavar="FILE..."
)
@click.option("--since", type=DURATION, required=True, help="How far back to replay: 30m, 24h, 7d ...")
@click.option("--until", "until", type=DURATION, help="Stop this long before now (default: now).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per rule.")
@pass_state
def backtest_command(
    state: CliState, files: tuple[Path, ...], since: float, until: float | None, as_json: bool
) -> None:
    """Replay the events still on the event topics through rules, without sending anything.

    Reads the LMS and/or Call Logic topics (the platforms of the rules) from --since to the end (or to
    --until before now) with no consumer group and no commits, and reports per rule: events read,
    matched, mails it would have sent, the first few subjects and the failures to build a mail. The
    rules are evaluated as written in the files, whether or not they are on the rules topic.
    """
    settings = state.settings()
    rules = [rule for _, rule in validated_rules(settings, files)]
    now = time.time()
    since_ms = int((now - since) * 1000)
    until_ms = int((now - until) * 1000) if until is not None else None
    with Progress(
        TextColumn("reading events"),
        BarColumn(),
        TextColumn("{task.completed} read"),
        console=Console(stderr=True),
        disable=as_json or not sys.stderr.isatty(),
        transient=True,
    ) as bar:
        task = bar.add_task("read", total=None)
        report = backtest(settings, rules, since_ms, until_ms, progress=lambda n: bar.advance(task, n))
    if as_json:
        for result in report.rules.values():
            click.echo(json.dumps(result.as_dict(), ensure_ascii=False))
        return
    for platform, count in sorted(report.events.items()):
        bad = report.undecodable.get(platform, 0)
        click.echo(f"{platform.value}: {count} record(s) read, {bad} not valid events")
    for result in report.rules.values():
        click.echo(
            f"{result.rule_id}: {result.events_read} event(s), {result.matched} matched, "
            f"{result.mails} mail(s), {result.failures} failure(s)"
        )
        for subject in result.subjects:
            click.echo(f"    subject: {subject}")
        for failure in result.failure_samples:
            click.echo(f"    failed: {failure}")


def register(group: click.Group) -> None:
    rules = group.commands["rules"]
    assert isinstance(rules, click.Group)
    for command in (preview_command, test_command, diff_command, backtest_command, history_command):
        rules.add_command(command)
