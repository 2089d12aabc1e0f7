"""A DLQ record always fits under the producer's size limit, headers included, and never stops the
consumer: the original headers are kept in order within their budget, the rest dropped and counted,
the value cut last."""

from __future__ import annotations

import random
from pathlib import Path

from confluent_kafka import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.events.codec import encode_json
from consumer.pipeline.dlq import DLQ_MAX_HEADER_BYTES, DLQ_MAX_KEY_BYTES, DLQ_MAX_RECORD_BYTES, fit
from tests.chaos_support import FAST, alive, produce_many, read_topic, wait_until
from tests.factories import make_event
from tests.pipeline_support import apply_rules, esp_env, rule_doc
from tests.support.kafka import TopicFactory
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory


@settings(max_examples=60, deadline=None)
@given(
    key_len=st.integers(0, 30_000),
    value_len=st.integers(0, 1_100_000),
    header_sizes=st.lists(st.integers(0, 300_000), max_size=12),
)
def test_every_dead_letter_fits(key_len: int, value_len: int, header_sizes: list[int]) -> None:
    headers: list[tuple[str, bytes | str | None]] = [(f"h{i}", b"x" * n) for i, n in enumerate(header_sizes)]
    record = fit(b"k" * key_len, b"v" * value_len, headers, "invalid JSON: " + "e" * 5000, "lms:0:1")
    assert record.size() <= DLQ_MAX_RECORD_BYTES
    names = [k for k, _ in record.headers]
    kept = [h for h in record.headers if not h[0].startswith("eventmail.")]
    assert kept == [(k, v) for k, v in headers if (k, v) in kept]  # a subsequence, in order
    assert sum(len(k) + len(v) for k, v in kept) <= DLQ_MAX_HEADER_BYTES
    assert "eventmail.error" in names
    assert "eventmail.source" in names
    assert ("eventmail.headers_dropped" in names) == (len(kept) < len(headers))
    assert len(record.key or b"") == min(key_len, DLQ_MAX_KEY_BYTES)
    if len(record.value or b"") < value_len:
        assert dict(record.headers)["eventmail.truncated_from"] == str(value_len).encode()


def test_a_record_made_mostly_of_headers_reaches_the_dlq_and_the_consumer_goes_on(
    kafka_bootstrap: str, topic_factory: TopicFactory, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    deployment = Deployment.create(kafka_bootstrap, topic_factory)
    server = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(deployment, tmp_path, rule_doc("r-dlq"))
    rng = random.Random(7)
    headers = [(f"trace-{i}", rng.randbytes(25_000)) for i in range(40)]  # 1,000,000 bytes of headers
    bad = b'{"not": "an event"'
    service = ServiceProcess("run", deployment.env(**FAST), tmp_path).start()
    try:
        service.wait_ready()
        pid = alive(service).pid
        produce_many(
            deployment.bootstrap, deployment.topics["lms"], [(b"bad-headers", bad, headers)], partition=0
        )
        dlq: list[Message] = []

        def arrived() -> bool:
            nonlocal dlq
            dlq = read_topic(deployment.bootstrap, deployment.topics["dlq"])
            return len(dlq) >= 1

        wait_until(arrived, 60, "the DLQ record", running=[service])
        after = make_event(lead_id="after")
        produce_many(
            deployment.bootstrap, deployment.topics["lms"], [(b"after", encode_json(after), None)], 0
        )
        wait_until(lambda: len(server.messages) >= 1, 60, "the mail after it", running=[service])
        assert alive(service).pid == pid
        assert service.terminate() == 0
    finally:
        service.stop()
    [record] = dlq
    assert record.key() == b"bad-headers"
    assert record.value() == bad
    got = record.headers() or []
    kept = [(k, v) for k, v in got if not k.startswith("eventmail.")]
    assert kept == headers[: len(kept)]
    assert 0 < len(kept) < len(headers)
    ours = dict(got)
    assert b"invalid JSON" in ours["eventmail.error"]
    assert ours["eventmail.source"] == f"{deployment.topics['lms']}:0:0".encode()
    assert ours["eventmail.headers_dropped"].startswith(f"{len(headers) - len(kept)} (".encode())
