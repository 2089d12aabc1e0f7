"""The sandbox that renders Twig-style (``use_twig: true``) templates.

A jinja2 ``ImmutableSandboxedEnvironment`` narrowed further: no loaders (no include, import or
extends), no ``self``, no attribute or item whose name starts with ``_``, attributes only of the kinds
of values a template sees (an allowlist of ``str``/``dict``/``list`` methods, namespaces, ``loop``,
macros; never of a type, function or module), only an allowlist of filters (no ``str.format``,
``center`` and friends that build big strings), and a :class:`Budget` that every render runs under.

Limits are checked **before** a value is built wherever its size can be known in advance, so that no
single call can allocate or compute far past a limit:

- every value a template builds (a list, tuple or dict literal, ``*``, ``+``, ``~``, a filter's or a
  method's result) has a *rendered size* (:func:`footprint`: what ``str`` or ``tojson`` would write,
  shared references counted once per use, as the serializers count them) of at most
  ``max_output_chars``, and is nested at most ``max_depth`` deep; so ``str``, ``tojson``, ``join``,
  comparisons and ``in`` on any template value are bounded too;
- filters are called with their arguments bound by name (keyword arguments get the same checks as
  positional ones), and the filters that grow their input (``replace``, ``join``, ``indent``,
  ``center``, ``wordwrap``, ``urlize``, ``tojson``, ``list``, ``string``, ``batch``, ``sum``) have the
  size of their result estimated before the call;
- ``**`` and ``*`` on numbers are refused when the result would have more than 4096 bits;
- every block (each loop iteration, each macro call) and every piece of output, including output
  buffered inside macros, ticks the clock and counts towards ``max_work_chars``.

What is left (a C-level call that is slow on a bounded input) is bounded by the render worker's hard
deadline and memory limit (:mod:`consumer.mail.render_worker`). This module must never give a template
a way to reach Python internals, the file system or the network, and never render without a budget.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeGuard

from jinja2 import ChainableUndefined, Undefined, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.filters import FILTERS as JINJA_FILTERS
from jinja2.runtime import Context, LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from consumer.mail.errors import RenderError
from consumer.mail.filters import FILTERS as EVENTMAIL_FILTERS


@dataclass(frozen=True)
class RenderLimits:
    """Bounds of one template render."""

    #: Characters a rendered subject or body may have, and the rendered size of any value it builds.
    max_output_chars: int = 1_000_000
    #: Characters produced in total, including output buffered in macros and blocks (counted again
    #: each time it is emitted) and the values built by operators, filters and methods.
    max_work_chars: int = 4_000_000
    #: Wall-clock seconds one render may take.
    max_seconds: float = 1.0
    #: Items of one ``range()`` (and widths given to padding filters).
    max_range: int = 10_000
    #: How deep a value a template builds may nest (lists in lists ...).
    max_depth: int = 32


DEFAULT_LIMITS = RenderLimits()
#: Bits of an integer a template may compute.
MAX_INT_BITS = 4096
#: Exponents above this are refused outright (``2 ** 1001``).
MAX_EXPONENT = 1000
#: Spaces (or characters) of one ``tojson`` indent step.
MAX_JSON_INDENT = 16


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

    def check_value(self, value: Any, what: str) -> int:
        """The rendered size of ``value`` (see :func:`footprint`), refused above the output limit."""
        size = footprint(value, self.limits)
        self.check_size(size, what)
        return size


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


# -- sizes of values -----------------------------------------------------------------------------------
_SCALAR = 24  # what a float, a bool, None or an opaque object (a macro, a loop) renders as, at most


def _int_chars(value: int) -> int:
    return value.bit_length() * 30103 // 100000 + 2


def footprint(value: Any, limits: RenderLimits) -> int:
    """The size ``str(value)`` or ``tojson`` would write (within a small factor for escapes), without
    building it: a container counts each of its items each time it holds it, so a tree of shared
    references counts as big as it prints. Stops counting once past ``limits.max_output_chars``; raises
    :class:`BudgetExceeded` for a value nested deeper than ``limits.max_depth``. Cost: one step per
    distinct container item (sizes of shared containers are remembered within one call)."""
    if isinstance(value, str):
        return len(value)
    limit = limits.max_output_chars
    max_depth = limits.max_depth
    known: dict[int, int] = {}

    def size(item: Any, depth: int) -> int:
        if isinstance(item, str):
            return len(item) + 2
        if isinstance(item, bool) or item is None or isinstance(item, float):
            return _SCALAR
        if isinstance(item, int):
            return _int_chars(item)
        if isinstance(item, Namespace):
            item = object.__getattribute__(item, "_Namespace__attrs")
        if not isinstance(item, list | tuple | dict | set | frozenset):
            return _SCALAR
        key = id(item)
        if key in known:
            return known[key]
        if depth >= max_depth:
            raise BudgetExceeded(f"a value nested more than {max_depth} deep")
        total = 2
        children: Iterable[Any] = item.items() if isinstance(item, dict) else item
        for child in children:
            total += size(child, depth + 1) + 2
            if total > limit:
                return total  # not remembered: every container holding this one is over too
        known[key] = total
        return total

    return size(value, 0)


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
        self.write("environment.budget_printable(")

    def _output_child_post(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        self.write(")")
        super()._output_child_post(node, frame, finalize)
        self.write(")")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # str_join/markup_join((a, b, ...)) with every operand measured before it is made a string
        if frame.eval_ctx.volatile:
            func_name = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            func_name = "markup_join"
        else:
            func_name = "str_join"
        self.write(f"environment.budget_value({func_name}((")
        for arg in node.nodes:
            self.write("environment.budget_printable(")
            self.visit(arg, frame)
            self.write("), ")
        self.write(")))")

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx != "load":  # a target of set/for, not a value
            super().visit_Tuple(node, frame)
            return
        self.write("environment.budget_container(")
        super().visit_Tuple(node, frame)
        self.write(")")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.budget_container(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.budget_container(")
        super().visit_Dict(node, frame)
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


STR_METHODS = _words(
    "lower upper title capitalize casefold swapcase strip lstrip rstrip startswith endswith split rsplit "
    "splitlines count find rfind partition rpartition isdigit isalpha isalnum isspace islower isupper "
    "isnumeric isdecimal"
)
CONTAINER_METHODS = frozenset({"get", "items", "keys", "values", "count", "index"})
#: Methods of ``loop`` a template may call.
LOOP_METHODS = frozenset({"cycle", "changed"})
#: Every method a template may call (rule validation refuses a call of any other attribute).
CALLABLE_METHODS = STR_METHODS | CONTAINER_METHODS | LOOP_METHODS
_RANGE_ATTRIBUTES = frozenset({"start", "stop", "step", "count", "index"})
_MACRO_ATTRIBUTES = frozenset({"name", "arguments", "catch_kwargs", "catch_varargs", "caller"})
_JINJA_ALLOWED = _words(
    "abs attr capitalize center count d default dictsort e escape first float forceescape groupby indent "
    "int items join last length list lower map max min reject rejectattr replace reverse round select "
    "selectattr sort string striptags sum title tojson trim truncate unique upper urlencode urlize "
    "wordcount wordwrap xmlattr batch filesizeformat"
)
#: Filters whose integer arguments are widths or counts, and the names of those arguments.
WIDTH_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "center": ("width",),
    "indent": ("width",),
    "wordwrap": ("width",),
    "truncate": ("length", "leeway"),
    "batch": ("linecount",),
}
_BANNED_NAMES = frozenset({"self"})


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


# -- what each growing filter would build, estimated before it is called -------------------------------
# Each takes the budget and the filter's arguments by name and raises BudgetExceeded when the result
# would be too big; the result of every filter is also measured after the call.
def _estimate_indent(budget: Budget, args: dict[str, Any]) -> None:
    width = args.get("width", 4)
    step = len(width) if isinstance(width, str) else width if _is_int(width) else 0
    if isinstance(width, str) and step > budget.limits.max_range:  # (numbers: see WIDTH_ARGUMENTS)
        raise BudgetExceeded(f"indent: a width above {budget.limits.max_range:,}")
    text = _text(args.get("s"))
    budget.check_size(len(text) + (text.count("\n") + 1) * max(step, 0), "indent: a result")


def _estimate_center(budget: Budget, args: dict[str, Any]) -> None:
    width = args.get("width", 80)
    if _is_int(width):
        budget.check_size(max(width, len(str(args.get("value", "")))), "center: a result")


def _estimate_wordwrap(budget: Budget, args: dict[str, Any]) -> None:
    text = _text(args.get("s"))
    width = args.get("width", 79)
    if not _is_int(width) or width < 1:
        return  # textwrap refuses it
    lines = len(text) // width + text.count("\n") + 1
    if lines > budget.limits.max_range:
        raise BudgetExceeded(f"wordwrap: more than {budget.limits.max_range:,} lines")
    wrap = args.get("wrapstring")
    budget.check_size(len(text) + lines * len(wrap if isinstance(wrap, str) else "\n"), "wordwrap: a result")


def _estimate_replace(budget: Budget, args: dict[str, Any]) -> None:
    text, old, new = args.get("s"), args.get("old"), args.get("new")
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return
    count = args.get("count")
    found = text.count(old)
    if _is_int(count) and count >= 0:
        found = min(found, count)
    budget.check_size(len(text) + found * max(0, len(new) - len(old)), "replace: a result")


def _estimate_join(budget: Budget, args: dict[str, Any]) -> None:
    value = args.get("value")
    if isinstance(value, str):
        return
    items = list(value) if isinstance(value, Iterable) else []
    args["value"] = items  # an iterator is read once: the filter gets the list
    budget.check_size(len(items), "join: a list")
    separator = args.get("d", "")
    gaps = len(separator) * max(0, len(items) - 1) if isinstance(separator, str) else 0
    budget.check_size(gaps + sum(footprint(item, budget.limits) for item in items), "join: a result")


def _estimate_serialized(name: str) -> Callable[[Budget, dict[str, Any]], None]:
    def estimate(budget: Budget, args: dict[str, Any]) -> None:
        value = args.get("value", args.get("s"))
        indent = args.get("indent")
        step = len(indent) if isinstance(indent, str) else indent if _is_int(indent) else 0
        if step > MAX_JSON_INDENT:
            raise BudgetExceeded(f"{name}: an indent above {MAX_JSON_INDENT}")
        size = footprint(value, budget.limits)
        if isinstance(value, str) and name == "list":
            size *= 5  # 'x', per character
        budget.check_size(size * (1 + max(step, 0)), f"{name}: a result")

    return estimate


def _estimate_urlize(budget: Budget, args: dict[str, Any]) -> None:
    text = _text(args.get("value"))
    extra = sum(len(_text(args.get(k))) for k in ("target", "rel")) + 60
    words = text.count(" ") + text.count("\n") + 1
    budget.check_size(len(text) + words * extra, "urlize: a result")


def _estimate_sum(budget: Budget, args: dict[str, Any]) -> None:
    start = args.get("start", 0)
    if not isinstance(start, int | float):
        raise BudgetExceeded("sum: only numbers can be added (a start value that is not a number)")


def _estimate_batch(budget: Budget, args: dict[str, Any]) -> None:
    value, linecount = args.get("value"), args.get("linecount")
    if isinstance(value, list | tuple | str | dict) and _is_int(linecount):
        budget.check_size(len(value) + max(linecount, 0), "batch: a result")


_ESTIMATES: dict[str, Callable[[Budget, dict[str, Any]], None]] = {
    "indent": _estimate_indent,
    "center": _estimate_center,
    "wordwrap": _estimate_wordwrap,
    "replace": _estimate_replace,
    "join": _estimate_join,
    "tojson": _estimate_serialized("tojson"),
    "string": _estimate_serialized("string"),
    "list": _estimate_serialized("list"),
    "urlize": _estimate_urlize,
    "sum": _estimate_sum,
    "batch": _estimate_batch,
}


def _checked_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(func, "jinja_async_variant", False):
        # (eval_ctx, ...) -> the sync or the async function; the sandbox is never async
        func = func.__wrapped__  # type: ignore[attr-defined]
    signature = inspect.signature(func)
    widths = WIDTH_ARGUMENTS.get(name, ())
    estimate = _ESTIMATES.get(name)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        budget = current_budget()
        budget.tick()
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise RenderError(f"{name}: {exc}") from None
        named = bound.arguments
        for width in widths:
            value = named.get(width)
            if _is_int(value) and value > budget.limits.max_range:
                raise BudgetExceeded(f"{name}: a width above {budget.limits.max_range:,}")
        if estimate is not None:
            estimate(budget, named)
        result = func(*bound.args, **bound.kwargs)
        budget.spend(budget.check_value(result, f"{name}: returned a value"))
        return result

    return wrapper


def _safe_range(*args: int) -> range:
    budget = current_budget()
    values = range(*args)
    if len(values) > budget.limits.max_range:
        raise BudgetExceeded(f"range() of more than {budget.limits.max_range:,} items")
    return values


def _safe_dict(*args: Any, **kwargs: Any) -> dict[Any, Any]:
    """``dict(a=1)`` in a template: a new dict, nothing of the ``dict`` type (no ``fromkeys``)."""
    return dict(*args, **kwargs)


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
        self.globals.update({"range": _safe_range, "dict": _safe_dict, "namespace": Namespace})
        self.filters = {name: _checked_filter(name, JINJA_FILTERS[name]) for name in _JINJA_ALLOWED}
        self.filters.update({name: _checked_filter(name, func) for name, func in EVENTMAIL_FILTERS.items()})

    # -- hooks the generated code calls ----------------------------------------------------------------
    def budget_tick(self) -> None:
        current_budget().tick()

    def budget_output(self, value: str) -> str:
        current_budget().spend(len(value))
        return value

    def budget_printable(self, value: Any) -> Any:
        """A value about to be printed (``{{ x }}``, an operand of ``~``): its printed size is known
        before ``str`` builds it."""
        if not isinstance(value, str):
            current_budget().check_value(value, "a value to print")
        return value

    def budget_value(self, value: str) -> str:
        budget = current_budget()
        budget.check_size(len(value), "a string")
        budget.spend(len(value))
        return value

    def budget_container(self, value: Any) -> Any:
        budget = current_budget()
        budget.spend(budget.check_value(value, "a list or dict"))
        return value

    # -- sandbox policy --------------------------------------------------------------------------------
    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if isinstance(obj, str):
            return attr in STR_METHODS
        if isinstance(obj, tuple) and attr in getattr(type(obj), "_fields", ()):
            return True  # a named tuple's field (groupby's grouper and list)
        if isinstance(obj, dict | list | tuple | set | frozenset):
            return attr in CONTAINER_METHODS
        if isinstance(obj, range):
            return attr in _RANGE_ATTRIBUTES
        if isinstance(obj, Macro):
            return attr in _MACRO_ATTRIBUTES
        # namespaces, loop variables and missing values; never a type, function, module or number
        return isinstance(obj, Namespace | LoopContext | Undefined)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        return None  # str.format is not on the allowlist: it can pad to any width

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to {attribute!r} of a {type(obj).__name__} is not allowed")

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = current_budget()
        budget.tick()
        result = super().call(__context, __obj, *args, **kwargs)
        budget.spend(budget.check_value(result, "a method's result"))
        return result

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = current_budget()
        budget.tick()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and _is_int(times):
                    copies = max(times, 0)
                    budget.check_size(len(seq) * copies, "a repeated string or list")
                    if not isinstance(seq, str):
                        budget.check_size(footprint(seq, budget.limits) * copies, "a repeated list (printed)")
            if _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise BudgetExceeded(f"a product of more than {MAX_INT_BITS} bits")
        elif operator == "**":
            numbers = isinstance(left, int | float) and isinstance(right, int | float)
            if numbers and abs(right) > MAX_EXPONENT and abs(left) > 1:
                raise BudgetExceeded(f"an exponent above {MAX_EXPONENT}")
            if _is_int(left) and _is_int(right) and left.bit_length() * right > MAX_INT_BITS:
                raise BudgetExceeded(f"a power of more than {MAX_INT_BITS} bits")
        elif operator == "+":
            if isinstance(left, list | tuple) and isinstance(right, list | tuple):
                total = footprint(left, budget.limits) + footprint(right, budget.limits)
                budget.check_size(total, "a joined list")
        elif operator == "%" and isinstance(left, str):
            raise SecurityError("string formatting with % is not allowed; use the number or date filters")
        result = self.binop_table[operator](left, right)
        if _is_int(result) and result.bit_length() > MAX_INT_BITS:
            raise BudgetExceeded(f"a number of more than {MAX_INT_BITS} bits")
        if isinstance(result, str | list | tuple):
            budget.check_size(len(result), "a string or list")
            budget.spend(len(result))
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
