"""``eventmail rules``: validate rule files, publish them to the rules topic, delete and inspect rules.

Problems print one per line on stderr as ``FILE: rule ID: field.path: message`` (exit 1); usage
errors exit 2. Passwords are shown only as ``enc:…``, ``secret:NAME`` or ``***``.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
from pathlib import Path

import click
import yaml
from rich.console import Console

from consumer.cli.common import CliState, fail, pass_state
from consumer.cli.tables import TextTable
from consumer.errors import SecretError
from consumer.rules.checks import RuleContext
from consumer.rules.matching import CompiledRule, RuleIndex
from consumer.rules.model import RULE_ID_PATTERN, Rule
from consumer.rules.publish import check_topic, publish_rules, publish_tombstones
from consumer.rules.secrets import seal_rule
from consumer.rules.store import RuleStore
from consumer.rules.validation import validate_files
from consumer.settings import Settings

RULE_SUFFIXES = (".yaml", ".yml", ".json")
_FILES = click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path), metavar="FILE..."
)


def _expand(paths: tuple[Path, ...]) -> list[Path]:
    """Files as given; a directory stands for its *.yaml, *.yml and *.json files."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in RULE_SUFFIXES and p.is_file()))
        else:
            out.append(path)
    return out


def validated_rules(settings: Settings, files: tuple[Path, ...]) -> list[tuple[Path, Rule]]:
    paths = _expand(files)
    if not paths:
        fail("no rule files (*.yaml, *.yml, *.json) in the given directories")
    rules, errors = validate_files(paths, RuleContext.for_files(settings))
    if errors:
        for line in errors:
            click.echo(line, err=True)
        fail(f"{len(errors)} problem(s) in {len(paths)} file(s)")
    return rules


@click.group("rules")
def rules_group() -> None:
    """Validate, publish, delete and inspect rules.

    Rules live on the compacted rules topic (EVENTMAIL_TOPICS__RULES), keyed by rule id. A rule file
    holds one rule or a list of rules, in YAML or JSON; schemas/rule.schema.json describes them and
    config/rules/examples/ has one example per feature.
    """


@rules_group.command("validate")
@_FILES
@pass_state
def validate_command(state: CliState, files: tuple[Path, ...]) -> None:
    """Check rule files without publishing anything.

    Checks every field and how fields relate: triggers of the platform, level and product/campaign
    id, price filters, placeholders in subject and body, addresses, and that ESP connections exist
    in this deployment (EVENTMAIL_ESP_CONNECTIONS). A directory stands for its *.yaml/*.yml/*.json
    files. Exit 1 with one line per problem: FILE: rule ID: field.path: message.
    """
    rules = validated_rules(state.settings(), files)
    click.echo(f"ok: {len(rules)} rule(s) valid")


