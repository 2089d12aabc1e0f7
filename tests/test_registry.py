"""Confluent wire format through a real Schema Registry and a real Kafka topic.

The shipped schemas are registered under TopicNameStrategy subjects, events of every trigger travel as
wire-format records and come back equal through ``EventDecoder(writer_schema=registry_lookup(...))``;
evolved writer schemas, schema references, unknown ids, non-Avro schemas and an unreachable registry
behave as the codec contract says: a decoded event, or a CodecError naming the schema id.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from consumer.avro import encode_schemaless, join_wire, split_wire
from consumer.errors import CodecError, SettingsError
from consumer.events.codec import EventDecoder, encode_wire
from consumer.events.model import Event
from consumer.events.registry import (
    RegistryUnavailableError,
    register_event_schema,
    registry_lookup,
    value_subject,
)
from consumer.events.triggers import Platform, triggers_for
from consumer.schemas import raw_schema
from consumer.settings import SchemaRegistrySettings
from tests.factories import make_event
from tests.support.kafka import TopicFactory, consume_all, produce
from tests.support.registry import free_port
from tests.support.registry_gate import RegistryGate

SCHEMA_FILES = {Platform.LMS: "lms_event", Platform.CALL_LOGIC: "call_logic_event"}
SECRET = "pa55-w0rd-never-shown"


def _events(platform: Platform) -> list[Event]:
    """One event of every trigger, plus one with every optional field absent."""
    events = [make_event(platform, trigger) for trigger in triggers_for(platform)]
    bare: dict[str, Any] = {
        name: None
        for name in ("product_id", "campaign_id", "lead_id", "publisher_id", "channel_id", "source_id")
    }
    bare.update(buyer_id=None, pingtree_id=None, method=None, tracking_strategy=None, price=None, data={})
    if platform is Platform.CALL_LOGIC:
        bare["call_tracking_pool_id"] = None
    events.append(make_event(platform, triggers_for(platform)[-1], **bare))
    return events


def _decode_topic(
    bootstrap: str, topic: str, platform: Platform, decoder: EventDecoder, count: int
) -> list[tuple[int, Event]]:
    """(schema id, decoded event) of every record of ``topic``."""
    records = consume_all(bootstrap, topic, expected=count)
    assert len(records) == count
    values = [record.value() for record in records]
    assert all(isinstance(value, bytes) for value in values)
    return [(split_wire(value)[0], decoder.decode(platform, value)) for value in values if value is not None]


def _evolved(platform: Platform) -> dict[str, Any]:
    """The shipped schema plus a field the consumer does not know, with a default."""
    document = copy.deepcopy(raw_schema(SCHEMA_FILES[platform]))
    document["fields"].append(
        {"name": "agent_note", "type": ["null", "string"], "default": None, "doc": "added later"}
    )
    return document


@pytest.mark.parametrize("platform", list(Platform))
def test_every_trigger_round_trips_through_the_registry_and_a_topic(
    platform: Platform,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    registry_client: SchemaRegistryClient,
    registry_settings: SchemaRegistrySettings,
) -> None:
    topic = topic_factory(platform.value)
    subject = value_subject(topic)
    schema_id = register_event_schema(registry_client, subject, platform)
    assert register_event_schema(registry_client, subject, platform) == schema_id  # idempotent
    assert registry_client.get_versions(subject) == [1]

    events = _events(platform)
    produce(kafka_bootstrap, topic, [(e.event_id, encode_wire(e, schema_id)) for e in events])

    decoder = EventDecoder(writer_schema=registry_lookup(registry_settings))
    decoded = _decode_topic(kafka_bootstrap, topic, platform, decoder, len(events))
    assert [ids for ids, _ in decoded] == [schema_id] * len(events)
    assert [event for _, event in decoded] == events
    assert {e.trigger for _, e in decoded} == set(triggers_for(platform))


@pytest.mark.parametrize("platform", list(Platform))
def test_an_evolved_writer_schema_decodes_with_the_shipped_reader(
    platform: Platform,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    registry_client: SchemaRegistryClient,
    registry_settings: SchemaRegistrySettings,
) -> None:
    topic = topic_factory(f"{platform.value}-evolved")
    subject = value_subject(topic)
    first_id = register_event_schema(registry_client, subject, platform)
    registry_client.set_compatibility(subject, "BACKWARD")
    evolved = _evolved(platform)
    evolved_id = registry_client.register_schema(subject, Schema(json.dumps(evolved), "AVRO"))
    assert evolved_id != first_id
    assert registry_client.get_versions(subject) == [1, 2]

    old, new = make_event(platform), make_event(platform, triggers_for(platform)[1])
    new_body = encode_schemaless(
        {**new.wire_dict(), "agent_note": "call back"}, fastavro.parse_schema(evolved)
    )
    produce(
        kafka_bootstrap,
        topic,
        [(old.event_id, encode_wire(old, first_id)), (new.event_id, join_wire(evolved_id, new_body))],
    )

    decoder = EventDecoder(writer_schema=registry_lookup(registry_settings))
    decoded = _decode_topic(kafka_bootstrap, topic, platform, decoder, 2)
    assert decoded == [(first_id, old), (evolved_id, new)]

    # The subject's rule is in force: a new field without a default is not backward compatible.
    breaking = _evolved(platform)
    breaking["fields"].append({"name": "agent_id", "type": "string"})
    with pytest.raises(SchemaRegistryError) as refused:
        registry_client.register_schema(subject, Schema(json.dumps(breaking), "AVRO"))
    assert refused.value.http_status_code == 409


def test_schema_references_are_resolved(
    topic_factory: TopicFactory,
    registry_client: SchemaRegistryClient,
    registry_settings: SchemaRegistrySettings,
) -> None:
    topic = topic_factory("references")
    method = {
        "type": "enum",
        "name": "Method",
        "namespace": "io.eventmail.events",
        "symbols": ["POST", "FORM"],
    }
    method_subject = f"{topic}-method"
    registry_client.register_schema(method_subject, Schema(json.dumps(method), "AVRO"))
    writer = copy.deepcopy(raw_schema("lms_event"))
    for field in writer["fields"]:
        if field["name"] == "method":
            field["type"] = ["null", "io.eventmail.events.Method"]
    reference = SchemaReference("io.eventmail.events.Method", method_subject, 1)
    schema_id = registry_client.register_schema(
        value_subject(topic), Schema(json.dumps(writer), "AVRO", [reference])
    )

    event = make_event(Platform.LMS, method="FORM")
    decoder = EventDecoder(writer_schema=registry_lookup(registry_settings))
    assert decoder.decode(Platform.LMS, encode_wire(event, schema_id)) == event


def test_an_unknown_schema_id_is_a_codec_error_naming_it(registry_settings: SchemaRegistrySettings) -> None:
    unknown = 2_000_000_017
    decoder = EventDecoder(writer_schema=registry_lookup(registry_settings))
    with pytest.raises(CodecError, match=f"schema id {unknown}") as raised:
        decoder.decode(Platform.LMS, encode_wire(make_event(), unknown))
    assert "404" in str(raised.value)  # the registry's own answer is quoted
    assert not isinstance(raised.value, RegistryUnavailableError)  # the record's fault, not the registry's


def test_a_schema_that_is_not_avro_is_a_codec_error(
    topic_factory: TopicFactory,
    registry_client: SchemaRegistryClient,
    registry_settings: SchemaRegistrySettings,
) -> None:
    json_schema = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}
    schema_id = registry_client.register_schema(
        value_subject(topic_factory("json-schema")), Schema(json.dumps(json_schema), "JSON")
    )
    decoder = EventDecoder(writer_schema=registry_lookup(registry_settings))
    with pytest.raises(CodecError, match=f"schema id {schema_id}: a JSON schema, not Avro"):
        decoder.decode(Platform.LMS, encode_wire(make_event(), schema_id))


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param(
            SchemaRegistrySettings(url=f"http://127.0.0.1:{free_port()}", basic_auth=f"eventmail:{SECRET}"),
            id="basic-auth",
        ),
        pytest.param(
            SchemaRegistrySettings(url=f"http://eventmail:{SECRET}@127.0.0.1:{free_port()}"), id="url"
        ),
    ],
)
def test_an_unreachable_registry_is_a_codec_error_without_credentials(
    settings: SchemaRegistrySettings,
) -> None:
    lookup = registry_lookup(settings)
    assert lookup is not None
    with pytest.raises(
        RegistryUnavailableError, match="schema id 42: cannot fetch from the registry"
    ) as direct:
        lookup(42)
    decoder = EventDecoder(writer_schema=lookup)
    with pytest.raises(RegistryUnavailableError, match="schema id 42") as decoding:
        decoder.decode(Platform.CALL_LOGIC, encode_wire(make_event(Platform.CALL_LOGIC), 42))
    for error in (direct.value, decoding.value):
        assert isinstance(error, CodecError)
        assert SECRET not in str(error)
        assert "refused" in str(error).lower()


def test_a_url_that_is_not_the_registry_api_is_a_codec_error(schema_registry_url: str) -> None:
    base = schema_registry_url.split("/apis/")[0]
    lookup = registry_lookup(SchemaRegistrySettings(url=f"{base}/apis/nowhere"))
    assert lookup is not None
    with pytest.raises(CodecError, match="schema id 1: cannot fetch from the registry"):
        lookup(1)


def test_parsed_schemas_are_cached_per_id_within_a_bound(
    topic_factory: TopicFactory,
    registry_client: SchemaRegistryClient,
    registry_settings: SchemaRegistrySettings,
) -> None:
    topic = topic_factory("cache")
    lms_id = register_event_schema(registry_client, value_subject(f"{topic}-lms"), Platform.LMS)
    call_id = register_event_schema(registry_client, value_subject(f"{topic}-call"), Platform.CALL_LOGIC)
    assert lms_id != call_id

    lookup = registry_lookup(registry_settings, cache_size=1)
    assert lookup is not None
    first = lookup(lms_id)
    assert lookup(lms_id) is first
    assert first["name"] == "io.eventmail.events.LmsEvent"
    assert lookup(call_id)["name"] == "io.eventmail.events.CallLogicEvent"
    again = lookup(lms_id)  # evicted by the other id: fetched and parsed anew
    assert again is not first
    assert again == first


def test_no_registry_url_means_no_lookup() -> None:
    assert registry_lookup(SchemaRegistrySettings()) is None


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        (SchemaRegistrySettings(url="ftp://registry.example"), "Invalid url"),
        (SchemaRegistrySettings(url="http://127.0.0.1:8081", basic_auth=SECRET), "username"),
    ],
    ids=["scheme", "basic-auth-form"],
)
def test_settings_the_client_refuses_are_settings_errors(
    settings: SchemaRegistrySettings, complaint: str
) -> None:
    with pytest.raises(SettingsError, match=complaint) as raised:
        registry_lookup(settings)
    assert SECRET not in str(raised.value)


# --- what the registry's answers mean: the record's fault (DLQ) or an outage (wait) -------------------


@pytest.fixture
def gate(schema_registry_url: str) -> Iterator[RegistryGate]:
    gateway = RegistryGate(schema_registry_url, credentials=f"eventmail:{SECRET}")
    yield gateway
    gateway.close()


@pytest.mark.parametrize("status", [401, 403, 404, 400, 422])
def test_a_refusal_for_one_schema_id_is_the_records_fault(
    status: int,
    gate: RegistryGate,
    topic_factory: TopicFactory,
    registry_client: SchemaRegistryClient,
) -> None:
    good = register_event_schema(registry_client, value_subject(topic_factory("gate-good")), Platform.LMS)
    refused = 2_000_000_000 + status
    gate.refuse[refused] = status
    lookup = registry_lookup(SchemaRegistrySettings(url=gate.url, basic_auth=f"eventmail:{SECRET}"))
    assert lookup is not None
    with pytest.raises(CodecError, match=f"schema id {refused}: .*{status}") as raised:
        lookup(refused)
    assert not isinstance(raised.value, RegistryUnavailableError)
    assert SECRET not in str(raised.value)
    assert lookup(good)["name"] == "io.eventmail.events.LmsEvent"  # the registry answers us otherwise


@pytest.mark.parametrize("status", [401, 403])
def test_credentials_refused_for_every_request_are_an_outage(
    status: int, gate: RegistryGate, registry_client: SchemaRegistryClient, topic_factory: TopicFactory
) -> None:
    good = register_event_schema(registry_client, value_subject(topic_factory("gate-creds")), Platform.LMS)
    if status == 401:  # a wrong password: the gateway refuses every request of ours
        settings = SchemaRegistrySettings(url=gate.url, basic_auth=f"eventmail:wrong-{SECRET}")
    else:  # our account lost its read permission on the whole registry
        gate.refuse_all = 403
        settings = SchemaRegistrySettings(url=gate.url, basic_auth=f"eventmail:{SECRET}")
    lookup = registry_lookup(settings)
    assert lookup is not None
    with pytest.raises(RegistryUnavailableError, match="refuses our credentials") as raised:
        lookup(good)
    assert SECRET not in str(raised.value)


def test_server_errors_and_timeouts_are_an_outage(gate: RegistryGate) -> None:
    gate.down = True
    lookup = registry_lookup(SchemaRegistrySettings(url=gate.url, basic_auth=f"eventmail:{SECRET}"))
    assert lookup is not None
    with pytest.raises(RegistryUnavailableError, match="503"):
        lookup(7)
