"""Unit tests for rules (``eventmail rules test``), in the spirit of ``promtool test rules``.

A test file names rule files (relative to itself) and cases: an event of a platform and what it must
do, as the rules that match it (``expect: []`` for none) and, optionally per rule, the exact subject,
the recipients and text the body contains::

    rule_files: [rules/high-value.yaml]
    tests:
      - name: a high-value sale mails finance
        platform: lms
        event: {event_id: e1, trigger: lead_sold, occurred_at: "2026-01-01T00:00:00Z", price: 150.5}
        expect:
          - rule: r-sold-high
            subject: "Lead L1 sold for 150.5 USD"
            to: [ops@example.com]
            body_contains: ["Buyer"]

Events are decoded by the consumer's decoder and mails built by the function the consumer sends
with, so a passing test says what the service will do. Every difference is one line
``FILE: test NAME: rule ID: what differs``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from consumer.errors import CodecError, RuleError, describe_validation
from consumer.events.codec import EventDecoder
from consumer.events.triggers import Platform
from consumer.mail.errors import MessageError, RenderError
from consumer.rules.checks import RuleContext
from consumer.rules.explain import rejection
from consumer.rules.matching import CompiledRule, RuleIndex, compile_rule
from consumer.rules.preview import MailPreview, preview
from consumer.rules.validation import validate_files


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExpectedMail(_Strict):
    rule: str = Field(min_length=1)
    subject: str | None = None
    to: tuple[str, ...] | None = None
    cc: tuple[str, ...] | None = None
    bcc: tuple[str, ...] | None = None
    body_contains: tuple[str, ...] = ()


class RuleTestCase(_Strict):
    name: str = Field(min_length=1)
    platform: Platform
    event: dict[str, Any]
    expect: tuple[ExpectedMail, ...]


class RuleTestFile(_Strict):
    rule_files: tuple[str, ...] = Field(min_length=1)
    tests: tuple[RuleTestCase, ...] = Field(min_length=1)


@dataclass
class TestReport:
    """Per test file: how many cases ran and one line per failure."""

    path: Path
    cases: int = 0
    failed_cases: int = 0
    failures: list[str] = field(default_factory=list)


def run_test_file(path: Path, context: RuleContext) -> TestReport:
    """Run every case of one test file; problems with the file itself are failures too."""
    report = TestReport(path)
    try:
        spec = _load(path)
    except RuleError as exc:
        report.failures.append(str(exc))
        return report
    rule_paths = [path.parent / name for name in spec.rule_files]
    missing = [str(p) for p in rule_paths if not p.is_file()]
    if missing:
        report.failures.append(f"{path}: rule_files: no such file: {', '.join(missing)}")
        return report
    rules, errors = validate_files(rule_paths, context)
    if errors:
        report.failures.extend(errors)
        return report
    index = RuleIndex(compile_rule(rule) for _, rule in rules)
    decoder = EventDecoder()
    for case in spec.tests:
        report.cases += 1
        lines = [f"{path}: test {case.name!r}: {line}" for line in _run_case(case, index, decoder)]
        if lines:
            report.failed_cases += 1
            report.failures.extend(lines)
    return report


def _load(path: Path) -> RuleTestFile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError) as exc:
        raise RuleError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise RuleError(f"{path}: not valid YAML: {where}{getattr(exc, 'problem', None) or exc}") from None
    try:
        return RuleTestFile.model_validate(data)
    except ValidationError as exc:
        where, message = describe_validation(exc)
        raise RuleError(f"{path}: {where}: {message}" if where else f"{path}: {message}") from None


def _run_case(case: RuleTestCase, index: RuleIndex, decoder: EventDecoder) -> list[str]:
    try:
        value = json.dumps(case.event, default=str).encode()
        event = decoder.decode(case.platform, value)
    except CodecError as exc:
        return [f"event: {exc}"]
    matched = {rule.rule_id: rule for rule in index.match(event)}
    out: list[str] = []
    expected_ids = [mail.rule for mail in case.expect]
    for mail in case.expect:
        rule = matched.get(mail.rule)
        if rule is None:
            known = index.lookup(mail.rule)
            why = "not in rule_files" if known is None else rejection(known, event)
            out.append(f"rule {mail.rule}: expected a mail, the rule does not match ({why})")
            continue
        out.extend(f"rule {mail.rule}: {line}" for line in _compare(rule, event, mail))
    for rule_id in sorted(set(matched) - set(expected_ids)):
        out.append(f"rule {rule_id}: matched and would send a mail, not expected")
    return out


def _compare(rule: CompiledRule, event: Any, mail: ExpectedMail) -> list[str]:
    try:
        result = preview(rule, event)
    except (RenderError, MessageError) as exc:
        return [f"the mail cannot be built: {exc}"]
    assert isinstance(result, MailPreview)  # the rule matched
    out: list[str] = []
    if mail.subject is not None and result.subject != mail.subject:
        out.append(f"subject is {result.subject!r}, expected {mail.subject!r}")
    for name in ("to", "cc", "bcc"):
        wanted: Sequence[str] | None = getattr(mail, name)
        got: tuple[str, ...] = getattr(result, name)
        if wanted is not None and sorted(a.lower() for a in got) != sorted(a.lower() for a in wanted):
            out.append(f"{name} is {list(got)}, expected {list(wanted)}")
    bodies = "\n".join(body for _, body in result.parts)
    for text in mail.body_contains:
        if text not in bodies:
            out.append(f"body does not contain {text!r}")
    return out
