"""What ``eventmail rules apply`` would change on the rules topic, field by field.

Rules are compared as documents (the JSON of the model). Passwords are compared by what they open to
(an ``enc:`` token is decrypted with the deployment's key; a fresh seal of the same clear text is not a
change) and never shown: a differing password is reported as ``changed`` with no value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import SecretStr

from consumer.errors import SecretError
from consumer.rules.model import ManualConnection, Rule
from consumer.rules.secrets import PasswordKind, decrypt_password, password_kind

PASSWORD_PATH = "action.connection.password"  # noqa: S105 (a field path)
_MISSING = object()


class ChangeKind(StrEnum):
    ADDED = "added"
    CHANGED = "changed"
    REMOVED = "removed"


@dataclass(frozen=True)
class FieldChange:
    path: str
    before: Any = None
    after: Any = None
    #: True for passwords: the values are not shown.
    hidden: bool = False

    def describe(self) -> str:
        if self.hidden:
            return f"{self.path}: changed"
        return f"{self.path}: {_show(self.before)} -> {_show(self.after)}"

    def as_dict(self) -> dict[str, Any]:
        if self.hidden:
            return {"path": self.path, "changed": True}
        return {"path": self.path, "from": _plain(self.before), "to": _plain(self.after)}


@dataclass(frozen=True)
class RuleChange:
    rule_id: str
    kind: ChangeKind
    fields: tuple[FieldChange, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "change": self.kind.value,
            "fields": [f.as_dict() for f in self.fields],
        }


def _show(value: Any) -> str:
    return "(none)" if value is _MISSING else repr(value)


def _plain(value: Any) -> Any:
    return None if value is _MISSING else value


def _opened(password: SecretStr, secret_key: SecretStr | None) -> str:
    value = password.get_secret_value()
    if password_kind(value) is PasswordKind.ENCRYPTED:
        try:
            return decrypt_password(password, secret_key).get_secret_value()
        except SecretError:
            return value  # cannot open: compared as sealed
    return value


def document(rule: Rule) -> dict[str, Any]:
    """The rule as compared: its JSON document, the password left out (compared separately)."""
    doc = rule.model_dump(mode="json", exclude_none=True)
    connection = doc.get("action", {}).get("connection", {})
    connection.pop("password", None)
    return doc


def field_changes(before: Any, after: Any, path: str = "") -> list[FieldChange]:
    """Every leaf that differs between two documents, as dotted paths (lists compared whole)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[FieldChange] = []
        for key in list(before) + [k for k in after if k not in before]:
            sub = f"{path}.{key}" if path else str(key)
            out.extend(field_changes(before.get(key, _MISSING), after.get(key, _MISSING), sub))
        return out
    return [] if before == after else [FieldChange(path, before, after)]


def rule_changes(before: Rule, after: Rule, secret_key: SecretStr | None) -> list[FieldChange]:
    changes = field_changes(document(before), document(after))
    if _password(before, secret_key) != _password(after, secret_key):
        changes.append(FieldChange(PASSWORD_PATH, hidden=True))
    return changes


def _password(rule: Rule, secret_key: SecretStr | None) -> str | None:
    connection = rule.action.connection
    if not isinstance(connection, ManualConnection) or connection.password is None:
        return None
    return _opened(connection.password, secret_key)


def diff_rules(
    files: Iterable[Rule], topic: Mapping[str, Rule], secret_key: SecretStr | None, *, prune: bool = False
) -> list[RuleChange]:
    """Added and changed rules of the files against the topic, and with ``prune`` the topic's rules the
    files no longer have; sorted by rule id."""
    out: list[RuleChange] = []
    seen: set[str] = set()
    for rule in files:
        seen.add(rule.id)
        current = topic.get(rule.id)
        if current is None:
            out.append(RuleChange(rule.id, ChangeKind.ADDED))
            continue
        changes = rule_changes(current, rule, secret_key)
        if changes:
            out.append(RuleChange(rule.id, ChangeKind.CHANGED, tuple(changes)))
    if prune:
        out.extend(RuleChange(rule_id, ChangeKind.REMOVED) for rule_id in topic if rule_id not in seen)
    return sorted(out, key=lambda change: change.rule_id)
