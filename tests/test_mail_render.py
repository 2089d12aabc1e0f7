"""Rendering of subjects and bodies: placeholders of both platforms, Twig-style templates, escaping,
missing values, and hostile templates that must be refused or stopped by the sandbox's limits."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.events.placeholders import placeholders_for
from consumer.events.triggers import Platform
from consumer.mail import RenderError, RenderLimits, compile_template, render, render_template
from consumer.mail.render import template_values
from tests.factories import make_event

OCCURRED = datetime(2026, 11, 1, 12, 0, 5, 123000, tzinfo=UTC)


def full_event(platform: Platform):
    return make_event(
        platform,
        "lead_sold",
        event_id="ev-42",
        occurred_at=OCCURRED,
        lead_id="lead-9",
        price=1234.5,
        currency="EUR",
        data={"first_name": "Ada", "city-name": "Paris", "note": "<b>bold</b> & co"},
    )


def expected_value(platform: Platform, name: str) -> str:
    return {
        "event_id": "ev-42",
        "platform": platform.value,
        "trigger": "lead_sold",
        "occurred_at": "2026-11-01T12:00:05.123Z",
        "product_id": "p-1",
        "campaign_id": "c-7",
        "lead_id": "lead-9",
        "publisher_id": "pub-1",
        "channel_id": "ch-1",
        "source_id": "src-1",
        "buyer_id": "buyer-1",
        "pingtree_id": "pt-1",
        "call_tracking_pool_id": "pool-1",
        "method": "POST",
        "tracking_strategy": "direct_sold",
        "price": "1234.5",
        "currency": "EUR",
        "rule_id": "r-sold",
        "rule_name": "High-value sales",
    }[name]


@pytest.mark.parametrize("use_twig", [False, True], ids=["plain", "twig"])
@pytest.mark.parametrize("platform", list(Platform))
def test_every_placeholder_of_the_platform_renders(platform: Platform, use_twig: bool) -> None:
    event = full_event(platform)
    names = sorted(placeholders_for(platform))
    body = "\n".join(f"{name}={{{{ {name} }}}}" for name in names)
    rendered = render(
        event,
        subject="{{ lead_id }}",
        body=body,
        use_twig=use_twig,
        rule_id="r-sold",
        rule_name="High-value sales",
    )
    lines = dict(line.split("=", 1) for line in (rendered.text or "").splitlines())
    assert lines == {name: expected_value(platform, name) for name in names}
    assert rendered.empty_placeholders == ()
    assert rendered.subject == "lead-9"


@pytest.mark.parametrize("use_twig", [False, True], ids=["plain", "twig"])
def test_data_entries_and_missing_values(use_twig: bool) -> None:
    event = make_event(Platform.LMS, lead_id=None, data={"first_name": "Ada", "empty": ""})
    subject = "{{ data.first_name }} / {{ lead_id }} / {{ data.missing }} / {{ data.empty }}"
    rendered = render(event, subject=subject, body="x", use_twig=use_twig, rule_id="r")
    assert rendered.subject == "Ada /  /  /"
    assert rendered.empty_placeholders == ("data.empty", "data.missing", "lead_id")


def test_plain_mode_runs_no_code() -> None:
    event = full_event(Platform.LMS)
    body = "{% for i in range(3) %}x{% endfor %} {{ lead_id|upper }} {{ 7 * 7 }} {{lead_id}} {# c #}"
    rendered = render(event, subject="s", body=body, use_twig=False, rule_id="r")
    assert (
        rendered.text == "{% for i in range(3) %}x{% endfor %} {{ lead_id|upper }} {{ 7 * 7 }} lead-9 {# c #}"
    )


def test_plain_mode_dotted_data_keys() -> None:
    event = make_event(data={"a.b": "dotted", "x-y": "dashed"})
    rendered = render(event, subject="{{ data.a.b }} {{ data.x-y }}", body="", use_twig=False, rule_id="r")
    assert rendered.subject == "dotted dashed"


def test_twig_conditionals_loops_and_filters() -> None:
    event = full_event(Platform.CALL_LOGIC)
    body = (
        # as in Twig, the first newline after a tag is dropped
        "{% if price > 1000 %}BIG{% else %}small{% endif %}\n\n"
        "{% for key, value in data|dictsort %}{{ key }}:{{ value|upper }};{% endfor %}\n\n"
        "{{ price|number(2) }}|{{ price|number_format(1, ',', '.') }}|{{ price|money }}|"
        "{{ price|money('USD') }}|{{ 1234|money('JPY') }}\n"
        "{{ occurred_at|date('d/m/Y H:i:s') }}|{{ occurred_at|date('%Y-%m-%d') }}|"
        "{{ occurred_at|date('D, j M Y g:i a T', 'America/New_York') }}\n"
        "{{ data['city-name']|lower }}|{{ data.get('nope', 'fallback') }}|{{ lead_id|default('none') }}"
    )
    rendered = render(event, subject="s", body=body, use_twig=True, rule_id="r")
    assert (rendered.text or "").splitlines() == [
        "BIG",
        "city-name:PARIS;first_name:ADA;note:<B>BOLD</B> & CO;",
        "1,234.50|1.234,5|€1,234.50|$1,234.50|¥1,234",
        "01/11/2026 12:00:05|2026-11-01|Sun, 1 Nov 2026 7:00 am EST",
        "paris|fallback|lead-9",
    ]


def test_twig_namespace_counters_and_macros_work_within_limits() -> None:
    event = full_event(Platform.LMS)
    body = (
        "{% macro row(k, v) %}<li>{{ k }}={{ v }}</li>{% endmacro %}"
        "{% set ns = namespace(n=0) %}{% for k, v in data.items() %}{% set ns.n = ns.n + 1 %}"
        "{{ row(k, v) }}{% endfor %}<p>{{ ns.n }} entries</p>"
    )
    rendered = render(event, subject="s", body=body, use_twig=True, rule_id="r", content_type="html")
    assert rendered.html is not None
    assert "<li>note=&lt;b&gt;bold&lt;/b&gt; &amp; co</li>" in rendered.html
    assert rendered.html.endswith("<p>3 entries</p>")


@pytest.mark.parametrize("use_twig", [False, True], ids=["plain", "twig"])
def test_html_bodies_escape_event_values(use_twig: bool) -> None:
    event = make_event(lead_id='<script>alert("x")</script>', data={"first_name": "A&B"})
    body = "<p>{{ lead_id }} {{ data.first_name }}</p>"
    rendered = render(
        event, subject="{{ lead_id }}", body=body, use_twig=use_twig, rule_id="r", content_type="html"
    )
    quote = "&#34;" if use_twig else "&quot;"
    assert rendered.html == f"<p>&lt;script&gt;alert({quote}x{quote})&lt;/script&gt; A&amp;B</p>"
    assert rendered.text is None
    # subjects are not HTML: no escaping there
    assert rendered.subject == '<script>alert("x")</script>'


def test_text_bodies_are_not_escaped() -> None:
    event = make_event(data={"first_name": "A&B <c>"})
    for use_twig in (False, True):
        rendered = render(event, subject="s", body="{{ data.first_name }}", use_twig=use_twig, rule_id="r")
        assert rendered.text == "A&B <c>"


def test_content_type_all_derives_a_text_part() -> None:
    event = make_event(data={"first_name": "Ada"})
    body = (
        "<html><head><style>p {color: red}</style></head><body><h1>Hello {{ data.first_name }}</h1>"
        '<p>Line one<br>line two &amp; more</p><ul><li>a</li><li>b</li></ul><a href="https://x.example/l">link</a>'
        "<script>evil()</script></body></html>"
    )
    rendered = render(event, subject="s", body=body, use_twig=True, rule_id="r", content_type="all")
    assert rendered.html is not None
    assert "<h1>Hello Ada</h1>" in rendered.html
    assert (
        rendered.text == "Hello Ada\n\nLine one\nline two & more\n\n- a\n- b\n\nlink (https://x.example/l)\n"
    )


def test_subject_is_trimmed() -> None:
    event = make_event()
    rendered = render(event, subject="  {% if true %}\nHi{% endif %}\n", body="", use_twig=True, rule_id="r")
    assert rendered.subject == "Hi"


def test_templates_are_compiled_once() -> None:
    compile_template.cache_clear()
    event = make_event()
    for _ in range(5):
        render(
            event,
            subject="{{ lead_id }}",
            body="{% if price %}{{ price }}{% endif %}",
            use_twig=True,
            rule_id="r",
        )
    info = compile_template.cache_info()
    assert (info.misses, info.hits) == (2, 8)


def test_unknown_content_type_and_syntax_errors_are_render_errors() -> None:
    event = make_event()
    with pytest.raises(RenderError, match="content_type"):
        render(event, subject="s", body="b", use_twig=False, rule_id="r", content_type="pdf")
    with pytest.raises(RenderError, match=r"^body: template syntax error: line 1"):
        render(event, subject="s", body="{% if %}", use_twig=True, rule_id="r")
    with pytest.raises(RenderError, match=r"^subject: template error"):
        render(event, subject="{{ lead_id|nosuchfilter }}", body="", use_twig=True, rule_id="r")
    with pytest.raises(RenderError, match="ZeroDivisionError"):
        render(event, subject="{{ 1 // 0 }}", body="", use_twig=True, rule_id="r")


HOSTILE_REFUSED = {
    "class_mro": ("{{ ''.__class__.__mro__ }}", "not allowed"),
    "self": ("{{ self }}", "'self' is not available"),
    "cycler_globals": ("{{ cycler.__init__.__globals__ }}", "not allowed"),
    "item_dunder": ("{{ data['__class__'] }}", "not allowed"),
    "attr_filter_dunder": ("{{ lead_id|attr('__class__') }}", "not allowed"),
    "dynamic_dunder": ("{% set n = '__cla' ~ 'ss__' %}{{ lead_id[n] }}", "not allowed"),
    "str_format": ("{{ '{:>999999999}'.format(1) }}", "not allowed"),
    "percent_format": ("{{ '%999999999d' % 1 }}", "not allowed"),
    "include": ("{% include 'other.html' %}", "cannot load other templates"),
    "import": ("{% import 'macros.html' as m %}", "cannot load other templates"),
    "extends": ("{% extends 'base.html' %}", "cannot load other templates"),
    "self_block_recursion": ("{% block b %}{{ self.b() }}{% endblock %}", "'self' is not available"),
    "mutating_data": ("{{ data.update({'a': 'b'}) }}", "not allowed"),
    "lipsum_global": ("{{ lipsum(10**6) }}", "undefined"),
}

#: name -> (template, the message of the one guard that must stop it, the render's time limit). The
#: size cases get a time limit they cannot reach, so it is their own guard that stops them: remove
#: any single guard and its case fails.
SIZE = 30.0
TIME = 0.5
HOSTILE_BOUNDED = {
    "huge_range": ("{% for i in range(10**9) %}x{% endfor %}", "range() of more than 10,000 items", SIZE),
    "nested_loops_output": (
        "{% for i in range(10000) %}{% for j in range(10000) %}{{ i }}{% endfor %}{% endfor %}",
        "output is longer than 1,000,000 characters",
        SIZE,
    ),
    "nested_loops_silent": (
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        "template took longer than 0.5s to render",
        TIME,
    ),
    "macro_recursion": (
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
        "template recursion is too deep",
        SIZE,
    ),
    "macro_fanout": (
        "{% macro f(n) %}{% if n > 0 %}{% for i in range(100) %}{{ f(n - 1) }}{% endfor %}"
        "{% else %}xxxxxxxxxx{% endif %}{% endmacro %}{{ f(4) }}",
        "template produced more than 4,000,000 characters (limit 1,000,000 of output)",
        SIZE,
    ),
    "macro_fanout_silent": (
        "{% macro f(n) %}{% if n > 0 %}{% for i in range(100) %}{% set x = f(n - 1) %}{% endfor %}"
        "{% endif %}{% endmacro %}{{ f(6) }}",
        "template took longer than 0.5s to render",
        TIME,
    ),
    "set_block": (
        "{% set x %}{% for i in range(10000) %}{% for j in range(10000) %}yyyy{% endfor %}{% endfor %}"
        "{% endset %}",
        "template produced more than 4,000,000 characters (limit 1,000,000 of output)",
        SIZE,
    ),
    "string_repeat": (
        "{{ 'x' * 10**9 }}",
        "a repeated string or list of more than 1,000,000 characters",
        SIZE,
    ),
    "list_repeat": (
        "{{ (range(1000)|list) * 100000 }}",
        "a repeated string or list of more than 1,000,000 characters",
        SIZE,
    ),
    "doubling_concat": (
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "a string of more than 1,000,000 characters",
        SIZE,
    ),
    "doubling_plus": (
        "{% set ns = namespace(s=['x']) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "a joined list of more than 1,000,000 characters",
        SIZE,
    ),
    "big_power": ("{{ 10 ** 100000 }}", "an exponent above 1000", SIZE),
    "squaring": (
        "{% set ns = namespace(n=3) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
        "a product of more than 4096 bits",
        SIZE,
    ),
    "center_width": ("{{ 'x'|center(10**9) }}", "center: a width above 10,000", SIZE),
    "indent_width": ("{{ 'a\nb'|indent(10**9) }}", "indent: a width above 10,000", SIZE),
    "join_fanout": (
        "{{ range(10000)|join('x' * 999999) }}",
        "join: a result of more than 1,000,000 characters",
        SIZE,
    ),
    "replace_fanout": (
        "{{ ('x' * 100000)|replace('x', 'y' * 1000) }}",
        "replace: a result of more than 1,000,000 characters",
        SIZE,
    ),
    "batch_fill": ("{% for b in [1]|batch(10**9, 'z') %}{% endfor %}", "batch: a width above 10,000", SIZE),
    "result_of_a_filter": (
        "{{ ('\"' * 999999)|e }}",
        "e: returned a value of more than 1,000,000 characters",
        SIZE,
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_REFUSED))
def test_hostile_templates_are_refused(name: str) -> None:
    template, message = HOSTILE_REFUSED[name]
    with pytest.raises(RenderError, match=message):
        render_template(template, template_values(make_event(), "r"), use_twig=True)


@pytest.mark.parametrize("name", sorted(HOSTILE_BOUNDED))
def test_hostile_templates_hit_their_own_limit(name: str) -> None:
    template, message, seconds = HOSTILE_BOUNDED[name]
    limits = RenderLimits(max_seconds=seconds)
    with pytest.raises(RenderError) as caught:
        render_template(template, template_values(make_event(), "r"), use_twig=True, limits=limits)
    assert str(caught.value) == f"template: {message}"


def test_time_limit_is_what_stops_a_busy_template() -> None:
    limits = RenderLimits(max_seconds=0.2)
    started = time.monotonic()
    with pytest.raises(RenderError, match=r"longer than 0.2s"):
        render_template(HOSTILE_BOUNDED["nested_loops_silent"][0], {}, use_twig=True, limits=limits)
    assert time.monotonic() - started >= 0.2


def test_output_limit_is_configurable() -> None:
    limits = RenderLimits(max_output_chars=100)
    text, _ = render_template(
        "{% for i in range(10) %}0123456789{% endfor %}", {}, use_twig=True, limits=limits
    )
    assert len(text) == 100
    with pytest.raises(RenderError, match="longer than 100 characters"):
        render_template("{% for i in range(11) %}0123456789{% endfor %}", {}, use_twig=True, limits=limits)
    with pytest.raises(RenderError, match="longer than 100 characters"):
        render_template("x" * 101, {}, use_twig=False, limits=limits)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_plain_rendering_never_executes_or_crashes(text: str) -> None:
    event = make_event()
    rendered, _ = render_template(text, template_values(event, "r"), use_twig=False)
    # Only {{ name }} substitutions change the text: everything else is kept verbatim.
    if "{{" not in text:
        assert rendered == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("{}%#()[]._'\"|~*+ abxyzif0123456789")), max_size=60))
def test_arbitrary_twig_text_renders_or_fails_cleanly(text: str) -> None:
    limits = RenderLimits(max_seconds=0.5)
    outcome: tuple[str, frozenset[str]] | RenderError
    try:
        outcome = render_template(text, template_values(make_event(), "r"), use_twig=True, limits=limits)
    except RenderError as exc:  # the only exception a template may cause
        outcome = exc
    if isinstance(outcome, RenderError):
        assert str(outcome)
    else:
        assert isinstance(outcome[0], str)
        assert isinstance(outcome[1], frozenset)
