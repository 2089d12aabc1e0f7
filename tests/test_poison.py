"""Poison input: thousands of malformed records interleaved with good events.

Every bad record must land in the DLQ (one DLQ record per bad record, with its key, bytes and an
``eventmail.error`` header), every good event must become its mail, and the consumer must go on
without a restart: one PID from start to end and ``/healthz`` answering 200 throughout.

Two runs: the default input format with a Schema Registry configured (Confluent wire format with
unknown ids and truncated bodies), and ``EVENTMAIL_PIPELINE__INPUT_FORMAT=avro`` without a registry
(schemaless Avro: truncated, mistyped, invalid UTF-8, trailing bytes).
"""

from __future__ import annotations

import copy
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message
from confluent_kafka.schema_registry import SchemaRegistryClient

from consumer.avro import encode_schemaless, join_wire
from consumer.events.codec import SCHEMA_NAMES, encode_avro, encode_json, encode_wire
from consumer.events.model import Event
from consumer.events.registry import register_event_schema, value_subject
from consumer.events.triggers import Platform
from consumer.mail.message import message_id_for
from consumer.schemas import parsed_schema, raw_schema
from tests.chaos_support import FAST, Record, alive, produce_many, read_topic, wait_until
from tests.factories import make_event
from tests.pipeline_support import SENDER_DOMAIN, apply_rules, esp_env, rule_doc
from tests.support.kafka import TopicFactory
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory, SMTPTestServer

RULE = "r-poison"


@pytest.fixture
def deployment(kafka_bootstrap: str, topic_factory: TopicFactory) -> Deployment:
    return Deployment.create(kafka_bootstrap, topic_factory)


def _wire(event: Event) -> dict[str, Any]:
    """The event as a JSON-ready dict (what ``encode_json`` writes)."""
    loaded: dict[str, Any] = json.loads(encode_json(event))
    return loaded


def _json(document: Any) -> bytes:
    return json.dumps(document).encode()


