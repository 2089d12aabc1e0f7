"""A validated rule held as its JSON document, materialised as a :class:`Rule` only when needed.

A validated pydantic :class:`Rule` takes several kilobytes; its JSON document a few hundred bytes. A
:class:`~consumer.rules.matching.CompiledRule` keeps the document (:func:`compact_document`) and
matching never needs more: the rule itself is materialised (:func:`materialise`) when a matched
rule's mail is rendered and sent, or when a rule is explained, previewed or shown. A bounded LRU
cache (:data:`CACHE_SIZE` rules) keeps the rules in use materialised, so a hot rule is not
validated again on every event.

The document is the rule's fields as set (``exclude_unset``), in JSON, with sealed passwords as
written (``enc:``/``secret:``): validating it again gives a rule equal to the original, with the same
``model_fields_set`` at every level. A rule with a clear-text password cannot be written so (its
JSON form masks the password); :func:`compact_document` returns None for it and the caller keeps
the rule itself. Rules read from the rules topic never carry one (it is invalid there).

Materialising validates the fields again (``Rule.model_validate_json``) but not the checks across
fields of :func:`~consumer.rules.validation.validate_rule`: the document comes from a rule that passed
them, and every field validator gives back what it is given once normalised, so it cannot fail.
"""

from __future__ import annotations

from functools import lru_cache

from consumer.rules.model import Rule
from consumer.rules.secrets import has_clear_password

#: How many materialised rules the cache keeps (about 7 KB each).
CACHE_SIZE = 4096

_REVEAL = {"reveal_sealed": True}


def compact_document(rule: Rule) -> bytes | None:
    """The document :func:`materialise` turns back into an equal rule; None for a clear-text password."""
    if has_clear_password(rule):
        return None
    return rule.model_dump_json(exclude_unset=True, context=_REVEAL).encode()


@lru_cache(maxsize=CACHE_SIZE)
def materialise(document: bytes) -> Rule:
    """The rule of a document made by :func:`compact_document` (cached; equal documents, one rule)."""
    return Rule.model_validate_json(document)


def cache_clear() -> None:
    materialise.cache_clear()


def cache_size() -> int:
    """How many rules are materialised in the cache now."""
    return materialise.cache_info().currsize
