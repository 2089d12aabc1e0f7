"""The sandbox that renders Twig-style (``use_twig: true``) templates.

A jinja2 ``ImmutableSandboxedEnvironment`` narrowed further: no loaders (no include, import or
extends), no ``self``, no attribute or item whose name starts with ``_``, only an allowlist of filters
and of ``str``/``dict`` methods (no ``str.format``, ``center`` and friends that build big strings), and
a :class:`Budget` that every render runs under. Generated code calls the budget on every block (each
loop iteration, each macro call) and for every piece of output, including output buffered inside
macros, so a hostile template hits a time or size limit instead of running for ever or filling memory.
String repetition, ``**``, ``+`` and ``~`` are checked before or right after they build a value.

This module must never give a template a way to reach Python internals, the file system or the network,
and never render without a budget.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jinja2 import ChainableUndefined, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.filters import FILTERS as JINJA_FILTERS
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from consumer.mail.errors import RenderError
from consumer.mail.filters import FILTERS as EVENTMAIL_FILTERS


@dataclass(frozen=True)
class RenderLimits:
    """Bounds of one template render."""

    #: Characters a rendered subject or body may have.
    max_output_chars: int = 1_000_000
    #: Characters produced in total, including output buffered in macros and blocks (counted again
    #: each time it is emitted) and strings built by ``~``, ``+`` and ``*``.
    max_work_chars: int = 4_000_000
    #: Wall-clock seconds one render may take.
    max_seconds: float = 1.0
    #: Items of one ``range()`` (and widths given to padding filters).
    max_range: int = 10_000


DEFAULT_LIMITS = RenderLimits()


class BudgetExceeded(RenderError):
    """A render went over its time or size limit."""


class Budget:
    """Time and size accounting of one render; see :class:`RenderLimits`."""

    __slots__ = ("deadline", "limits", "work")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.max_seconds
        self.work = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise BudgetExceeded(f"template took longer than {self.limits.max_seconds:g}s to render")

    def spend(self, chars: int) -> None:
        self.work += chars
        if self.work > self.limits.max_work_chars:
            raise BudgetExceeded(
                f"template produced more than {self.limits.max_work_chars:,} characters "
                f"(limit {self.limits.max_output_chars:,} of output)"
            )
        self.tick()

    def check_size(self, size: int, what: str) -> None:
        if size > self.limits.max_output_chars:
            raise BudgetExceeded(f"{what} of more than {self.limits.max_output_chars:,} characters")


_BUDGET: ContextVar[Budget | None] = ContextVar("eventmail_render_budget", default=None)


def current_budget() -> Budget:
    budget = _BUDGET.get()
    if budget is None:
        raise RenderError("templates render only through consumer.mail.render (with a budget)")
    return budget


def run_with_budget(limits: RenderLimits, chunks: Callable[[], Iterable[str]]) -> str:
    """Join the chunks of a render, within ``limits`` (the output is checked as it grows)."""
    token = _BUDGET.set(Budget(limits))
    try:
        out: list[str] = []
        size = 0
        for chunk in chunks():
            size += len(chunk)
            if size > limits.max_output_chars:
                raise BudgetExceeded(f"output is longer than {limits.max_output_chars:,} characters")
            out.append(chunk)
        return "".join(out)
    finally:
        _BUDGET.reset(token)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple) else 0


class _BudgetedCodeGenerator(CodeGenerator):
    """Emits budget calls into the compiled template (see the module docstring)."""

    def blockvisit(self, nodes: Iterable[nodes.Node], frame: Frame) -> None:
        self.writeline("environment.budget_tick()")
        super().blockvisit(nodes, frame)

    def _output_const_repr(self, group: Iterable[Any]) -> str:
        return f"environment.budget_output({super()._output_const_repr(group)})"

    def _output_child_pre(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        self.write("environment.budget_output(")
        super()._output_child_pre(node, frame, finalize)

    def _output_child_post(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        super()._output_child_post(node, frame, finalize)
        self.write(")")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.budget_value(")
        super().visit_Concat(node, frame)
        self.write(")")


class RecordingUndefined(ChainableUndefined):
    """A missing value: renders empty and notes its placeholder name in the current render."""

    __slots__ = ()

    def __str__(self) -> str:
        name = self._undefined_name
        if isinstance(name, str):
            if isinstance(self._undefined_obj, DataMap):
                name = f"data.{name}"
            empties = _EMPTY.get()
            if empties is not None:
                empties.add(name)
        return ""


class DataMap(dict[str, str]):
    """The event's ``data`` map (a type of its own so missing keys are reported as ``data.KEY``)."""


_EMPTY: ContextVar[set[str] | None] = ContextVar("eventmail_empty_placeholders", default=None)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_STR_METHODS = _words(
    "lower upper title capitalize casefold swapcase strip lstrip rstrip startswith endswith split rsplit "
    "splitlines count find rfind partition rpartition isdigit isalpha isalnum isspace islower isupper "
    "isnumeric isdecimal"
)
_CONTAINER_METHODS = frozenset({"get", "items", "keys", "values", "count", "index"})
_JINJA_ALLOWED = _words(
    "abs attr capitalize center count d default dictsort e escape first float forceescape groupby indent "
    "int items join last length list lower map max min reject rejectattr replace reverse round select "
    "selectattr sort string striptags sum title tojson trim truncate unique upper urlencode urlize "
    "wordcount wordwrap xmlattr batch filesizeformat"
)
_WIDTH_FILTERS = frozenset({"center", "indent", "wordwrap", "truncate", "batch"})
_BANNED_NAMES = frozenset({"self"})


