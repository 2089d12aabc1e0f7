"""Rules on the wire: the record value is the rule document as UTF-8 JSON, the key is the rule id.

:func:`encode_rule` refuses a clear-text password (seal it first with
:func:`consumer.rules.secrets.seal_rule`); :func:`decode_rule` validates a record as stored, where a
clear-text password, a key that differs from the id or a document that is not JSON is invalid.
Never writes a clear-text password and never puts record contents into an error message.
"""

from __future__ import annotations

import hashlib
import json

from consumer.errors import SecretError
from consumer.rules.checks import RuleContext
from consumer.rules.model import Rule
from consumer.rules.secrets import has_clear_password
from consumer.rules.validation import RuleValidationError, rule_label, validate_rule


def rule_document(rule: Rule) -> dict[str, object]:
    """The rule as stored: JSON types, sealed passwords as written, unset optional fields left out."""
    return rule.model_dump(mode="json", exclude_none=True, context={"reveal_sealed": True})


def encode_rule(rule: Rule) -> bytes:
    if has_clear_password(rule):
        raise SecretError(f"rule {rule.id}: the password must be sealed (enc: or secret:) before publishing")
    return json.dumps(rule_document(rule), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def rule_version(rule: Rule) -> str:
    """A short content hash of the rule as stored: equal documents, equal versions."""
    document = json.dumps(rule_document(rule), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(document.encode()).hexdigest()[:16]


def decode_rule(key: bytes | None, value: bytes, context: RuleContext) -> Rule:
    """A record of the rules topic (not a tombstone) as a valid rule, or :class:`RuleValidationError`."""
    key_text = key.decode("utf-8", "replace") if key else None
    label = key_text or "?"
    try:
        data = json.loads(value.decode("utf-8"))
    except (UnicodeError, json.JSONDecodeError, RecursionError) as exc:
        raise RuleValidationError(
            label, [("", f"the record is not UTF-8 JSON ({type(exc).__name__})")]
        ) from None
    label = key_text or rule_label(data)
    rule = validate_rule(data, context, label)
    if key_text is None:
        raise RuleValidationError(rule.id, [("", "the record has no key (the key must be the rule id)")])
    if key_text != rule.id:
        raise RuleValidationError(key_text, [("id", f"{rule.id!r} differs from the record key {key_text!r}")])
    return rule
