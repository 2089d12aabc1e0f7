"""Rendering a rule's subject and body for one event.

Two modes, chosen by the rule's ``use_twig``:

- ``false``: only ``{{ name }}`` substitution (the event's top-level fields, ``rule_id``, ``rule_name``
  and ``{{ data.KEY }}``), done by a regular expression; no template code runs, any other text is kept
  as it is.
- ``true``: a Twig-style template (conditionals, loops, filters such as ``date``, ``number`` and
  ``money``) run in the sandbox of :mod:`consumer.mail.sandbox`, bounded in time and size.

HTML bodies are escaped (event values can never inject markup); subjects and text bodies are not.
A missing value renders empty, and :class:`Rendered` lists which placeholders were empty. Templates
are compiled once per (text, mode, escaping) and cached. Errors are :class:`RenderError` naming the
part (subject or body). This module never sends anything and never evaluates a template outside the
sandbox's budget.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC
from enum import StrEnum
from typing import Any

from jinja2 import Template, TemplateError
from jinja2.exceptions import SecurityError

from consumer.events.model import Event
from consumer.mail.errors import RenderError
from consumer.mail.htmltext import html_to_text
from consumer.mail.sandbox import (
    DEFAULT_LIMITS,
    DataMap,
    RenderLimits,
    forbidden_construct,
    render_collecting,
    sandbox,
)

#: ``{{ name }}`` or ``{{ data.KEY }}`` (the grammar rule validation accepts for plain templates).
PLAIN_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_.-]+)?)\s*\}\}")
DATA_PREFIX = "data."
#: Template texts longer than this are refused before compiling.
MAX_TEMPLATE_CHARS = 200_000


class ContentType(StrEnum):
    TEXT = "text"
    HTML = "html"
    ALL = "all"  # multipart/alternative: the HTML body plus a text part derived from it


@dataclass(frozen=True)
class Rendered:
    """A rendered mail: ``text`` and/or ``html`` set according to the content type."""

    subject: str
    text: str | None
    html: str | None
    #: Placeholders that were missing or empty in the event, sorted (e.g. ``["data.city", "lead_id"]``).
    empty_placeholders: tuple[str, ...] = ()


def template_values(event: Event, rule_id: str, rule_name: str | None = None) -> dict[str, Any]:
    """What a template may read for ``event``: every field (None and "" left out, so they count as
    missing), ``rule_id``, ``rule_name`` and ``data`` (the event's data map)."""
    values: dict[str, Any] = {}
    for name, value in event:
        if name == "data" or value is None or value == "":
            continue
        if name == "occurred_at":
            stamp = value.astimezone(UTC).isoformat(timespec="milliseconds")
            values[name] = stamp.replace("+00:00", "Z")
        elif isinstance(value, StrEnum):
            values[name] = value.value
        else:
            values[name] = value
    values["rule_id"] = rule_id
    if rule_name:
        values["rule_name"] = rule_name
    values["data"] = DataMap({k: v for k, v in event.data.items() if v != ""})
    return values


_FIELDS = frozenset(Event.model_fields) - {"data"}


class PlainValues(Mapping[str, Any]):
    """:func:`template_values` of one event, each value made when a template reads it: a plain
    template reads a few names, and making every value of every mail was a tenth of its rendering.
    The same values (a property test holds them to :func:`template_values`)."""

    __slots__ = ("_data", "_event", "_rule_id", "_rule_name")

    def __init__(self, event: Event, rule_id: str, rule_name: str | None = None) -> None:
        self._event = event
        self._rule_id = rule_id
        self._rule_name = rule_name
        self._data: DataMap | None = None

    def get(self, name: str, default: Any = None) -> Any:
        if name == "data":
            if self._data is None:
                self._data = DataMap({k: v for k, v in self._event.data.items() if v != ""})
            return self._data
        if name == "rule_id":
            return self._rule_id
        if name == "rule_name" and self._rule_name:
            return self._rule_name
        if name not in _FIELDS:
            return default
        value = getattr(self._event, name)
        if value is None or value == "":
            return default
        if name == "occurred_at":
            return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if isinstance(value, StrEnum):
            return value.value
        return value

    def __getitem__(self, name: str) -> Any:
        missing = object()
        value = self.get(name, missing)
        if value is missing:
            raise KeyError(name)
        return value

    def _names(self) -> list[str]:
        return list(template_values(self._event, self._rule_id, self._rule_name))

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


def _plain_text(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


class CompiledTemplate:
    """A template ready to render many times (thread-safe, immutable once built)."""

    def __init__(self, render: Callable[[Mapping[str, Any], RenderLimits], tuple[str, set[str]]]) -> None:
        self._render = render

    def render(
        self, values: Mapping[str, Any], limits: RenderLimits = DEFAULT_LIMITS
    ) -> tuple[str, frozenset[str]]:
        """(the rendered text, the names of placeholders that rendered empty)."""
        text, empties = self._render(values, limits)
        return text, frozenset(empties)


def _compile_plain(text: str, autoescape: bool) -> CompiledTemplate:
    pieces: list[str] = []  # literal, name, literal, name, ..., literal
    last = 0
    for match in PLAIN_PLACEHOLDER.finditer(text):
        pieces += [text[last : match.start()], match.group(1)]
        last = match.end()
    pieces.append(text[last:])

    def render(values: Mapping[str, Any], limits: RenderLimits) -> tuple[str, set[str]]:
        out: list[str] = []
        empties: set[str] = set()
        data = values.get("data") or {}
        for index, piece in enumerate(pieces):
            if index % 2 == 0:
                out.append(piece)
                continue
            if piece.startswith(DATA_PREFIX):
                value = data.get(piece[len(DATA_PREFIX) :])
            else:
                value = values.get(piece) if "." not in piece else None
            if value is None or value == "":
                empties.add(piece)
                continue
            shown = _plain_text(value)
            out.append(html.escape(shown) if autoescape else shown)
        rendered = "".join(out)
        if len(rendered) > limits.max_output_chars:
            raise RenderError(f"output is longer than {limits.max_output_chars:,} characters")
        return rendered, empties

    return CompiledTemplate(render)


def _compile_twig(text: str, autoescape: bool) -> CompiledTemplate:
    env = sandbox(autoescape)
    try:
        ast = env.parse(text)
    except TemplateError as exc:
        raise RenderError(f"template syntax error: {_jinja_message(exc)}") from None
    problem = forbidden_construct(ast)
    if problem:
        raise RenderError(f"template refused: {problem}")
    try:
        template: Template = env.from_string(ast)
    except TemplateError as exc:
        raise RenderError(f"template error: {_jinja_message(exc)}") from None

    def render(values: Mapping[str, Any], limits: RenderLimits) -> tuple[str, set[str]]:
        chunks: Callable[[], Iterable[str]] = lambda: template.generate(dict(values))  # noqa: E731
        try:
            return render_collecting(limits, chunks)
        except RenderError:
            raise
        except SecurityError as exc:
            raise RenderError(f"template refused: {exc}") from None
        except RecursionError:
            raise RenderError("template recursion is too deep") from None
        except TemplateError as exc:
            raise RenderError(f"template error: {_jinja_message(exc)}") from None
        except MemoryError:
            raise RenderError("template needs too much memory") from None
        except Exception as exc:  # a template is user code: any failure is a render error
            raise RenderError(f"template error: {type(exc).__name__}: {str(exc)[:200]}") from None

    return CompiledTemplate(render)


def _jinja_message(exc: TemplateError) -> str:
    line = getattr(exc, "lineno", None)
    message = (exc.message or str(exc))[:200]
    return f"line {line}: {message}" if line else message


@functools.lru_cache(maxsize=4096)
def compile_template(text: str, use_twig: bool, autoescape: bool = False) -> CompiledTemplate:
    """Compile (and cache) one template; raises :class:`RenderError` when it cannot be compiled."""
    if len(text) > MAX_TEMPLATE_CHARS:
        raise RenderError(f"template is longer than {MAX_TEMPLATE_CHARS:,} characters")
    if use_twig:
        return _compile_twig(text, autoescape)
    return _compile_plain(text, autoescape)


def render_template(
    text: str,
    values: Mapping[str, Any],
    *,
    use_twig: bool,
    autoescape: bool = False,
    part: str = "template",
    limits: RenderLimits = DEFAULT_LIMITS,
) -> tuple[str, frozenset[str]]:
    """Render one template; a :class:`RenderError` is prefixed with ``part`` (``subject``, ``body``)."""
    try:
        return compile_template(text, use_twig, autoescape).render(values, limits)
    except RenderError as exc:
        raise RenderError(f"{part}: {exc}") from None


def render(
    event: Event,
    *,
    subject: str,
    body: str,
    use_twig: bool,
    content_type: ContentType | str = ContentType.TEXT,
    rule_id: str,
    rule_name: str | None = None,
    limits: RenderLimits = DEFAULT_LIMITS,
) -> Rendered:
    """Render a rule's subject and body for ``event`` (in this thread; the service renders Twig-style
    templates in a worker process: :mod:`consumer.mail.render_worker`)."""
    values = (
        PlainValues(event, rule_id, rule_name) if not use_twig else template_values(event, rule_id, rule_name)
    )
    return render_values(
        values,
        subject=subject,
        body=body,
        use_twig=use_twig,
        content_type=content_type,
        limits=limits,
    )


def render_values(
    values: Mapping[str, Any],
    *,
    subject: str,
    body: str,
    use_twig: bool,
    content_type: ContentType | str = ContentType.TEXT,
    limits: RenderLimits = DEFAULT_LIMITS,
) -> Rendered:
    """:func:`render` from the values :func:`template_values` gives."""
    try:
        kind = ContentType(content_type)
    except ValueError:
        raise RenderError(f"content_type: {content_type!r} is not text, html or all") from None
    subject_text, subject_empty = render_template(
        subject, values, use_twig=use_twig, part="subject", limits=limits
    )
    is_html = kind is not ContentType.TEXT
    body_text, body_empty = render_template(
        body, values, use_twig=use_twig, autoescape=is_html, part="body", limits=limits
    )
    empties = tuple(sorted(subject_empty | body_empty))
    subject_text = subject_text.strip()
    if kind is ContentType.TEXT:
        return Rendered(subject_text, body_text, None, empties)
    text = html_to_text(body_text) if kind is ContentType.ALL else None
    return Rendered(subject_text, text, body_text, empties)