@dataclass
class Poison:
    """Malformed records of every kind, drawn from one seeded generator.

    ``wire_id`` is a schema id registered for the LMS topic (None: no registry). Each bad record has a
    unique key, so the DLQ can be checked record by record.
    """

    rng: random.Random
    avro_input: bool
    wire_id: int | None
    kinds: Counter[str] = field(default_factory=Counter)
    count: int = 0
    #: The platform of the topic the records are for (some kinds depend on it).
    platform: Platform = Platform.LMS

    def _key(self, kind: str) -> bytes:
        self.count += 1
        self.kinds[kind] += 1
        return f"bad-{kind}-{self.count}".encode()

    def _event(self, **fields: Any) -> Event:
        fields.setdefault("lead_id", f"P{self.rng.randrange(10**6)}")
        if self.platform is Platform.CALL_LOGIC:
            return make_event(Platform.CALL_LOGIC, "buyer_response", **fields)
        return make_event(**fields)

    @property
    def schema_name(self) -> str:
        return SCHEMA_NAMES[self.platform]

    # --- generators: each returns (kind, value, headers) -------------------------------------------
    def random_bytes(self) -> tuple[bytes | None, list[tuple[str, bytes]] | None]:
        value = self.rng.randbytes(self.rng.randint(1, 2000))
        while value[:1] in (b"{", b" ", b"\t", b"\r", b"\n"):  # not JSON-looking (that is another kind)
            value = self.rng.randbytes(1) + value[1:]
        return value, None

    def truncated_avro(self) -> tuple[bytes | None, list[tuple[str, bytes]] | None]:
        body = encode_avro(self._event())
        return body[: self.rng.randint(1, len(body) - 1)], None

    def truncated_wire(self) -> tuple[bytes | None, list[tuple[str, bytes]] | None]:
        if self.wire_id is None:
            return self.truncated_avro()
        value = encode_wire(self._event(), self.wire_id)
        return value[: self.rng.randint(6, len(value) - 1)], None

    def wrong_schema_id(self) -> tuple[bytes | None, list[tuple[str, bytes]] | None]:
        unknown = 900_000_000 + self.rng.randrange(10**8)
        return join_wire(unknown, encode_avro(self._event())), None

    def wrong_types(self) -> tuple[bytes | None, list[tuple[str, bytes]] | None]:
        doc = _wire(self._event())
        name, value = self.rng.choice(
            [
                ("price", "twelve"),
                ("price", [1]),
                ("price", {"amount": 12.5}),
                ("occurred_at", "not a date"),
                ("occurred_at", {"when": "now"}),
                ("event_id", 12345),
                ("event_id", ["a"]),
                ("trigger", 7),
                ("data", {"first_name": 1}),
                ("data", ["x"]),
                ("data", {"nested": {"deeper": "x"}}),
                ("data", "flat"),
                ("method", "GET"),
                ("tracking_strategy", 1.5),
                ("currency", {"code": "USD"}),
                ("lead_id", {"id": 1}),
            ]
        )
        doc[name] = value
        return _json(doc), None

    def null_values(self) -> tuple[bytes | None, list[tuple[str, bytes]] | None]:
        choice = self.rng.randrange(5)
        if choice == 0:
            return None, None  # a record without a value
        doc = _wire(self._event())
        doc[self.rng.choice(["event_id", "trigger", "occurred_at", "data"])] = None
        return (b"null" if choice == 1 else _json(doc)), (
            [("content-type", b"application/json")] if choice == 1 else None
        )

    def missing_or_unknown_fields(self) -> tuple[bytes | None, list[tuple[str, bytes]] | None]:
        doc = _wire(self._event())
        if self.rng.random() < 0.5:
            del doc[self.rng.choice(["event_id", "trigger", "occurred_at"])]
        else:
            doc[self.rng.choice(["platform", "surprise", "__proto__", "Event_ID"])] = "x"
        return _json(doc), None

    def unknown_trigger(self) -> tuple[bytes | None, list[tuple[str, bytes]] | None]:
        doc = _wire(self._event())
        other = "buyer_response" if self.platform is Platform.LMS else "lead_offer_received"
        doc["trigger"] = self.rng.choice(["no_such_trigger", other, "LEAD_SOLD", "lead_sold ", ""])
        return _json(doc), None

    def huge_field(self) -> tuple[bytes | None, list[tuple[str, bytes]] | None]:
        doc = _wire(self._event())
        big = "x" * 100_000
        where = self.rng.choice(["event_id", "lead_id", "data", "product_id"])
        if where == "data":
            doc["data"] = {"note": big}
        else:
            doc[where] = big
        return _json(doc), None

    def invalid_utf8(self) -> tuple[bytes | None, list[tuple[str, bytes]] | None]:
        raw = encode_json(self._event())
        broken = raw.replace(b'"P', b'"\xff\xfe\xc3(', 1)
        return broken, None

    def json_shapes(self) -> tuple[bytes | None, list[tuple[str, bytes]] | None]:
        shape = self.rng.choice(
            [b"[1, 2, 3]", b'["lead_sold"]', b"42", b'"text"', b"true", b"{", b'{"event_id": ', b"{}", b""]
        )
        headers = [("content-type", b"application/json")] if self.rng.random() < 0.5 else None
        return shape, headers

    def nesting_bomb(self) -> tuple[bytes | None, list[tuple[str, bytes]] | None]:
        depth = self.rng.randint(5_000, 150_000)  # at most 900 kB: under the producer's size limit
        if self.rng.random() < 0.5:
            return b'{"data": ' + b"[" * depth + b"]" * depth + b"}", None
        return b'{"a":' * depth + b"1" + b"}" * depth, None

    def numbers(self) -> tuple[bytes | None, list[tuple[str, bytes]] | None]:
        raw = encode_json(self._event()).decode()
        replacement = self.rng.choice(["1e999", "NaN", "-Infinity", "1" * 5000])
        return raw.replace('"price":12.5', f'"price":{replacement}').encode(), None

    def content_type_lies(self) -> tuple[bytes | None, list[tuple[str, bytes]] | None]:
        return encode_avro(self._event()), [("content-type", b"application/json")]

    def avro_wrong_types(self) -> tuple[bytes | None, list[tuple[str, bytes]] | None]:
        """A record written with a schema whose fields have other types than the shipped one."""
        schema = copy.deepcopy(raw_schema(self.schema_name))
        fields = schema["fields"]
        target = self.rng.choice(["price", "occurred_at", "data", "event_id"])
        for f in fields:
            if f["name"] == target:
                f["type"] = {"type": "array", "items": "long"} if target != "price" else "string"
                f.pop("default", None)
        record = _wire(self._event())
        record["occurred_at"] = 1_795_000_000_000
        record[target] = "twelve" if target == "price" else [1, 2, 3]
        from fastavro import parse_schema

        return encode_schemaless(record, parse_schema(schema)), None

    def avro_invalid_utf8(self) -> tuple[bytes | None, list[tuple[str, bytes]] | None]:
        body = encode_avro(self._event(lead_id="ZZZZ"))
        return body.replace(b"ZZZZ", b"\xff\xfe\xfd\xfc", 1), None

    def avro_trailing_bytes(self) -> tuple[bytes | None, list[tuple[str, bytes]] | None]:
        return encode_avro(self._event()) + self.rng.randbytes(self.rng.randint(1, 20)), None

    def avro_bad_values(self) -> tuple[bytes | None, list[tuple[str, bytes]] | None]:
        """Well-formed Avro whose values the event model refuses (trigger, sizes, platform rules)."""
        record = _wire(self._event())
        record["occurred_at"] = 1_795_000_000_000
        change = self.rng.randrange(3)
        if change == 0:
            record["trigger"] = "no_such_trigger"
        elif change == 1:
            record["lead_id"] = "y" * 100_000
        else:
            record["event_id"] = ""
        return encode_schemaless(record, parsed_schema(self.schema_name)), None

    def generators(self) -> list[Callable[[], tuple[bytes | None, list[tuple[str, bytes]] | None]]]:
        common = [
            self.random_bytes,
            self.truncated_avro,
            self.wrong_schema_id,
            self.wrong_types,
            self.null_values,
            self.missing_or_unknown_fields,
            self.unknown_trigger,
            self.huge_field,
            self.invalid_utf8,
            self.json_shapes,
            self.numbers,
            self.content_type_lies,
        ]
        if self.avro_input:
            return [
                *common,
                self.avro_wrong_types,
                self.avro_invalid_utf8,
                self.avro_trailing_bytes,
                self.avro_bad_values,
            ]
        return [*common, self.truncated_wire]

    def records(self, count: int, platform: Platform, bombs: bool = True) -> Iterator[Record]:
        self.platform = platform
        generators = self.generators()
        for i in range(count):
            bomb = bombs and i % 500 == 0  # rare and big: a few per run
            generate = self.nesting_bomb if bomb else generators[i % len(generators)]
            value, headers = generate()
            yield self._key(generate.__name__), value, headers


