"""Checks of a rule's subject and body templates against the placeholders of its platform.

Two modes, chosen by the rule's ``use_twig``:

- ``false`` (plain): the text may only contain ``{{ name }}`` substitutions, where ``name`` is a
  placeholder of the platform or ``data.KEY``; any other ``{{ ... }}``, ``{% ... %}`` or ``{# ... #}``
  is an error. :data:`PLAIN_PLACEHOLDER` is the grammar the renderer substitutes.
- ``true`` (Twig-style): the text must compile in the renderer's sandbox (:mod:`consumer.mail.sandbox`,
  a jinja2 ``SandboxedEnvironment`` with its allowlist of filters), so a template that validates also
  renders; every variable it reads from outside must be a placeholder of the platform or ``data``.
  What the renderer would refuse whatever the event is refused here already, with the renderer's
  words (:func:`limit_problems`): a ``range()``, a width, a ``tojson`` indent or an exponent given as
  constants over the render limits, and a call of a method templates do not have.

This module only parses and compiles templates; it never renders one and never sees event data.
"""

from __future__ import annotations

import difflib
import inspect
import re
from typing import Any

from jinja2 import TemplateSyntaxError, meta, nodes
from jinja2.filters import FILTERS as JINJA_FILTERS

from consumer.events.placeholders import DATA_PREFIX, placeholders_for
from consumer.events.triggers import Platform
from consumer.mail.sandbox import (
    CALLABLE_METHODS,
    DEFAULT_LIMITS,
    MAX_EXPONENT,
    MAX_JSON_INDENT,
    WIDTH_ARGUMENTS,
    forbidden_construct,
    sandbox,
)

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
    problems += limit_problems(ast)
    for name in sorted(meta.find_undeclared_variables(ast)):
        if name == _DATA:
            continue
        unknown = _unknown(name, platform)
        if unknown:
            problems.append(unknown)
    return problems


_TOO_BIG = object()  # a constant expression over any limit (too big to compute here)


def _constant(node: nodes.Node) -> Any:
    """The value of a constant expression (numbers and strings, ``*``, ``**``, ``+``, ``-``), or None
    when it depends on the event; :data:`_TOO_BIG` when it is too big to compute."""
    if isinstance(node, nodes.Const):
        return node.value
    if isinstance(node, nodes.Neg):
        value = _constant(node.node)
        return -value if isinstance(value, int | float) else value if value is _TOO_BIG else None
    if isinstance(node, nodes.Pow | nodes.Mul | nodes.Add | nodes.Sub):
        left, right = _constant(node.left), _constant(node.right)
        if _TOO_BIG in (left, right):
            return _TOO_BIG
        if not (isinstance(left, int) and isinstance(right, int)):
            if isinstance(node, nodes.Mul) and {type(left), type(right)} == {str, int}:
                text, times = (left, right) if isinstance(left, str) else (right, left)
                return _TOO_BIG if len(text) * times > DEFAULT_LIMITS.max_output_chars else text * times
            return None
        if isinstance(node, nodes.Pow):
            return _TOO_BIG if right > MAX_EXPONENT or left.bit_length() * right > 4096 else left**right
        if isinstance(node, nodes.Mul):
            return _TOO_BIG if left.bit_length() + right.bit_length() > 4096 else left * right
        return left + right if isinstance(node, nodes.Add) else left - right
    return None


def _filter_arguments(node: nodes.Filter) -> dict[str, nodes.Expr]:
    """The constant-able arguments of a filter call by parameter name (the filtered value excluded)."""
    func = JINJA_FILTERS.get(node.name)
    if func is None:
        return {str(kw.key): kw.value for kw in node.kwargs}
    if getattr(func, "jinja_async_variant", False):
        func = func.__wrapped__
    params = list(inspect.signature(func).parameters)
    if getattr(func, "jinja_pass_arg", None) is not None:
        params = params[1:]
    named = dict(zip(params[1:], node.args, strict=False))
    named.update({str(kw.key): kw.value for kw in node.kwargs})
    return named


def _size(value: Any) -> int | None:
    if value is _TOO_BIG:
        return DEFAULT_LIMITS.max_output_chars + 1
    if isinstance(value, str):
        return len(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def limit_problems(ast: nodes.Template) -> list[str]:
    """What the renderer refuses whatever the event is, in the renderer's words."""
    limits = DEFAULT_LIMITS
    problems: list[str] = []
    for pow_node in ast.find_all(nodes.Pow):
        exponent = _constant(pow_node.right)
        if isinstance(exponent, int) and abs(exponent) > MAX_EXPONENT:
            problems.append(f"an exponent above {MAX_EXPONENT}")
    for mul in ast.find_all(nodes.Mul):
        operands = (_constant(mul.left), _constant(mul.right))
        if any(isinstance(o, str) for o in operands) and _constant(mul) is _TOO_BIG:
            problems.append(f"a repeated string or list of more than {limits.max_output_chars:,} characters")
    for call in ast.find_all(nodes.Call):
        target = call.node
        if isinstance(target, nodes.Name) and target.name == "range" and not call.kwargs:
            bounds = [_constant(arg) for arg in call.args]
            if _TOO_BIG in bounds and bounds:
                problems.append(f"range() of more than {limits.max_range:,} items")
            elif bounds and all(isinstance(b, int) for b in bounds) and len(bounds) <= 3:
                try:
                    items = len(range(*bounds))
                except ValueError:
                    items = 0
                if items > limits.max_range:
                    problems.append(f"range() of more than {limits.max_range:,} items")
        method = target.attr if isinstance(target, nodes.Getattr) else None
        # (names starting with "_" are refused by forbidden_construct)
        if method is not None and method not in CALLABLE_METHODS and not method.startswith("_"):
            problems.append(f"method {method!r} is not available in templates")
    for node in ast.find_all(nodes.Filter):
        named = _filter_arguments(node)
        for width in WIDTH_ARGUMENTS.get(node.name, ()):
            size = _size(_constant(named[width])) if width in named else None
            if size is not None and size > limits.max_range:
                problems.append(f"{node.name}: a width above {limits.max_range:,}")
        if node.name == "tojson" and "indent" in named:
            size = _size(_constant(named["indent"]))
            if size is not None and size > MAX_JSON_INDENT:
                problems.append(f"tojson: an indent above {MAX_JSON_INDENT}")
    return list(dict.fromkeys(problems))


def template_problems(text: str, platform: Platform, use_twig: bool) -> list[str]:
    return twig_problems(text, platform) if use_twig else plain_problems(text, platform)


def plain_names(text: str) -> list[str]:
    """The placeholder names a plain template substitutes, in order of appearance."""
    return [m.group(1) for m in PLAIN_PLACEHOLDER.finditer(text)]