def _checked_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        budget = current_budget()
        budget.tick()
        if name in _WIDTH_FILTERS:
            for arg in (*args, *kwargs.values()):
                if isinstance(arg, int) and not isinstance(arg, bool) and arg > budget.limits.max_range:
                    raise BudgetExceeded(f"{name}: a width above {budget.limits.max_range:,}")
        if name == "replace":
            args = _precheck_replace(budget, args)
        elif name == "join":
            args = _precheck_join(budget, args)
        result = func(*args, **kwargs)
        budget.check_size(_size(result), f"{name}: a result")
        return result

    return wrapper


def _precheck_replace(budget: Budget, args: tuple[Any, ...]) -> tuple[Any, ...]:
    # (eval_ctx, s, old, new[, count])
    if len(args) >= 4 and all(isinstance(a, str) for a in args[1:4]):
        text, old, new = args[1], args[2], args[3]
        grown = len(text) + text.count(old) * max(0, len(new) - len(old))
        budget.check_size(grown, "replace: a result")
    return args


def _precheck_join(budget: Budget, args: tuple[Any, ...]) -> tuple[Any, ...]:
    # (eval_ctx, value, d="", attribute=None)
    if len(args) >= 2 and not isinstance(args[1], str):
        items = list(args[1])
        budget.check_size(len(items), "join: a list")
        separator = args[2] if len(args) >= 3 and isinstance(args[2], str) else ""
        total = sum(len(str(item)) for item in items) + len(separator) * max(0, len(items) - 1)
        budget.check_size(total, "join: a result")
        return (args[0], items, *args[2:])
    return args


def _safe_range(*args: int) -> range:
    budget = current_budget()
    values = range(*args)
    if len(values) > budget.limits.max_range:
        raise BudgetExceeded(f"range() of more than {budget.limits.max_range:,} items")
    return values


def _finalize(value: Any) -> Any:
    return "" if value is None else value


class TemplateSandbox(ImmutableSandboxedEnvironment):
    """The environment of Twig-style templates; one instance per autoescape setting."""

    code_generator_class = _BudgetedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, autoescape: bool) -> None:
        super().__init__(
            autoescape=autoescape,
            undefined=RecordingUndefined,
            finalize=_finalize,
            trim_blocks=True,  # Twig drops the newline after a tag
            auto_reload=False,
            cache_size=0,
        )
        self.globals.clear()
        self.globals.update({"range": _safe_range, "dict": dict, "namespace": Namespace})
        self.filters = {name: _checked_filter(name, JINJA_FILTERS[name]) for name in _JINJA_ALLOWED}
        self.filters.update({name: _checked_filter(name, func) for name, func in EVENTMAIL_FILTERS.items()})

    # -- hooks the generated code calls ----------------------------------------------------------------
    def budget_tick(self) -> None:
        current_budget().tick()

    def budget_output(self, value: str) -> str:
        current_budget().spend(len(value))
        return value

    def budget_value(self, value: str) -> str:
        budget = current_budget()
        budget.check_size(len(value), "a string")
        budget.spend(len(value))
        return value

    # -- sandbox policy --------------------------------------------------------------------------------
    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if isinstance(obj, str):
            return attr in _STR_METHODS
        if isinstance(obj, dict | list | tuple | set | frozenset):
            return attr in _CONTAINER_METHODS
        return not isinstance(obj, int | float | complex)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        return None  # str.format is not on the allowlist: it can pad to any width

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to {attribute!r} of a {type(obj).__name__} is not allowed")

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        current_budget().tick()
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = current_budget()
        budget.tick()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    budget.check_size(len(seq) * max(times, 0), "a repeated string or list")
        elif operator == "**":
            numbers = isinstance(left, int | float) and isinstance(right, int | float)
            if numbers and abs(right) > 1000 and abs(left) > 1:
                raise BudgetExceeded("an exponent above 1000")
        elif operator == "%" and isinstance(left, str):
            raise SecurityError("string formatting with % is not allowed; use the number or date filters")
        result = self.binop_table[operator](left, right)
        if isinstance(result, int) and result.bit_length() > 4096:
            raise BudgetExceeded("a number of more than 4096 bits")
        budget.check_size(_size(result), "a string or list")
        return result


def forbidden_construct(ast: nodes.Template) -> str | None:
    """What a template does that the sandbox refuses outright, or None."""
    for node in ast.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        return f"templates cannot load other templates ({type(node).__name__.lower()} is not available)"
    for name in ast.find_all(nodes.Name):
        if name.name in _BANNED_NAMES:
            return f"{name.name!r} is not available in templates"
    for getattr_node in ast.find_all(nodes.Getattr):
        if getattr_node.attr.startswith("_"):
            return f"access to attribute {getattr_node.attr!r} is not allowed"
    for item in ast.find_all(nodes.Getitem):
        arg = item.arg
        if isinstance(arg, nodes.Const) and isinstance(arg.value, str) and arg.value.startswith("_"):
            return f"access to item {arg.value!r} is not allowed"
    return None


@functools.cache
def sandbox(autoescape: bool) -> TemplateSandbox:
    return TemplateSandbox(autoescape)


def render_collecting(limits: RenderLimits, chunks: Callable[[], Iterable[str]]) -> tuple[str, set[str]]:
    """:func:`run_with_budget`, also returning the placeholders that rendered empty."""
    empties: set[str] = set()
    token = _EMPTY.set(empties)
    try:
        return run_with_budget(limits, chunks), empties
    finally:
        _EMPTY.reset(token)
