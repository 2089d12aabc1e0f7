"""A corpus of hostile Twig-style templates, each with the limit message it must end in.

Every entry is valid for ``eventmail rules validate`` unless ``refused_at_validation`` is set (then
validation refuses it with that text, naming the field); either way the renderer stops it with
``message``. Used by tests/test_hostile_templates.py, as unit tests of the renderer and through a live
``eventmail run``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hostile:
    name: str
    template: str
    #: Text the render error (and the rule's ``failed`` outcome) must contain.
    message: str
    #: Text of the problem ``eventmail rules validate`` reports, or None when only rendering can tell.
    refused_at_validation: str | None = None
    #: The family of attack it belongs to (for the report).
    family: str = ""

    @property
    def validation_message(self) -> str | None:
        return self.message if self.refused_at_validation == SAME else self.refused_at_validation


#: ``refused_at_validation=SAME``: validation says what rendering says.
SAME = "(the render message)"
#: The event data every corpus template is rendered with (a number a template may use as a width).
EVENT_DATA = {"w": "1000000000", "note": "<b>bold</b> & co"}
REPEAT = "a repeated string or list of more than 1,000,000 characters"
REPEAT_PRINTED = "a repeated list (printed) of more than 1,000,000 characters"
CONTAINER = "a list or dict of more than 1,000,000 characters"
WORK = "template produced more than 4,000,000 characters"
SLOW = "template took longer than"
BITS = "a product of more than 4096 bits"

CORPUS: list[Hostile] = [
    # -- repetition: counted by rendered size, not by items -----------------------------------------
    Hostile("str-repeat", "{{ 'x' * 10**9 }}", REPEAT, refused_at_validation=SAME, family="repeat"),
    Hostile("str-repeat-reversed", "{{ 10**9 * 'x' }}", REPEAT, refused_at_validation=SAME, family="repeat"),
    Hostile("list-repeat-items", "{{ [1] * 10**7 }}", REPEAT, family="repeat"),
    Hostile(
        "list-repeat-rendered",
        "{% set a = ['x' * 1000] * 1000 %}{{ a|length }}",
        REPEAT_PRINTED,
        family="repeat",
    ),
    Hostile(
        "nested-list-repeat",
        "{% set a = [[1] * 1000] * 1000 %}{{ a|length }}",
        REPEAT_PRINTED,
        family="repeat",
    ),
    Hostile(
        "tuple-repeat", "{% set a = ('x' * 1000,) * 1000 %}{{ a|length }}", REPEAT_PRINTED, family="repeat"
    ),
    Hostile("repeat-of-event-data", "{{ [data] * 100000 }}", REPEAT_PRINTED, family="repeat"),
    # -- shared-reference trees: literals, namespaces, doubling --------------------------------------
    Hostile(
        "shared-list-literal",
        "{% set a = ['x' * 1000] * 100 %}{% set b = [a, a, a, a, a, a, a, a, a, a, a] %}{{ b|tojson }}",
        CONTAINER,
        family="shared",
    ),
    Hostile(
        "shared-dict-literal",
        "{% set a = {'k': 'x' * 100000} %}{% set b = {'a': a, 'b': a, 'c': a, 'd': a, 'e': a, 'f': a, "
        "'g': a, 'h': a, 'i': a, 'j': a, 'k': a} %}{{ b|string }}",
        CONTAINER,
        family="shared",
    ),
    Hostile(
        "shared-tuple-literal",
        "{% set a = ('x' * 200000,) %}{% set b = (a, a, a, a, a, a) %}{{ b }}",
        CONTAINER,
        family="shared",
    ),
    Hostile(
        "doubling-tree",
        "{% set ns = namespace(a=['x']) %}{% for i in range(64) %}{% set ns.a = [ns.a, ns.a] %}{% endfor %}"
        "{{ ns.a|tojson }}",
        CONTAINER,
        family="shared",
    ),
    Hostile(
        "deep-nesting",
        "{% set ns = namespace(a=1) %}{% for i in range(1000) %}{% set ns.a = [ns.a] %}{% endfor %}"
        "{{ ns.a }}",
        "a value nested more than 32 deep",
        family="shared",
    ),
    Hostile(
        "doubling-plus-list",
        "{% set ns = namespace(s=['x' * 100]) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
        "{% endfor %}",
        "a joined list of more than",
        family="shared",
    ),
    Hostile(
        "doubling-plus-string",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "a string or list of more than",
        family="shared",
    ),
    Hostile(
        "doubling-concat",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "a string of more than",
        family="shared",
    ),
    Hostile(
        "tojson-of-the-biggest-list",
        "{% set a = ['x' * 1000] * 990 %}{{ a|tojson(indent=16) }}",
        "tojson: a result of more than",
        family="serialize",
    ),
    Hostile(
        "tojson-indent-number",
        "{{ data|tojson(indent=100000) }}",
        "tojson: an indent above 16",
        refused_at_validation=SAME,
        family="serialize",
    ),
    Hostile(
        "tojson-indent-string",
        "{{ data|tojson(indent='x' * 1000) }}",
        "tojson: an indent above 16",
        refused_at_validation=SAME,
        family="serialize",
    ),
    Hostile(
        "string-twice",
        "{% set a = ['x' * 1000] * 990 %}{{ (a|string) ~ (a|string) }}",
        "a string of more than",
        family="serialize",
    ),
    Hostile(
        "concat-a-shared-tree",
        "{% set a = ['y' * 1000] * 990 %}{{ lead_id ~ a ~ a }}",
        "a string of more than",
        family="serialize",
    ),
    Hostile(
        "list-of-a-string", "{{ ('x' * 999999)|list }}", "list: a result of more than", family="serialize"
    ),
    # -- numbers --------------------------------------------------------------------------------------
    Hostile(
        "big-power",
        "{{ 10 ** 100000 }}",
        "an exponent above 1000",
        refused_at_validation=SAME,
        family="numbers",
    ),
    Hostile("power-bits", "{{ (10 ** 1000) ** 1000 }}", "a power of more than 4096 bits", family="numbers"),
    Hostile(
        "squaring",
        "{% set ns = namespace(n=3) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
        BITS,
        family="numbers",
    ),
    Hostile("product-bits", "{{ (10 ** 1000) * (10 ** 1000) * (10 ** 1000) }}", BITS, family="numbers"),
    # -- loops, recursion, time -----------------------------------------------------------------------
    Hostile(
        "huge-range",
        "{% for i in range(10**9) %}x{% endfor %}",
        "range() of more than 10,000 items",
        refused_at_validation=SAME,
        family="time",
    ),
    Hostile(
        "huge-range-step",
        "{% for i in range(0, 10**9 * 2, 2) %}x{% endfor %}",
        "range() of more than 10,000 items",
        refused_at_validation=SAME,
        family="time",
    ),
    Hostile(
        "nested-loops-output",
        "{% for i in range(10000) %}{% for j in range(10000) %}{{ 'x' * 100 }}{% endfor %}{% endfor %}",
        "output is longer than 1,000,000 characters",
        family="time",
    ),
    Hostile(
        "nested-loops-silent",
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        SLOW,
        family="time",
    ),
    Hostile(
        "macro-recursion",
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
        "template recursion is too deep",
        family="time",
    ),
    Hostile(
        "recursive-loop",
        "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}",
        "template recursion is too deep",
        family="time",
    ),
    Hostile(
        "macro-fanout",
        "{% macro f(n) %}{% if n > 0 %}{% for i in range(100) %}{{ f(n - 1) }}{% endfor %}"
        "{% else %}{{ 'x' * 1000 }}{% endif %}{% endmacro %}{{ f(4) }}",
        WORK,
        family="time",
    ),
    Hostile(
        "macro-fanout-silent",
        "{% macro f(n) %}{% if n > 0 %}{% for i in range(100) %}{% set x = f(n - 1) %}{% endfor %}"
        "{% endif %}{% endmacro %}{{ f(6) }}",
        SLOW,
        family="time",
    ),
    Hostile(
        "set-block",
        "{% set x %}{% for i in range(10000) %}{% for j in range(10000) %}{{ 'y' * 1000 }}{% endfor %}"
        "{% endfor %}{% endset %}",
        WORK,
        family="time",
    ),
    Hostile(
        "map-center",
        "{{ range(10000)|map('center', 10000)|list|length }}",
        WORK,
        family="time",
    ),
    # -- filters: keyword arguments get the checks positional ones get --------------------------------
    Hostile(
        "replace-kwargs",
        "{{ ('x' * 100000)|replace(old='x', new='y' * 1000) }}",
        "replace: a result of more than",
        family="kwargs",
    ),
    Hostile(
        "replace-positional",
        "{{ ('x' * 100000)|replace('x', 'y' * 1000) }}",
        "replace: a result of more than",
        family="kwargs",
    ),
    Hostile(
        "replace-empty-old",
        "{{ ('x' * 100000)|replace('', 'y' * 100) }}",
        "replace: a result of more than",
        family="kwargs",
    ),
    Hostile(
        "join-kwargs",
        "{{ range(10000)|join(d='x' * 999999) }}",
        "join: a result of more than",
        family="kwargs",
    ),
    Hostile(
        "join-positional",
        "{{ range(10000)|join('x' * 999999) }}",
        "join: a result of more than",
        family="kwargs",
    ),
    Hostile(
        "join-of-shared-items",
        "{% set a = ['x' * 1000] * 400 %}{{ [a, a]|join(a|string) }}",
        "join: a result of more than",
        family="kwargs",
    ),
    Hostile(
        "indent-width",
        "{{ 'a\\nb'|indent(10**9) }}",
        "indent: a width above 10,000",
        refused_at_validation=SAME,
        family="kwargs",
    ),
    Hostile(
        "indent-kw-width",
        "{{ 'a\\nb'|indent(width=1000000000) }}",
        "indent: a width above 10,000",
        refused_at_validation=SAME,
        family="kwargs",
    ),
    Hostile(
        "indent-string-width",
        "{{ ('a\\nb' * 200000)|indent(width='x' * 1000) }}",
        "indent: a result of more than",
        family="kwargs",
    ),
    Hostile(
        "indent-long-string-width",
        "{{ 'a'|indent('x' * 20000) }}",
        "indent: a width above 10,000",
        refused_at_validation=SAME,
        family="kwargs",
    ),
    Hostile(
        "indent-many-lines",
        "{{ ('a\\n' * 400000)|indent(100) }}",
        "indent: a result of more than",
        family="kwargs",
    ),
    Hostile(
        "center-width",
        "{{ 'x'|center(10**9) }}",
        "center: a width above 10,000",
        refused_at_validation=SAME,
        family="kwargs",
    ),
    Hostile(
        "center-kw-width",
        "{{ 'x'|center(width=1000000000) }}",
        "center: a width above 10,000",
        refused_at_validation=SAME,
        family="kwargs",
    ),
    Hostile(
        "wordwrap-width",
        "{{ 'x'|wordwrap(width=10**9) }}",
        "wordwrap: a width above 10,000",
        refused_at_validation=SAME,
        family="kwargs",
    ),
    Hostile(
        "wordwrap-lines",
        "{{ ('x' * 999999)|wordwrap(1) }}",
        "wordwrap: more than 10,000 lines",
        family="kwargs",
    ),
    Hostile(
        "wordwrap-wrapstring",
        "{{ ('x' * 50000)|wordwrap(10, wrapstring='y' * 1000) }}",
        "wordwrap: a result of more than",
        family="kwargs",
    ),
    Hostile(
        "truncate-length",
        "{{ lead_id|truncate(10**9) }}",
        "truncate: a width above 10,000",
        refused_at_validation=SAME,
        family="kwargs",
    ),
    Hostile(
        "truncate-leeway",
        "{{ lead_id|truncate(leeway=10**9) }}",
        "truncate: a width above 10,000",
        refused_at_validation=SAME,
        family="kwargs",
    ),
    Hostile(
        "batch-fill",
        "{% for b in [1]|batch(10**9, 'z') %}{% endfor %}",
        "batch: a width above 10,000",
        refused_at_validation=SAME,
        family="kwargs",
    ),
    Hostile(
        "batch-kw-fill",
        "{% for b in [1]|batch(linecount=10**9, fill_with='z') %}{% endfor %}",
        "batch: a width above 10,000",
        refused_at_validation=SAME,
        family="kwargs",
    ),
    Hostile(
        "urlize-target",
        "{{ ('x ' * 100000)|urlize(target='y' * 1000) }}",
        "urlize: a result of more than",
        family="kwargs",
    ),
    Hostile(
        "sum-of-lists",
        "{{ ([[1] * 1000] * 100)|sum(start=[]) }}",
        "sum: only numbers can be added",
        family="kwargs",
    ),
    Hostile("escape-growth", "{{ ('\"' * 999999)|e }}", "e: returned a value of more than", family="kwargs"),
    Hostile(
        "method-split", "{{ ('x ' * 500000).split() }}", "a method's result of more than", family="kwargs"
    ),
    # -- sizes that come from the event (validation cannot know them) --------------------------------
    Hostile(
        "center-from-event", "{{ 'x'|center(data.w|int) }}", "center: a width above 10,000", family="event"
    ),
    Hostile(
        "indent-from-event",
        "{{ lead_id|indent(data.w|int) }}",
        "indent: a width above 10,000",
        family="event",
    ),
    Hostile(
        "range-from-event",
        "{% for i in range(data.w|int) %}x{% endfor %}",
        "range() of more than 10,000 items",
        family="event",
    ),
    Hostile("repeat-from-event", "{{ 'x' * (data.w|int) }}", REPEAT, family="event"),
    Hostile("list-repeat-from-event", "{{ [data] * (data.w|int) }}", REPEAT, family="event"),
    Hostile("power-from-event", "{{ 10 ** (data.w|int) }}", "an exponent above 1000", family="event"),
    Hostile(
        "tojson-indent-from-event",
        "{{ data|tojson(indent=data.w|int) }}",
        "tojson: an indent above 16",
        family="event",
    ),
    Hostile(
        "batch-from-event",
        "{% for b in [1]|batch(data.w|int, 'z') %}{% endfor %}",
        "batch: a width above 10,000",
        family="event",
    ),
    Hostile(
        "truncate-from-event",
        "{{ lead_id|truncate(data.w|int) }}",
        "truncate: a width above 10,000",
        family="event",
    ),
    Hostile(
        "wordwrap-from-event",
        "{{ lead_id|wordwrap(data.w|int) }}",
        "wordwrap: a width above 10,000",
        family="event",
    ),
    Hostile(
        "replace-from-event",
        "{{ ('x' * 100000)|replace('x', data.note * 100) }}",
        "replace: a result of more than",
        family="event",
    ),
    # -- attributes of types and functions ------------------------------------------------------------
    Hostile(
        "dict-fromkeys-attr",
        "{{ (dict|attr('fromkeys'))(range(10000), 'x' * 100000)|tojson }}",
        "has no attribute 'fromkeys'",
        family="attr",
    ),
    Hostile(
        "dict-fromkeys-dot",
        "{{ dict.fromkeys(range(10000), 'x' * 100000) }}",
        "has no attribute 'fromkeys'",
        refused_at_validation="method 'fromkeys' is not available in templates",
        family="attr",
    ),
    Hostile(
        "type-attr-of-namespace",
        "{{ (namespace|attr('mro'))() }}",
        "access to 'mro' of a type is not allowed",
        family="attr",
    ),
    Hostile(
        "zfill",
        "{{ lead_id.zfill(10**9) }}",
        "access to 'zfill' of a str is not allowed",
        refused_at_validation="method 'zfill' is not available in templates",
        family="attr",
    ),
    Hostile(
        "ljust-through-attr",
        "{{ (lead_id|attr('ljust'))(10**9) }}",
        "access to 'ljust' of a str is not allowed",
        family="attr",
    ),
    Hostile(
        "expandtabs",
        "{{ ('\\t' * 1000).expandtabs(100000) }}",
        "access to 'expandtabs' of a str is not allowed",
        refused_at_validation="method 'expandtabs' is not available in templates",
        family="attr",
    ),
    Hostile(
        "format-map",
        "{{ '{a:>999999999}'.format_map({'a': 1}) }}",
        "access to 'format_map' of a str is not allowed",
        refused_at_validation="method 'format_map' is not available in templates",
        family="attr",
    ),
    Hostile(
        "self-of-a-bound-method",
        "{{ (lead_id.upper|attr('__self__')) }}",
        "access to '__self__' of a builtin_function_or_method is not allowed",
        family="attr",
    ),
]