class HealthWatch:
    """Polls ``/healthz`` every 0.2 s in a thread; every answer that is not 200 is kept."""

    def __init__(self, service: ServiceProcess) -> None:
        self.service = service
        self.answers = 0
        self.bad: list[tuple[float, int | str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                code, _ = self.service.get("/healthz")
            except OSError as exc:
                self.bad.append((time.time(), str(exc)))
                continue
            self.answers += 1
            if code != 200:
                self.bad.append((time.time(), code))


def _poison_run(
    deployment: Deployment,
    server: SMTPTestServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    name: str,
    bad_count: int,
    seed: int,
    avro_input: bool,
    wire_id: int | None,
    env: dict[str, str],
) -> None:
    rng = random.Random(seed)
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(deployment, tmp_path, rule_doc(RULE))
    poison = Poison(rng, avro_input, wire_id)
    lms: list[Record] = list(poison.records(bad_count - 300, Platform.LMS))
    call_logic: list[Record] = list(poison.records(200, Platform.CALL_LOGIC))
    # (A nesting bomb on the retry topic has a test of its own.)
    retry: list[Record] = list(poison.records(100, Platform.LMS, bombs=False))
    good: list[Event] = []
    for i in range(len(lms) // 20):
        event = make_event(lead_id=f"G{i}")
        good.append(event)
        encoding = i % 3
        if encoding == 0:
            value = encode_json(event)
        elif avro_input:
            value = encode_avro(event)
        elif wire_id is not None:
            value = encode_wire(event, wire_id)
        else:
            value = encode_json(event)
        lms.insert(rng.randrange(len(lms) + 1), (event.event_id.encode(), value, None))
    expected_bad = Counter(
        key for key, _, _ in (*lms, *call_logic, *retry) if key and key.startswith(b"bad-")
    )
    assert sum(expected_bad.values()) == bad_count

    service = ServiceProcess("run", deployment.env(**FAST, **env), tmp_path).start()
    try:
        service.wait_ready()
        pid = alive(service).pid
        with HealthWatch(service) as health:
            started = time.monotonic()
            produce_many(deployment.bootstrap, deployment.topics["lms"], lms)
            produce_many(deployment.bootstrap, deployment.topics["call_logic"], call_logic)
            produce_many(deployment.bootstrap, deployment.topics["retry"], retry)
            wait_until(lambda: len(server.messages) >= len(good), 240, "every good mail", running=[service])
            dlq: list[Message] = []

            def dlq_complete() -> bool:
                nonlocal dlq
                dlq = read_topic(deployment.bootstrap, deployment.topics["dlq"])
                return len(dlq) >= bad_count

            wait_until(dlq_complete, 240, f"{bad_count} DLQ records", every=1.0, running=[service])
            seconds = time.monotonic() - started
            dlq_metric = service.metric("eventmail_dlq_records_total")
        assert alive(service).pid == pid
        assert service.get("/healthz")[0] == 200
        assert service.terminate() == 0
    finally:
        service.stop()

    with capsys.disabled():
        print(
            f"\nchaos figures | {name}: {bad_count} bad + {len(good)} good records, "
            f"dlq={len(dlq)}, mails={len(server.messages)}, time={seconds:.1f}s, "
            f"healthz answers={health.answers}, kinds={dict(sorted(poison.kinds.items()))}"
        )
    got = Counter(m.key() for m in dlq)
    missing, extra = expected_bad - got, got - expected_bad
    assert got == expected_bad, f"DLQ: missing {list(missing)[:5]} ({len(missing)}), extra {list(extra)[:5]}"
    assert dlq_metric == bad_count
    originals = {key: value for key, value, _ in (*lms, *call_logic, *retry)}
    for record in dlq:
        headers = dict(record.headers() or [])
        assert record.value() == originals[record.key()], f"{record.key()!r}: the DLQ changed the bytes"
        assert headers.get("eventmail.error"), f"{record.key()!r}: no error header"
        assert headers.get("eventmail.source"), f"{record.key()!r}: no source header"
    assert sorted(m.message_id or "" for m in server.messages) == sorted(
        message_id_for(e.event_id, RULE, SENDER_DOMAIN) for e in good
    ), "good events were lost or sent twice"
    assert health.answers > 0
    assert health.bad == [], f"/healthz was not 200: {health.bad[:5]}"


def test_poison_records_with_a_schema_registry(
    deployment: Deployment,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    schema_registry_url: str,
    registry_client: SchemaRegistryClient,
) -> None:
    wire_id = register_event_schema(registry_client, value_subject(deployment.topics["lms"]), Platform.LMS)
    _poison_run(
        deployment,
        smtp_server_factory("plain"),
        tmp_path,
        capsys,
        name="poison (auto + registry)",
        bad_count=10_000,
        seed=101,
        avro_input=False,
        wire_id=wire_id,
        env={"EVENTMAIL_SCHEMA_REGISTRY__URL": schema_registry_url},
    )


def test_poison_records_with_schemaless_avro_input(
    deployment: Deployment,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _poison_run(
        deployment,
        smtp_server_factory("plain"),
        tmp_path,
        capsys,
        name="poison (schemaless avro, no registry)",
        bad_count=4_000,
        seed=202,
        avro_input=True,
        wire_id=None,
        env={"EVENTMAIL_PIPELINE__INPUT_FORMAT": "avro"},
    )


def _wait_dlq(deployment: Deployment, service: ServiceProcess, count: int) -> list[Message]:
    dlq: list[Message] = []

    def complete() -> bool:
        nonlocal dlq
        dlq = read_topic(deployment.bootstrap, deployment.topics["dlq"])
        return len(dlq) >= count

    wait_until(complete, 60, f"{count} DLQ record(s)", running=[service])
    return dlq


def test_a_nesting_bomb_on_the_retry_topic_goes_to_the_dlq(
    deployment: Deployment,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
) -> None:
    """A retry record that is not JSON goes to the DLQ; one nested too deeply for the JSON parser too."""
    server = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(deployment, tmp_path, rule_doc(RULE))
    bomb = b"[" * 100_000 + b"]" * 100_000
    service = ServiceProcess("run", deployment.env(**FAST), tmp_path).start()
    try:
        service.wait_ready()
        pid = alive(service).pid
        produce_many(
            deployment.bootstrap,
            deployment.topics["retry"],
            [(b"bad-retry-garbage", b"{not json", None), (b"bad-retry-bomb", bomb, None)],
            partition=0,
        )
        dlq = _wait_dlq(deployment, service, 2)
        after = make_event(lead_id="after")
        produce_many(deployment.bootstrap, deployment.topics["lms"], [(b"after", encode_json(after), None)])
        wait_until(lambda: len(server.messages) >= 1, 60, "the mail after the bomb", running=[service])
        assert alive(service).pid == pid
        assert service.terminate() == 0
    finally:
        service.stop()
    assert sorted(m.key() for m in dlq) == [b"bad-retry-bomb", b"bad-retry-garbage"]
    assert [m.value() for m in dlq if m.key() == b"bad-retry-bomb"] == [bomb]


def test_a_record_over_one_megabyte_goes_to_the_dlq(
    deployment: Deployment,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
) -> None:
    """Kafka accepts records up to ~1 MiB by default; the decoder refuses more than 1,000,000 bytes.
    Such a record must reach the DLQ like any other bad record, without stopping the consumer."""
    server = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(deployment, tmp_path, rule_doc(RULE))
    before, after = make_event(lead_id="before"), make_event(lead_id="after")
    oversize = _json({**_wire(make_event()), "data": {"blob": "z" * 1_000_100}})
    assert 1_000_000 < len(oversize) < 1_040_000
    service = ServiceProcess("run", deployment.env(**FAST), tmp_path).start()
    try:
        service.wait_ready()
        pid = alive(service).pid
        produce_many(
            deployment.bootstrap,
            deployment.topics["lms"],
            [
                (b"before", encode_json(before), None),
                (b"bad-oversize", oversize, None),
                (b"after", encode_json(after), None),
            ],
            partition=0,
        )
        dlq = _wait_dlq(deployment, service, 1)
        wait_until(lambda: len(server.messages) >= 2, 60, "both good mails", running=[service])
        assert alive(service).pid == pid
        assert service.terminate() == 0
    finally:
        service.stop()
    assert [m.key() for m in dlq] == [b"bad-oversize"]
    headers = dict(dlq[0].headers() or [])
    assert b"exceeds" in headers["eventmail.error"]
    # Kafka would refuse the whole record again: the DLQ keeps its start and its original size
    assert headers["eventmail.truncated_from"] == str(len(oversize)).encode()
    assert dlq[0].value() == oversize[: len(dlq[0].value() or b"")]
    assert 0 < len(dlq[0].value() or b"") < len(oversize)
    assert sorted(m.subject or "" for m in server.messages) == [
        "Lead after sold for 12.5",
        "Lead before sold for 12.5",
    ]
