"""Checks of a rule's subject and body templates against the placeholders of its platform.

Two modes, chosen by the rule's ``use_twig``:

- ``false`` (plain): the text may only contain ``{{ name }}`` substitutions, where ``name`` is a
  placeholder of the platform or ``data.KEY``; any other ``{{ ... }}``, ``{% ... %}`` or ``{# ... #}``
  is an error. :data:`PLAIN_PLACEHOLDER` is the grammar the renderer substitutes.
- ``true`` (Twig-style): the text must compile in the renderer's sandbox (:mod:`consumer.mail.sandbox`,
  a jinja2 ``SandboxedEnvironment`` with its allowlist of filters), so a template that validates also
  renders; every variable it reads from outside must be a placeholder of the platform or ``data``.

This module only parses and compiles templates; it never renders one and never sees event data.
"""

from __future__ import annotations

import difflib
import re

from jinja2 import TemplateSyntaxError, meta

from consumer.events.placeholders import DATA_PREFIX, placeholders_for
from consumer.events.triggers import Platform
from consumer.mail.sandbox import forbidden_construct, sandbox

#: ``{{ name }}`` or ``{{ data.KEY }}`` (spaces inside the braces optional); group 1 is the name.
PLAIN_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_.-]+)?)\s*\}\}")
_ANY_EXPRESSION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_TAG_START = re.compile(r"\{[%#]")
_DATA = DATA_PREFIX.rstrip(".")


def suggestion(name: str, candidates: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the nearest candidate, or an empty string."""
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown(name: str, platform: Platform) -> str | None:
    known = placeholders_for(platform)
    if name in known:
        return None
    if name.startswith(DATA_PREFIX) and len(name) > len(DATA_PREFIX):
        return None
    hint = suggestion(name, [*sorted(known), f"{DATA_PREFIX}KEY"])
    if not hint:
        hint = f"; see `eventmail placeholders --platform {platform.value}`"
    return f"unknown placeholder {name!r} for {platform.value}{hint}"


def plain_problems(text: str, platform: Platform) -> list[str]:
    """Problems of a template used without Twig: only ``{{ name }}`` substitutions."""
    problems: list[str] = []
    for match in _ANY_EXPRESSION.finditer(text):
        whole = match.group(0)
        plain = PLAIN_PLACEHOLDER.fullmatch(whole)
        if plain is None:
            shown = whole if len(whole) <= 40 else whole[:37] + "..."
            problems.append(
                f"only {{{{ name }}}} substitutions are allowed when use_twig is false (found {shown!r})"
            )
            continue
        unknown = _unknown(plain.group(1), platform)
        if unknown:
            problems.append(unknown)
    rest = _ANY_EXPRESSION.sub("", text)
    if "{{" in rest:
        problems.append("'{{' without a closing '}}'")
    tag = _TAG_START.search(rest)
    if tag:
        problems.append(f"template tags ({tag.group(0)!r}) need use_twig: true")
    return problems


def twig_problems(text: str, platform: Platform) -> list[str]:
    """Problems of a template used with Twig: it must parse, and read only known placeholders."""
    environment = sandbox(autoescape=False)
    try:
        ast = environment.parse(text)
        environment.compile(ast)  # filters outside the sandbox's allowlist show up here
    except TemplateSyntaxError as exc:
        return [f"template syntax error on line {exc.lineno}: {exc.message}"]
    forbidden = forbidden_construct(ast)
    problems: list[str] = [forbidden] if forbidden else []
    for name in sorted(meta.find_undeclared_variables(ast)):
        if name == _DATA:
            continue
        unknown = _unknown(name, platform)
        if unknown:
            problems.append(unknown)
    return problems


def template_problems(text: str, platform: Platform, use_twig: bool) -> list[str]:
    return twig_problems(text, platform) if use_twig else plain_problems(text, platform)


def plain_names(text: str) -> list[str]:
    """The placeholder names a plain template substitutes, in order of appearance."""
    return [m.group(1) for m in PLAIN_PLACEHOLDER.finditer(text)]
