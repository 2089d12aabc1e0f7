"""``eventmail rules preview`` and ``eventmail rules test``: see what a rule does before it mails anyone.

Both work on rule files and events given on the command line; they read no topic and send nothing.
The mail shown is built by the function the consumer sends with, the event decoded by its decoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from consumer.cli.common import CliState, fail, pass_state
from consumer.cli.rules import validated_rules
from consumer.errors import CodecError
from consumer.events.codec import EventDecoder
from consumer.events.triggers import Platform
from consumer.mail.errors import MessageError, RenderError
from consumer.rules.checks import RuleContext
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
        result = preview(compile_rule(rule), event)
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


def register(group: click.Group) -> None:
    rules = group.commands["rules"]
    assert isinstance(rules, click.Group)
    rules.add_command(preview_command)
    rules.add_command(test_command)
