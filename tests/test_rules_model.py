"""Rule documents: every field rule and cross-field rule, and the one-line-per-problem errors."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.errors import RuleError
from consumer.rules.checks import RuleContext
from consumer.rules.model import Rule
from consumer.rules.validation import (
    RuleValidationError,
    load_documents,
    validate_files,
    validate_rule,
)

CONTEXT = RuleContext(esp_connections=frozenset({"default", "sendgrid"}))


def rule_doc(**overrides: Any) -> dict[str, Any]:
    """A valid LMS product-level rule; keyword arguments replace top-level fields (None removes one)."""
    doc: dict[str, Any] = {
        "id": "r-1",
        "name": "Lead sold",
        "platform": "lms",
        "level": "product",
        "product_id": "p-1",
        "triggers": ["lead_sold"],
        "action": {
            "connection": {"type": "esp", "name": "default"},
            "sender": {"email": "from@example.com", "name": "Sales"},
            "recipients": [{"email": "ops@example.com", "name": "Ops"}],
            "subject": "Lead {{ lead_id }} sold",
            "body": "Price {{ price }}",
        },
    }
    for key, value in overrides.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def with_action(**changes: Any) -> dict[str, Any]:
    doc = rule_doc()
    doc["action"] = {**doc["action"], **changes}
    return doc


def manual(**fields: Any) -> dict[str, Any]:
    connection = {"type": "manual", "host": "smtp.example.com", "port": 587, "encryption": "tls"}
    connection.update(fields)
    return with_action(connection={k: v for k, v in connection.items() if v is not None})


def problems(doc: dict[str, Any], context: RuleContext = CONTEXT) -> list[str]:
    """The error lines of an invalid document (fails the test when it is valid)."""
    with pytest.raises(RuleValidationError) as info:
        validate_rule(doc, context)
    return info.value.lines()


def one_problem(doc: dict[str, Any], context: RuleContext = CONTEXT) -> str:
    lines = problems(doc, context)
    assert len(lines) == 1, lines
    return lines[0]


def test_a_full_rule_validates_and_normalises() -> None:
    doc = rule_doc(
        level="campaign",
        product_id=None,
        campaign_id="c-7",
        filters={
            "method": "POST",
            "tracking_strategy": "direct_sold_only",
            "publishers": {"include": ["pub-1"], "exclude": ["pub-9"]},
            "campaigns": {"exclude": ["c-3"]},
            "price": {"op": "range", "min": 10, "max": 50},
        },
        warnings={
            "enabled": True,
            "timeframe": "5m",
            "percent": 10,
            "emails": "a@example.com, B@Example.COM",
        },
    )
    rule = validate_rule(doc, CONTEXT)
    assert rule.scope == ("campaign", "c-7")
    assert rule.warnings is not None
    assert rule.warnings.emails == ("a@example.com", "B@example.com")  # domain normalised
    assert rule.warnings.timeframe_seconds == 300
    assert rule.warnings_enabled
    assert rule.enabled


def test_every_problem_is_one_line_with_rule_and_field() -> None:
    doc = rule_doc(triggers=["lead_sold", "amd"], product_id=None)
    doc["action"]["recipients"] = [{"email": "not-an-address"}]
    lines = problems(doc)
    assert "rule r-1: action.recipients.0.email: 'not-an-address' is not a valid email address" in lines[0]
    doc["action"]["recipients"] = [{"email": "ok@example.com"}]
    assert problems(doc) == [
        "rule r-1: triggers.1: 'amd' is not a trigger of platform lms",
        "rule r-1: product_id: required when level is product",
    ]
    assert all("\n" not in line for line in lines)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (rule_doc(id="has space"), "rule has space: id: must be 1 to 128 letters"),
        (rule_doc(id="x" * 129), "id: must be 1 to 128 letters"),
        (rule_doc(platform="email"), "platform: Input should be 'lms' or 'call_logic'"),
        (rule_doc(level="publisher"), "level: Input should be 'product' or 'campaign'"),
        (rule_doc(triggers=[]), "triggers: needs at least 1 item(s)"),
        (rule_doc(triggers=["lead_sold", "lead_sold"]), "triggers.1: duplicate trigger 'lead_sold'"),
        (
            rule_doc(triggers=["lead_sol"]),
            "triggers.0: 'lead_sol' is not a trigger of platform lms (did you mean",
        ),
        (rule_doc(product_id=None), "product_id: required when level is product"),
        (rule_doc(campaign_id="c-1"), "campaign_id: not allowed when level is product"),
        (rule_doc(level="campaign", product_id=None), "campaign_id: required when level is campaign"),
        (rule_doc(name="two\nlines"), "name: must not contain line breaks"),
        (rule_doc(fitlers={}), "fitlers: unknown field (did you mean 'filters'?)"),
        (rule_doc(filters={"method": "GET"}), "filters.method: Input should be 'POST' or 'FORM'"),
        (
            rule_doc(filters={"tracking_strategy": "direct_sold"}),
            "filters.tracking_strategy: Input should be",
        ),
        (rule_doc(filters={"price": {"op": "between"}}), "filters.price: must be one of"),
        (rule_doc(filters={"price": {"op": "gt"}}), "filters.price.value: required"),
        (
            rule_doc(filters={"price": {"op": "gt", "value": -1}}),
            "filters.price.value: Input should be greater",
        ),
        (rule_doc(filters={"price": {"op": "gt_zero", "value": 3}}), "filters.price.value: unknown field"),
        (
            rule_doc(filters={"price": {"op": "range", "min": 5, "max": 1}}),
            "filters.price.min: min (5) is greater than max (1)",
        ),
        (
            rule_doc(
                triggers=["lead_sold", "lead_rejected"],
                filters={"price": {"op": "range", "min": 1, "max": 5}},
            ),
            "filters.price.op: range is only for rules whose every trigger is lead_sold or campaign_sold",
        ),
        (
            rule_doc(filters={"call_tracking_pools": {"include": ["pool-1"]}}),
            "filters.call_tracking_pools: only for call_logic rules",
        ),
        (
            rule_doc(platform="call_logic", filters={"call_tracking_pools": {"exclude": ["pool-1"]}}),
            "filters.call_tracking_pools: supports include only",
        ),
        (
            rule_doc(filters={"buyers": {"include": ["b-1"], "exclude": ["b-1"]}}),
            "filters.buyers: 'b-1' both included and excluded",
        ),
        (
            rule_doc(filters={"pingtrees": {"include": [""]}}),
            "filters.pingtrees.include.0: String should have",
        ),
        (rule_doc(warnings={"enabled": True, "emails": "a@example.com"}), "warnings: set percent or count"),
        (rule_doc(warnings={"enabled": True, "count": 5}), "warnings: set users or emails"),
        (
            rule_doc(warnings={"timeframe": "2h"}),
            "warnings.timeframe: Input should be '5m', '1h', '3h' or '6h'",
        ),
        (rule_doc(warnings={"percent": 101}), "warnings.percent: Input should be less than or equal to 100"),
        (rule_doc(warnings={"percent": -1}), "warnings.percent: Input should be greater than or equal to 0"),
        (
            rule_doc(warnings={"emails": "a@example.com, nope"}),
            "warnings.emails.1: 'nope' is not a valid email",
        ),
        (rule_doc(warnings={"frequency_minutes": 0}), "warnings.frequency_minutes: Input should be greater"),
    ],
)
def test_field_and_cross_field_rules(doc: dict[str, Any], expected: str) -> None:
    line = one_problem(doc)
    assert expected in line
    assert line.startswith(f"rule {doc['id'][:128]}: ")


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (with_action(recipients=[]), "action.recipients: needs at least 1 item(s)"),
        (
            with_action(sender={"email": "a@example.com\r\nBcc: x@evil.example"}),
            "action.sender.email: must not",
        ),
        (
            with_action(sender={"email": "a@example.com", "name": "A\r\nB"}),
            "action.sender.name: must not contain",
        ),
        (with_action(cc=[{"email": "@example.com"}]), "action.cc.0.email: '@example.com' is not a valid"),
        (
            with_action(bcc=[{"email": "x@example.com", "nmae": "X"}]),
            "action.bcc.0.nmae: unknown field (did you",
        ),
        (with_action(subject="Hi\nthere"), "action.subject: must not contain line breaks"),
        (with_action(subject=""), "action.subject: needs at least 1 character(s)"),
        (
            with_action(content_type="markdown"),
            "action.content_type: Input should be 'text', 'html' or 'all'",
        ),
        (with_action(connection={"type": "smtp"}), "action.connection: must be one of 'esp', 'manual'"),
        (with_action(connection={"name": "default"}), "action.connection: needs a type field"),
        (
            with_action(connection={"type": "esp", "name": "default", "host": "h", "password": "p"}),
            "action.connection: host, password: only with a manual connection (type: manual)",
        ),
        (
            with_action(connection={"type": "esp", "name": "sendgird"}),
            "action.connection.name: no ESP connection named 'sendgird' (did you mean 'sendgrid'?)",
        ),
        (manual(port=0), "action.connection.port: Input should be greater than or equal to 1"),
        (manual(port=65536), "action.connection.port: Input should be less than or equal to 65535"),
        (manual(port=None), "action.connection.port: required"),
        (manual(host=None), "action.connection.host: required"),
        (manual(host="smtp example.com"), "action.connection.host: must be a host name or an IP address"),
        (manual(encryption=None), "action.connection.encryption: required"),
        (
            manual(encryption="starttls"),
            "action.connection.encryption: Input should be 'none', 'tls' or 'ssl'",
        ),
        (manual(login="u"), "action.connection.password: required when login is set"),
        (manual(password="secret:relay"), "action.connection.login: required when password is set"),
        (
            manual(login="u", password="secret:bad name"),
            "action.connection.password: secret:NAME needs a NAME",
        ),
        (manual(login="u\nRCPT", password="p"), "action.connection.login: must not contain line breaks"),
    ],
)
def test_action_rules(doc: dict[str, Any], expected: str) -> None:
    assert expected in one_problem(doc)


def test_esp_names_are_checked_only_with_a_context() -> None:
    doc = with_action(connection={"type": "esp", "name": "elsewhere"})
    assert validate_rule(doc).action.connection.label == "esp:elsewhere"
    lonely = RuleContext(esp_connections=frozenset())
    assert "this deployment has none (EVENTMAIL_ESP_CONNECTIONS)" in one_problem(doc, lonely)
    assert "(known: default, sendgrid)" in one_problem(doc)


def test_unauthenticated_manual_relay_is_valid() -> None:
    rule = validate_rule(manual(port=25, encryption="none"), CONTEXT)
    assert rule.action.connection.label == "manual:smtp.example.com:25"


def test_numbers_in_ids_are_read_as_text() -> None:
    rule = validate_rule(rule_doc(product_id=12345, filters={"publishers": {"include": [7]}}), CONTEXT)
    assert rule.product_id == "12345"
    assert rule.filters.publishers is not None
    assert rule.filters.publishers.include == ("7",)


def test_emails_as_string_or_list_are_the_same() -> None:
    as_text = validate_rule(rule_doc(warnings={"emails": " a@example.com ,b@example.com,"}), CONTEXT)
    as_list = validate_rule(rule_doc(warnings={"emails": ["a@example.com", "b@example.com"]}), CONTEXT)
    assert as_text == as_list


def test_disabled_warnings_need_no_thresholds() -> None:
    rule = validate_rule(rule_doc(warnings={"enabled": False}), CONTEXT)
    assert not rule.warnings_enabled


def test_not_a_mapping() -> None:
    with pytest.raises(RuleValidationError) as info:
        validate_rule(["id", "r"], CONTEXT, label="#3")
    assert info.value.lines() == ["rule #3: a rule must be a mapping of fields"]


def test_models_are_frozen() -> None:
    rule = validate_rule(rule_doc(), CONTEXT)
    with pytest.raises(ValueError, match="frozen"):
        rule.enabled = False  # type: ignore[misc]


# --- properties -------------------------------------------------------------------------------------------

_FIELDS_WITHOUT_BREAKS = [
    ("name",),
    ("action", "subject"),
    ("action", "sender", "name"),
    ("action", "sender", "email"),
    ("action", "recipients", 0, "email"),
    ("action", "recipients", 0, "name"),
]


@given(
    field=st.sampled_from(_FIELDS_WITHOUT_BREAKS),
    prefix=st.text(alphabet="abc xyz", max_size=5),
    brk=st.sampled_from(["\r", "\n", "\r\n"]),
)
def test_no_line_break_is_accepted_in_names_subjects_or_addresses(
    field: tuple[Any, ...], prefix: str, brk: str
) -> None:
    doc = copy.deepcopy(rule_doc())
    target: Any = doc
    for part in field[:-1]:
        target = target[part]
    target[field[-1]] = f"{prefix}{brk}x@example.com"
    with pytest.raises(RuleValidationError) as info:
        validate_rule(doc, CONTEXT)
    path = ".".join(str(p) for p in field)
    assert any(line.startswith(f"rule r-1: {path}: ") for line in info.value.lines())


@given(port=st.integers(min_value=-100_000, max_value=200_000))
def test_port_range(port: int) -> None:
    doc = manual(port=port)
    if 1 <= port <= 65535:
        assert validate_rule(doc, CONTEXT).action.connection.port == port  # type: ignore[union-attr]
    else:
        assert "action.connection.port" in one_problem(doc)


@given(percent=st.floats(min_value=-1000, max_value=1000, allow_nan=False))
def test_percent_range(percent: float) -> None:
    doc = rule_doc(warnings={"percent": percent})
    if 0 <= percent <= 100:
        warnings = validate_rule(doc, CONTEXT).warnings
        assert warnings is not None
        assert warnings.percent == percent
    else:
        assert "warnings.percent" in one_problem(doc)


@given(
    low=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    high=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    triggers=st.lists(
        st.sampled_from(["lead_sold", "campaign_sold", "lead_rejected"]), min_size=1, unique=True
    ),
)
def test_price_range_rules(low: float, high: float, triggers: list[str]) -> None:
    doc = rule_doc(triggers=triggers, filters={"price": {"op": "range", "min": low, "max": high}})
    ok = low <= high and "lead_rejected" not in triggers
    if ok:
        assert isinstance(validate_rule(doc, CONTEXT), Rule)
    else:
        lines = problems(doc)
        assert (low > high) == any("filters.price.min" in line for line in lines)
        assert ("lead_rejected" in triggers) == any("filters.price.op" in line for line in lines)


# --- files --------------------------------------------------------------------------------------------------


def test_files_hold_one_rule_a_list_or_several_documents(tmp_path: Path) -> None:
    import json

    import yaml

    (tmp_path / "one.json").write_text(json.dumps(rule_doc(id="a")))
    (tmp_path / "list.yaml").write_text(yaml.safe_dump([rule_doc(id="b"), rule_doc(id="c")]))
    (tmp_path / "docs.yml").write_text(
        yaml.safe_dump(rule_doc(id="d")) + "---\n" + yaml.safe_dump(rule_doc(id="e"))
    )
    paths = sorted(tmp_path.iterdir())
    rules, errors = validate_files(paths, CONTEXT)
    assert errors == []
    assert sorted(rule.id for _, rule in rules) == ["a", "b", "c", "d", "e"]


def test_file_errors_name_file_rule_and_field(tmp_path: Path) -> None:
    import yaml

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            [rule_doc(id="ok"), rule_doc(id="broken", level="x"), {"name": "no id"}, rule_doc(id="ok")]
        )
    )
    _, errors = validate_files([bad], CONTEXT)
    assert f"{bad}: rule broken: level: Input should be 'product' or 'campaign'" in errors
    assert any(line.startswith(f"{bad}: rule #3: id: required") for line in errors)
    assert f"{bad}: rule ok: id: defined twice in this batch (first in {bad})" in errors


def test_unparseable_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("id: [unclosed\n")
    with pytest.raises(RuleError, match=r"broken.yaml: not valid YAML: line \d+"):
        load_documents(broken)
    scalar = tmp_path / "scalar.json"
    scalar.write_text('"just text"')
    with pytest.raises(RuleError, match="expected a rule"):
        load_documents(scalar)
    _, errors = validate_files([broken], CONTEXT)
    # A file that does not parse is one error naming the file and the line, not a rule.
    assert len(errors) == 1
    assert re.fullmatch(rf"{re.escape(str(broken))}: not valid YAML: line 2: .+", errors[0]), errors