def default_author() -> str:
    """user@host of whoever runs the command (the ``eventmail.author`` header of rules records)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


_AUTHOR = click.option(
    "--author",
    default=default_author,
    show_default="user@host",
    help="Recorded in the eventmail.author header of every record written (rules history shows it).",
)


@rules_group.command("apply")
@_FILES
@click.option("--dry-run", is_flag=True, help="Validate and seal passwords, but publish nothing.")
@click.option(
    "--prune", is_flag=True, help="Also delete the rules on the topic that the files no longer have."
)
@click.option("--yes", is_flag=True, help="With --prune: delete without asking.")
@_AUTHOR
@pass_state
def apply_command(
    state: CliState, files: tuple[Path, ...], dry_run: bool, prune: bool, yes: bool, author: str
) -> None:
    """Validate rule files and publish them to the rules topic.

    Every rule of every file is validated first; if any is invalid nothing is published. A clear-text
    password of a manual connection is encrypted with EVENTMAIL_SECRET_KEY (stored as enc:...);
    secret:NAME passwords are published as they are and resolved by the service. Each rule is written
    with its id as the key and acknowledged by the brokers before this command exits 0. With --prune,
    rules on the topic that no file has are deleted (tombstones) after asking, or at once with --yes;
    `eventmail rules diff --prune` shows which first.
    """
    settings = state.settings()
    rules = validated_rules(settings, files)
    sealed: list[Rule] = []
    problems: list[str] = []
    for path, rule in rules:
        try:
            sealed.append(seal_rule(rule, settings.secret_key))
        except SecretError as exc:
            problems.append(f"{path}: rule {rule.id}: action.connection.password: {exc}")
    if problems:
        for line in problems:
            click.echo(line, err=True)
        fail("nothing published")
    pruned = sorted(set(topic_rules(settings)) - {rule.id for rule in sealed}) if prune else []
    if dry_run:
        for rule in sealed:
            click.echo(f"would apply {rule.id}")
        for rule_id in pruned:
            click.echo(f"would delete {rule_id}")
        return
    if pruned and not yes and not click.confirm(f"delete {len(pruned)} rule(s): {', '.join(pruned)}?"):
        fail("nothing published (answer y, or pass --yes)")
    for warning in check_topic(settings):
        click.echo(f"eventmail: warning: {warning}", err=True)
    for written in publish_rules(settings, sealed, author=author):
        where = f"{settings.topics.rules} partition {written.partition}, offset {written.offset}"
        click.echo(f"applied {written.rule_id} ({where})")
    for written in publish_tombstones(settings, pruned, author=author) if pruned else []:
        click.echo(f"deleted {written.rule_id}")


def _rule_id(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if not re.fullmatch(RULE_ID_PATTERN, value):
            raise click.BadParameter(f"{value!r} is not a rule id (1 to 128 of A-Z a-z 0-9 . _ -)")
    return values


@rules_group.command("delete")
@click.argument("rule_ids", nargs=-1, required=True, metavar="RULE_ID...", callback=_rule_id)
@_AUTHOR
@pass_state
def delete_command(state: CliState, rule_ids: tuple[str, ...], author: str) -> None:
    """Delete rules: write a tombstone (a record without value) for each id.

    Running services stop using the rules within a second. Deleting an id that has no rule is not
    an error.
    """
    settings = state.settings()
    for warning in check_topic(settings):
        click.echo(f"eventmail: warning: {warning}", err=True)
    for written in publish_tombstones(settings, list(rule_ids), author=author):
        click.echo(f"deleted {written.rule_id}")


def _read(settings: Settings) -> RuleIndex:
    """The rules topic read to its end, checked as stored (not against this machine's settings)."""
    store = RuleStore(settings, context=RuleContext(stored=True))
    index = store.load()
    for error in sorted(store.errors.values(), key=lambda e: e.rule_id):
        kept = "the previous version is shown" if error.rule_id in index else "no valid version"
        click.echo(
            f"eventmail: warning: invalid record at {error.topic}:{error.partition}:{error.offset} "
            f"({kept}): {error.message}",
            err=True,
        )
    return index


def topic_rules(settings: Settings) -> dict[str, Rule]:
    """The valid rules on the rules topic by id (read to its end)."""
    return {rule.rule_id: rule.rule for rule in _read(settings)}


def _document(rule: CompiledRule) -> dict[str, object]:
    """The rule as a document, passwords masked."""
    return rule.rule.model_dump(mode="json", exclude_none=True)


@rules_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One rule document per line (JSON), passwords masked.")
@pass_state
def list_command(state: CliState, as_json: bool) -> None:
    """List the rules on the rules topic (read to its end)."""
    index = _read(state.settings())
    if as_json:
        for rule in index:
            click.echo(json.dumps(_document(rule), separators=(",", ":"), ensure_ascii=False))
        return
    if not len(index):
        click.echo("no rules", err=True)
        return
    table = TextTable(title=f"{len(index)} rule(s)", expand=True)
    for column in ("ID", "Name", "Enabled", "Platform", "Scope", "Triggers", "Connection", "Recipients"):
        table.add_column(column, overflow="fold", no_wrap=column in ("ID", "Enabled", "Platform"))
    for rule in index:
        table.add_row(
            rule.rule_id,
            rule.name or "",
            "yes" if rule.enabled else "no",
            rule.platform.value,
            ":".join(rule.scope),
            ", ".join(rule.rule.triggers),
            rule.connection_label,
            ", ".join(a.email for a in rule.action.recipients),
        )
    Console().print(table)


@rules_group.command("get")
@click.argument("rule_id", callback=lambda c, p, v: _rule_id(c, p, (v,))[0])
@click.option("--json", "as_json", is_flag=True, help="JSON instead of YAML.")
@pass_state
def get_command(state: CliState, rule_id: str, as_json: bool) -> None:
    """Print one rule as it is in force (YAML, passwords masked)."""
    rule = _read(state.settings()).lookup(rule_id)
    if rule is None:
        fail(f"rule {rule_id} not found on {state.settings().topics.rules}")
    document = _document(rule)
    if as_json:
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        click.echo(f"# version {rule.version}")
        click.echo(yaml.safe_dump(document, sort_keys=False, allow_unicode=True).rstrip())


def register(group: click.Group) -> None:
    group.add_command(rules_group)
