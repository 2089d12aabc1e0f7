"""Placeholders in subject and body: plain {{ name }} substitution or sandboxed templates."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from consumer.events.placeholders import placeholders_for
from consumer.events.triggers import Platform
from consumer.rules.templates import plain_names, plain_problems, template_problems, twig_problems
from consumer.rules.validation import RuleValidationError, validate_rule
from tests.test_rules_model import CONTEXT, with_action


def test_plain_substitutions_of_known_placeholders_pass() -> None:
    text = (
        "Lead {{lead_id}} for {{ price }} {{  currency  }} from {{ data.first_name }} ({{ data.utm-source }})"
    )
    assert plain_problems(text, Platform.LMS) == []
    assert plain_names(text) == ["lead_id", "price", "currency", "data.first_name", "data.utm-source"]


def test_unknown_placeholder_is_named_with_the_nearest_suggestion() -> None:
    assert plain_problems("{{ lead_idd }}", Platform.LMS) == [
        "unknown placeholder 'lead_idd' for lms (did you mean 'lead_id'?)"
    ]
    [far] = plain_problems("{{ zzz }}", Platform.LMS)
    assert far == "unknown placeholder 'zzz' for lms; see `eventmail placeholders --platform lms`"


def test_call_tracking_pool_is_a_call_logic_placeholder_only() -> None:
    assert plain_problems("{{ call_tracking_pool_id }}", Platform.CALL_LOGIC) == []
    [problem] = plain_problems("{{ call_tracking_pool_id }}", Platform.LMS)
    assert "unknown placeholder 'call_tracking_pool_id' for lms" in problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ price|round }}", "only {{ name }} substitutions are allowed when use_twig is false"),
        ("{{ lead_id ~ price }}", "only {{ name }} substitutions are allowed"),
        ("{% if price %}x{% endif %}", "template tags ('{%') need use_twig: true"),
        ("{# note #}", "template tags ('{#') need use_twig: true"),
        ("Lead {{ lead_id", "'{{' without a closing '}}'"),
        ("{{ data. }}", "only {{ name }} substitutions are allowed"),
    ],
)
def test_plain_mode_allows_nothing_but_substitutions(text: str, expected: str) -> None:
    problems = plain_problems(text, Platform.LMS)
    assert problems
    assert expected in problems[0]


def test_twig_templates_parse_and_read_only_known_names() -> None:
    body = (
        "{% for k, v in data.items() %}{{ k }}={{ v | e }}{% endfor %}"
        "{% set total = price * 2 %}{{ total }}{% if buyer_id %}{{ buyer_id | upper }}{% endif %}"
    )
    assert twig_problems(body, Platform.LMS) == []
    assert twig_problems("{{ pric | round }}", Platform.LMS) == [
        "unknown placeholder 'pric' for lms (did you mean 'price'?)"
    ]


def test_twig_syntax_errors_give_the_line() -> None:
    [problem] = twig_problems("line one\n{% if price %}never closed", Platform.LMS)
    assert problem.startswith("template syntax error on line 2:")
    [unknown_filter] = twig_problems("ok\n\n{{ price | no_such_filter(2) }}", Platform.LMS)
    assert unknown_filter == "template syntax error on line 3: No filter named 'no_such_filter'."


def test_twig_templates_are_checked_by_the_renderer_sandbox() -> None:
    # The renderer's own filters validate; what its sandbox refuses does not.
    assert twig_problems("{{ price | number(2) }} {{ occurred_at | date('Y-m-d') }}", Platform.LMS) == []
    [include] = twig_problems("{% include 'other.html' %}", Platform.LMS)
    assert "cannot load other templates" in include


def test_template_problems_reach_the_rule_errors_with_their_field() -> None:
    doc = with_action(subject="{{ lead_idd }}", body="{% if price %}x{% endif %}")
    with pytest.raises(RuleValidationError) as info:
        validate_rule(doc, CONTEXT)
    assert info.value.lines() == [
        "rule r-1: action.subject: unknown placeholder 'lead_idd' for lms (did you mean 'lead_id'?)",
        "rule r-1: action.body: template tags ('{%') need use_twig: true",
    ]
    twig = with_action(use_twig=True, subject="{{ lead_id | upper }}", body="{% if price %}x{% endif %}")
    assert validate_rule(twig, CONTEXT).action.use_twig


@given(
    platform=st.sampled_from(list(Platform)),
    names=st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12), max_size=4),
    use_twig=st.booleans(),
)
def test_a_template_is_valid_exactly_when_every_name_is_known(
    platform: Platform, names: list[str], use_twig: bool
) -> None:
    known = set(placeholders_for(platform))
    text = " and ".join(f"{{{{ {name} }}}}" for name in names)
    problems = template_problems(text, platform, use_twig)
    unknown = {n for n in names if n not in known and not (use_twig and n == "data")}
    reserved = {
        "and",
        "or",
        "not",
        "in",
        "is",
        "if",
        "else",
        "true",
        "false",
        "none",
        "True",
        "False",
        "None",
    }
    assume(not (use_twig and set(names) & reserved))  # keywords are not variables
    assert bool(problems) == bool(unknown)
    for name in unknown:
        assert any(repr(name) in p for p in problems)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{% for i in range(10**9) %}{% endfor %}", "range() of more than 10,000 items"),
        ("{% for i in range(0, 20000, 2) %}{% endfor %}", None),
        ("{% for i in range(0, 20002) %}{% endfor %}", "range() of more than 10,000 items"),
        ("{{ 'x' * 10**9 }}", "a repeated string or list of more than 1,000,000 characters"),
        ("{{ 2 ** 1001 }}", "an exponent above 1000"),
        ("{{ lead_id|center(width=20000) }}", "center: a width above 10,000"),
        ("{{ lead_id|indent('x' * 20000) }}", "indent: a width above 10,000"),
        ("{{ lead_id|truncate(leeway=10**6) }}", "truncate: a width above 10,000"),
        ("{{ data|tojson(indent=17) }}", "tojson: an indent above 16"),
        ("{{ data|tojson(indent=2) }}", None),
        ("{{ dict.fromkeys(range(3)) }}", "method 'fromkeys' is not available in templates"),
        ("{{ lead_id.ljust(10) }}", "method 'ljust' is not available in templates"),
        # a size the event gives is for the renderer to check
        ("{{ lead_id|center(data.w|int) }}", None),
        ("{% for i in range(data.w|int) %}{% endfor %}", None),
        # the methods templates have stay valid
        (
            "{% for k, v in data.items() %}{{ loop.cycle('a', 'b') }}{{ k.upper() }}{{ v.split()|length }}"
            "{% endfor %}{{ data.get('x', 'y') }}",
            None,
        ),
    ],
)
def test_validation_refuses_constant_sizes_over_the_render_limits(text: str, problem: str | None) -> None:
    problems = twig_problems(text, Platform.LMS)
    assert problems == ([] if problem is None else [problem])
