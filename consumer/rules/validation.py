"""Validation entry points: rule documents from files or the topic, with one line per problem.

Every problem is reported as ``rule ID: field.path: message`` (:func:`problem_lines`); the CLI puts
``FILE: `` in front. Messages name fields and the offending non-secret values, never the input
document as a whole (it may hold a password).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from consumer.errors import RuleError
from consumer.rules.checks import Problem, RuleContext, cross_field_problems
from consumer.rules.model import Rule
from consumer.rules.templates import suggestion

#: Union tags pydantic puts into error paths after these fields; they are not fields of the document.
_UNION_FIELDS = {
    "connection": {"esp", "manual"},
    "price": {"gt_zero", "gt", "gte", "lt", "lte", "range"},
}


_PATTERN_MESSAGES = {
    "id": "must be 1 to 128 letters, digits, '.', '_' or '-'",
    "host": "must be a host name or an IP address",
}


class RuleValidationError(RuleError):
    """A rule document is invalid; ``problems`` holds every (field path, message)."""

    def __init__(self, rule_id: str, problems: Sequence[Problem]) -> None:
        self.rule_id = rule_id
        self.problems = list(problems)
        super().__init__("; ".join(self.lines()))

    def lines(self) -> list[str]:
        return problem_lines(self.rule_id, self.problems)


def problem_lines(rule_id: str, problems: Sequence[Problem]) -> list[str]:
    """``rule ID: field.path: message``, one per problem."""
    return [
        f"rule {rule_id}: {path}: {message}" if path else f"rule {rule_id}: {message}"
        for path, message in problems
    ]


def rule_label(data: Any, fallback: str = "?") -> str:
    """The id of a (possibly invalid) rule document, for messages."""
    if isinstance(data, dict):
        value = data.get("id")
        if isinstance(value, str | int) and str(value).strip():
            return str(value)[:128]
    return fallback


def validate_rule(data: Any, context: RuleContext | None = None, label: str | None = None) -> Rule:
    """The validated :class:`Rule`, or :class:`RuleValidationError` with every problem found."""
    if not isinstance(data, dict):
        raise RuleValidationError(label or "?", [("", "a rule must be a mapping of fields")])
    try:
        rule = Rule.model_validate(data)
    except ValidationError as exc:
        raise RuleValidationError(rule_label(data, label or "?"), validation_problems(exc)) from None
    # How the fields relate, once each is valid on its own.
    problems = cross_field_problems(rule, context or RuleContext())
    if problems:
        raise RuleValidationError(rule_label(data, label or "?"), problems)
    return rule


def validation_problems(exc: ValidationError) -> list[Problem]:
    """(field path, message) of every error of a rule ``ValidationError``."""
    out: list[Problem] = []
    for error in exc.errors(include_url=False, include_input=False):
        ctx = error.get("ctx") or {}
        out.append((_path(error["loc"]), _message(error["type"], error["loc"], error["msg"], ctx)))
    return out


def _path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if parts and parts[-1] in _UNION_FIELDS and part in _UNION_FIELDS[parts[-1]]:
            continue
        parts.append(str(part))
    return ".".join(parts)


def _known_fields() -> list[str]:
    from consumer.rules import model

    names: set[str] = set()
    for value in vars(model).values():
        if isinstance(value, type) and issubclass(value, model._Document):
            names.update(value.model_fields)
    return sorted(names)


def _message(kind: str, loc: tuple[int | str, ...], msg: str, ctx: dict[str, Any]) -> str:
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        field = str(loc[-1]) if loc else ""
        return f"unknown field{suggestion(field, _known_fields())}"
    if kind == "union_tag_invalid":
        return f"must be one of {ctx.get('expected_tags', '')} (got {ctx.get('tag')!r})"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        unit = "character(s)" if ctx.get("field_type") == "Value" else "item(s)"
        return f"{'needs at least' if kind == 'too_short' else 'allows at most'} {bound} {unit}"
    if kind == "string_pattern_mismatch":
        field = str(loc[-1]) if loc else ""
        return _PATTERN_MESSAGES.get(field, msg)
    if kind == "union_tag_not_found":
        return f"needs a {str(ctx.get('discriminator', 'type')).strip(chr(39))} field"
    return msg.removeprefix("Value error, ")


# --- files -----------------------------------------------------------------------------------------------


def load_documents(path: Path) -> list[Any]:
    """The rule documents of a YAML or JSON file: one mapping, a list, or several YAML documents."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise RuleError(f"{path}: cannot read: {exc}") from None
    documents: list[Any]
    if path.suffix.lower() == ".json":
        try:
            documents = [json.loads(text)]
        except json.JSONDecodeError as exc:
            raise RuleError(f"{path}: not valid JSON: line {exc.lineno}: {exc.msg}") from None
        except RecursionError:
            raise RuleError(f"{path}: not a rule file: nested too deeply") from None
    else:
        try:
            documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise RuleError(f"{path}: not valid YAML: {where}{problem}") from None
        except RecursionError:
            raise RuleError(f"{path}: not a rule file: nested too deeply") from None
    out: list[Any] = []
    for document in documents:
        if isinstance(document, list):
            out.extend(document)
        elif isinstance(document, dict):
            out.append(document)
        else:
            raise RuleError(f"{path}: expected a rule (a mapping) or a list of rules")
    return out


def iter_file_rules(
    paths: Sequence[Path], context: RuleContext
) -> Iterator[tuple[Path, str, Rule | None, list[str]]]:
    """(file, rule label, the rule or None, problem lines) for every rule document of the files."""
    for path in paths:
        try:
            documents = load_documents(path)
        except RuleError as exc:
            yield path, "?", None, [str(exc).removeprefix(f"{path}: ")]
            continue
        if not documents:
            yield path, "?", None, ["no rules in this file"]
        for position, data in enumerate(documents, start=1):
            label = rule_label(data, f"#{position}")
            try:
                yield path, label, validate_rule(data, context, label), []
            except RuleValidationError as exc:
                yield path, label, None, exc.lines()


def validate_files(paths: Sequence[Path], context: RuleContext) -> tuple[list[tuple[Path, Rule]], list[str]]:
    """(file, rule) of every valid rule of the files, and ``FILE: rule ID: field: message`` per problem.

    Two documents with the same id in one batch are a problem too (the later would silently win).
    """
    rules: list[tuple[Path, Rule]] = []
    errors: list[str] = []
    first_seen: dict[str, Path] = {}
    for path, label, rule, problems in iter_file_rules(paths, context):
        errors.extend(f"{path}: {line}" for line in problems)
        if rule is None:
            continue
        if rule.id in first_seen:
            errors.append(
                f"{path}: rule {label}: id: defined twice in this batch (first in {first_seen[rule.id]})"
            )
            continue
        first_seen[rule.id] = path
        rules.append((path, rule))
    return rules, errors
