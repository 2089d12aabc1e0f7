"""The Avro schemas are the wire truth: the pydantic models must stay in step with them."""

from __future__ import annotations

import pytest

from consumer.events.model import Event
from consumer.outcomes.model import Alert, Outcome
from consumer.schemas import raw_schema


def _avro_fields(name: str) -> dict[str, dict[str, object]]:
    return {f["name"]: f for f in raw_schema(name)["fields"]}


def _nullable(field: dict[str, object]) -> bool:
    kind = field["type"]
    return isinstance(kind, list) and "null" in kind


@pytest.mark.parametrize(
    ("schema", "model", "model_only"),
    [
        ("lms_event", Event, {"platform", "call_tracking_pool_id"}),
        ("call_logic_event", Event, {"platform"}),
        ("outcome", Outcome, set()),
        ("alert", Alert, set()),
    ],
)
def test_model_and_schema_have_the_same_fields(schema: str, model: type, model_only: set[str]) -> None:
    avro = _avro_fields(schema)
    fields = set(model.model_fields) - model_only
    assert fields == set(avro), f"drift between {model.__name__} and schemas/{schema}.avsc"


@pytest.mark.parametrize(
    ("schema", "model"), [("outcome", Outcome), ("alert", Alert), ("call_logic_event", Event)]
)
def test_required_and_nullable_agree(schema: str, model: type) -> None:
    for name, field in _avro_fields(schema).items():
        info = model.model_fields[name]
        if _nullable(field):
            assert not info.is_required(), f"{schema}.{name} is nullable in Avro but required in the model"
        if "default" not in field:
            assert info.is_required() or name in {"created"}, f"{schema}.{name} has no Avro default"


@pytest.mark.parametrize("schema", ["lms_event", "call_logic_event", "outcome", "alert"])
def test_every_field_is_documented(schema: str) -> None:
    for name, field in _avro_fields(schema).items():
        assert field.get("doc"), f"schemas/{schema}.avsc: field {name} has no doc"
