"""Plain templates render from values made as they are read (render.PlainValues): the same mail as
from every value made up front (template_values, the reference), for any event and placeholders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.events.model import Event
from consumer.mail.errors import RenderError
from consumer.mail.render import PlainValues, Rendered, render, render_values, template_values
from tests.factories import make_event

FIELDS = sorted(set(Event.model_fields))
NAMES = st.sampled_from([*FIELDS, "rule_id", "rule_name", "unknown", "data.city", "data.empty", "data.none"])
LITERAL = st.sampled_from(["", " ", "Lead ", " & <b>", "{{", "}}", "{ x }"])
TEMPLATE = st.lists(
    st.one_of(LITERAL, NAMES.map(lambda name: "{{ " + name + " }}"), NAMES.map(lambda n: "{{" + n + "}}")),
    max_size=8,
).map("".join)
OPT = st.none() | st.sampled_from(["", "x", "p-1", "<&>"])


@st.composite
def events(draw: st.DrawFn) -> Event:
    return make_event(
        occurred_at=draw(
            st.datetimes(
                min_value=datetime(2000, 1, 1),
                max_value=datetime(2100, 1, 1),
                timezones=st.sampled_from([UTC, timezone(timedelta(hours=2))]),
            )
        ),
        product_id=draw(OPT),
        lead_id=draw(OPT),
        buyer_id=draw(OPT),
        method=draw(st.none() | st.sampled_from(["POST", "FORM"])),
        price=draw(st.none() | st.sampled_from([0.0, 12.5, 3.0, 1e20])),
        currency=draw(st.sampled_from(["USD", "EUR"])),
        data=draw(
            st.dictionaries(st.sampled_from(["city", "empty", "x"]), st.sampled_from(["", "Paris", "<b>"]))
        ),
    )


def _rendered(make: object) -> Rendered | str:
    try:
        return make()  # type: ignore[operator]
    except RenderError as exc:
        return f"RenderError: {exc}"


@settings(max_examples=400, deadline=None)
@given(
    event=events(),
    subject=TEMPLATE,
    body=TEMPLATE,
    content_type=st.sampled_from(["text", "html", "all"]),
    rule_name=st.none() | st.sampled_from(["", "Sold leads"]),
)
def test_plain_templates_render_as_from_every_value(
    event: Event, subject: str, body: str, content_type: str, rule_name: str | None
) -> None:
    args = {"subject": subject, "body": body, "use_twig": False, "content_type": content_type}
    expected = _rendered(lambda: render_values(template_values(event, "r-1", rule_name), **args))
    assert _rendered(lambda: render(event, rule_id="r-1", rule_name=rule_name, **args)) == expected


@settings(max_examples=200, deadline=None)
@given(event=events(), rule_name=st.none() | st.sampled_from(["", "Sold leads"]))
def test_the_lazy_values_are_the_values(event: Event, rule_name: str | None) -> None:
    lazy = PlainValues(event, "r-1", rule_name)
    assert dict(lazy) == template_values(event, "r-1", rule_name)
    assert lazy.get("unknown") is None
