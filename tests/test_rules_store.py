"""The rules topic as a table, on the real broker: load, live updates, deletes, bad records, restarts."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.fernet import Fernet
from prometheus_client import REGISTRY
from pydantic import SecretStr

from consumer.errors import RuleError
from consumer.rules.codec import encode_rule
from consumer.rules.model import Rule
from consumer.rules.publish import publish_rules, publish_tombstones
from consumer.rules.store import RuleStore
from consumer.rules.validation import validate_rule
from consumer.settings import EspConnection, KafkaSettings, Settings, TopicSettings
from tests.factories import make_event
from tests.support.kafka import TopicFactory, produce
from tests.test_rules_model import CONTEXT, rule_doc

KEY = SecretStr(Fernet.generate_key().decode())


def deployment(bootstrap: str, topic: str) -> Settings:
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap),
        topics=TopicSettings(rules=topic),
        esp_connections={"default": EspConnection(host="smtp.example.com")},
        secret_key=KEY,
    )


def rule(rule_id: str, **overrides: Any) -> Rule:
    return validate_rule(rule_doc(id=rule_id, **overrides), CONTEXT)


def eventually(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll until the condition holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


def rule_errors() -> float:
    return REGISTRY.get_sample_value("eventmail_rule_errors_total") or 0.0


class Errors(list[tuple[str, str, str, int, int]]):
    def __call__(self, *args: Any) -> None:
        self.append(args)


@pytest.fixture
def stores() -> Iterator[list[RuleStore]]:
    started: list[RuleStore] = []
    yield started
    for store in started:
        store.close()


def test_apply_update_and_delete_reach_a_running_store(
    kafka_bootstrap: str, topic_factory: TopicFactory, stores: list[RuleStore]
) -> None:
    settings = deployment(kafka_bootstrap, topic_factory("rules", compacted=True))
    store = RuleStore(settings)
    stores.append(store.start())
    assert store.wait_ready(60)
    assert len(store.index) == 0

    publish_rules(settings, [rule("r-1")])
    eventually(lambda: "r-1" in store.index, '"r-1" to be loaded')
    first = store.index.get("r-1")
    assert first is not None
    assert [r.rule_id for r in store.index.match(make_event())] == ["r-1"]

    publish_rules(settings, [rule("r-1", name="renamed", filters={"publishers": {"exclude": ["pub-1"]}})])
    eventually(lambda: (store.index.lookup("r-1") or first).name == "renamed", "the rename to be applied")
    second = store.index.get("r-1")
    assert second is not None
    assert second.version != first.version
    assert store.index.match(make_event(publisher_id="pub-1")) == []

    publish_tombstones(settings, ["r-1"])
    eventually(lambda: "r-1" not in store.index, '"r-1" to be deleted')
    assert store.index.match(make_event(publisher_id="pub-2")) == []
    assert store.errors == {}


def test_an_invalid_record_is_reported_and_the_last_valid_version_stays(
    kafka_bootstrap: str, topic_factory: TopicFactory, stores: list[RuleStore]
) -> None:
    topic = topic_factory("rules", compacted=True)
    settings = deployment(kafka_bootstrap, topic)
    errors = Errors()
    store = RuleStore(settings, on_error=errors)
    stores.append(store.start())
    publish_rules(settings, [rule("r-1")])
    assert store.wait_ready(60)
    eventually(lambda: "r-1" in store.index, '"r-1" to be loaded')
    good = store.index.get("r-1")
    before = rule_errors()

    bad = json.loads(encode_rule(rule("r-1")))
    bad["triggers"] = ["amd"]  # not an LMS trigger
    produce(kafka_bootstrap, topic, [(b"r-1", json.dumps(bad).encode())])
    eventually(lambda: len(errors) == 1, "one error report")

    rule_id, message, source_topic, partition, offset = errors[0]
    assert (rule_id, source_topic, partition, offset) == ("r-1", topic, 0, 1)
    assert message == "rule r-1: triggers.0: 'amd' is not a trigger of platform lms"
    assert rule_errors() == before + 1
    assert store.index.get("r-1") == good  # the previous version is still in force
    assert store.errors["r-1"].offset == 1

    produce(kafka_bootstrap, topic, [(b"r-1", b"{not json"), (b"r-2", encode_rule(rule("r-2", name="x")))])
    eventually(lambda: "r-2" in store.index, '"r-2" to be loaded')
    assert len(errors) == 2
    assert "not UTF-8 JSON" in errors[1][1]
    assert store.index.get("r-1") == good
    assert rule_errors() == before + 2


def test_a_restarted_store_is_ready_only_with_everything_up_to_the_high_watermark(
    kafka_bootstrap: str, topic_factory: TopicFactory, stores: list[RuleStore]
) -> None:
    topic = topic_factory("rules", partitions=3, compacted=True)
    settings = deployment(kafka_bootstrap, topic)
    publish_rules(settings, [rule(f"r-{n}", product_id=f"p-{n % 7}") for n in range(300)])
    publish_rules(settings, [rule(f"r-{n}", name="second version") for n in range(0, 300, 3)])
    publish_tombstones(settings, [f"r-{n}" for n in range(0, 300, 10)])
    bad = json.loads(encode_rule(rule("r-1")))
    bad["level"] = "publisher"
    produce(kafka_bootstrap, topic, [(b"r-1", json.dumps(bad).encode())])  # r-1 keeps its valid version
    invalid_then_fixed = json.loads(encode_rule(rule("r-500")))
    invalid_then_fixed["platform"] = "email"
    produce(kafka_bootstrap, topic, [(b"r-500", json.dumps(invalid_then_fixed).encode())])
    publish_rules(settings, [rule("r-500")])
    expected = {f"r-{n}" for n in range(300) if n % 10} | {"r-500"}

    errors = Errors()
    before = rule_errors()
    store = RuleStore(settings, on_error=errors)
    assert not store.ready
    stores.append(store.start())
    assert store.wait_ready(60)
    index = store.index  # the snapshot at the moment of readiness is already complete
    assert set(index.rules) == expected
    assert all(index.rules[f"r-{n}"].name == "second version" for n in range(3, 300, 3) if n % 10)
    assert index.rules["r-1"].name == "Lead sold"
    # Only the still-current bad record is reported; the one superseded during the load is not.
    assert [e[0] for e in errors] == ["r-1"]
    assert rule_errors() == before + 1


def test_two_stores_agree(kafka_bootstrap: str, topic_factory: TopicFactory, stores: list[RuleStore]) -> None:
    settings = deployment(kafka_bootstrap, topic_factory("rules", partitions=2, compacted=True))
    first, second = RuleStore(settings).start(), RuleStore(settings).start()
    stores.extend([first, second])
    publish_rules(settings, [rule(f"r-{n % 6}", name=f"v{n}") for n in range(20)])  # versions in order
    publish_tombstones(settings, ["r-5"])
    expected = {f"r-{k}": f"v{max(n for n in range(20) if n % 6 == k)}" for k in range(5)}

    def names(store: RuleStore) -> dict[str, str | None]:
        return {rule_id: r.name for rule_id, r in store.index.rules.items()}

    eventually(
        lambda: names(first) == expected and names(second) == expected, "both stores to hold the same rules"
    )
    assert {r: c.version for r, c in first.index.rules.items()} == {
        r: c.version for r, c in second.index.rules.items()
    }


def test_a_missing_topic_is_not_ready_and_says_why(
    kafka_bootstrap: str, topic_factory: TopicFactory, stores: list[RuleStore]
) -> None:
    settings = deployment(kafka_bootstrap, "eventmail-test-no-such-rules-topic")
    with pytest.raises(RuleError, match="does not exist"):
        RuleStore(settings).load(timeout=10)
    store = RuleStore(settings)
    stores.append(store.start())
    eventually(lambda: store.failure is not None, "the store to report a failure")
    assert not store.ready
    assert "does not exist" in (store.failure or "")


def test_load_reads_once_without_a_thread(kafka_bootstrap: str, topic_factory: TopicFactory) -> None:
    settings = deployment(kafka_bootstrap, topic_factory("rules", compacted=True))
    assert len(RuleStore(settings).load()) == 0
    publish_rules(settings, [rule("r-1"), rule("r-2", enabled=False)])
    index = RuleStore(settings).load()
    assert sorted(index.rules) == ["r-1", "r-2"]
    assert index.enabled_count == 1
    assert index.get("r-2") is None
