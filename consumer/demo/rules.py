"""The demo's rules: the examples of ``config/rules/examples/`` plus the demo's own rules of
``config/demo/``, copied into the output folder, validated and published like ``eventmail rules apply``.

The examples are used as they are, with one exception: a rule with a *manual* connection (its own
SMTP server, e.g. a partner's relay with STARTTLS and a ``secret:`` password) is pointed at the
demo's mail sink, which listens on 127.0.0.1 without TLS and takes mail without AUTH, so the copy
has no encryption, login or password. The copy says so in a comment at its top.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from consumer.demo.stack import DemoError, source_path
from consumer.rules.checks import RuleContext
from consumer.rules.matching import RuleIndex, compile_rule
from consumer.rules.model import Rule
from consumer.rules.publish import publish_rules
from consumer.rules.secrets import seal_rule
from consumer.rules.validation import load_documents, validate_files
from consumer.settings import Settings

EXAMPLES = Path("config") / "rules" / "examples"
DEMO_RULES = Path("config") / "demo"
RULE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class AppliedRules:
    files: list[Path]
    rules: list[Rule]

    @property
    def index(self) -> RuleIndex:
        return RuleIndex(compile_rule(rule) for rule in self.rules)


def rule_files() -> list[Path]:
    """The example rule files, then the demo's own."""
    out: list[Path] = []
    for folder in (EXAMPLES, DEMO_RULES):
        directory = source_path(folder)
        out += sorted(p for p in directory.iterdir() if p.suffix in RULE_SUFFIXES and p.is_file())
    return out


def _local(document: dict[str, Any], host: str, port: int) -> dict[str, Any]:
    """A rule document whose manual connection is the sink at ``host:port`` (no TLS, no AUTH)."""
    local = {"type": "manual", "host": host, "port": port, "encryption": "none"}
    return {**document, "action": {**document["action"], "connection": local}}


def prepare(folder: Path, sink_port: int, host: str = "127.0.0.1") -> list[Path]:
    """Copy the rule files into ``folder``; manual connections now point at the demo's sink."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        if stale.suffix in RULE_SUFFIXES:
            stale.unlink()
    written: list[Path] = []
    for source in rule_files():
        relative = source.relative_to(source_path("."))
        target = folder / source.name
        documents = load_documents(source)
        manual = [d for d in documents if d.get("action", {}).get("connection", {}).get("type") == "manual"]
        if not manual:
            target.write_text(
                f"# A copy of {relative}.\n" + source.read_text(encoding="utf-8"), encoding="utf-8"
            )
        else:
            local = [_local(d, host, port=sink_port) if d in manual else d for d in documents]
            header = (
                f"# A copy of {relative} for the demo:\n"
                f"# the manual connection points at the demo's SMTP sink ({host}:{sink_port}),\n"
                "# which has no TLS and takes mail without AUTH.\n"
            )
            body = yaml.safe_dump(local if len(local) > 1 else local[0], sort_keys=False, allow_unicode=True)
            target.write_text(header + body, encoding="utf-8")
        written.append(target)
    return written


def apply(settings: Settings, files: list[Path]) -> AppliedRules:
    """Validate every file (nothing is published if one rule is invalid), seal, publish."""
    validated, problems = validate_files(files, RuleContext.for_files(settings))
    if problems:
        raise DemoError("the demo rules are invalid: " + "; ".join(problems))
    rules = [seal_rule(rule, settings.secret_key) for _, rule in validated]
    publish_rules(settings, rules)
    return AppliedRules(files, rules)
