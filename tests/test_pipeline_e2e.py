"""``eventmail run`` end to end, as a real process against the real broker and real SMTP servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.events.triggers import Platform
from consumer.outcomes.model import OutcomeStatus
from tests.factories import make_event
from tests.pipeline_support import apply_rules, esp_env, outcomes, publish, rule_doc, wait_outcomes
from tests.support.kafka import TopicFactory, consume_all, produce
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory


@pytest.fixture
def deployment(kafka_bootstrap: str, topic_factory: TopicFactory) -> Deployment:
    return Deployment.create(kafka_bootstrap, topic_factory)


def test_matching_events_become_mail_and_outcomes(
    deployment: Deployment, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(
        deployment,
        tmp_path,
        rule_doc(
            "r-sold",
            action={
                "cc": [{"email": "cc@example.com"}],
                "bcc": [{"email": "audit@example.com"}],
            },
        ),
    )
    service = ServiceProcess("run", deployment.env(), tmp_path).start()
    try:
        service.wait_ready()
        matching = [make_event(lead_id=f"L{i}", price=10.5 + i) for i in range(5)]
        other_product = make_event(product_id="p-2")
        other_trigger = make_event(trigger="lead_rejected")
        publish(deployment, [*matching, other_product, other_trigger])
        server.wait_for(5, timeout=60)
        got = wait_outcomes(deployment, lambda o: len(o) >= 5)
        # The two events no rule wants are consumed too (on their own partitions, maybe after the mail).
        assert service.wait_metric("eventmail_events_consumed_total", lambda n: n >= 7) == 7
        assert service.terminate() == 0
    finally:
        service.stop()
    assert len(server.messages) == 5
    by_subject = {m.subject: m for m in server.messages}
    first = by_subject["Lead L0 sold for 10.5"]
    assert first.mail_from == "sales@example.com"
    assert sorted(first.rcpt_tos) == ["audit@example.com", "cc@example.com", "ops@example.com"]
    assert first.message["Cc"] == "cc@example.com"
    assert first.message["Bcc"] is None
    assert "Lead L0 from pub-1 (Ada)." in first.message.get_content()
    assert len({m.message_id for m in server.messages}) == 5
    assert {o.status for o in got} == {OutcomeStatus.SENT}
    assert {o.event_id for o in got} == {e.event_id for e in matching}
    outcome = next(o for o in got if o.event_id == matching[0].event_id)
    assert outcome.to == ["ops@example.com"]
    assert outcome.cc == ["cc@example.com"]
    assert outcome.bcc == ["audit@example.com"]
    assert outcome.subject == "Lead L0 sold for 10.5"
    assert outcome.message_id == first.message_id
    assert outcome.connection == "esp:default"
    assert outcome.source is not None
    assert outcome.source.topic == deployment.topics["lms"]


def test_malformed_records_go_to_the_dlq_and_good_ones_are_delivered(
    deployment: Deployment, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(deployment, tmp_path, rule_doc("r-1"))
    service = ServiceProcess("run", deployment.env(), tmp_path).start()
    try:
        service.wait_ready()
        good = [make_event(lead_id=f"G{i}") for i in range(3)]
        bad: list[tuple[bytes | None, bytes | None]] = [
            (b"k1", b"\x00\x01garbage"),
            (b"k2", b"{not json"),
            (b"k3", b'{"event_id": "x", "trigger": "amd", "occurred_at": "2026-01-01T00:00:00Z"}'),
            (b"k4", b'{"event_id": "y", "trigger": "lead_sold"}'),
            (b"k5", None),
        ]
        publish(deployment, good[:1])
        produce(deployment.bootstrap, deployment.topics["lms"], bad, partition=0)
        publish(deployment, good[1:])
        dlq = consume_all(deployment.bootstrap, deployment.topics["dlq"], expected=5, timeout=60)
        server.wait_for(3, timeout=60)
        assert service.wait_metric("eventmail_dlq_records_total", lambda n: n >= 5) == 5
        assert service.terminate() == 0
    finally:
        service.stop()
    assert sorted(m.key() for m in dlq) == [b"k1", b"k2", b"k3", b"k4", b"k5"]
    headers = {m.key(): dict(m.headers() or []) for m in dlq}
    assert b"trigger 'amd' is not a lms trigger" in headers[b"k3"]["eventmail.error"]
    assert b"occurred_at" in headers[b"k4"]["eventmail.error"]
    assert headers[b"k1"]["eventmail.source"].startswith(deployment.topics["lms"].encode() + b":0:")
    assert [m.value() for m in dlq if m.key() == b"k2"] == [b"{not json"]
    assert sorted(m.subject or "" for m in server.messages) == sorted(
        f"Lead G{i} sold for 12.5" for i in range(3)
    )


def test_call_logic_events_use_their_own_topic_and_rules(
    deployment: Deployment, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(
        deployment,
        tmp_path,
        rule_doc(
            "r-calls",
            platform="call_logic",
            triggers=["buyer_response"],
            filters={"call_tracking_pools": {"include": ["pool-1"]}},
            action={
                "subject": "Call {{ lead_id }} via {{ call_tracking_pool_id }}",
                "content_type": "html",
                "body": "<p>Buyer {{ buyer_id }} &amp; {{ data.note }}</p>",
            },
        ),
    )
    service = ServiceProcess("run", deployment.env(), tmp_path).start()
    try:
        service.wait_ready()
        events = [
            make_event(Platform.CALL_LOGIC, "buyer_response", lead_id="C1", data={"note": "<b>vip</b>"}),
            make_event(Platform.CALL_LOGIC, "buyer_response", lead_id="C2", call_tracking_pool_id="pool-9"),
            make_event(Platform.LMS, "lead_sold", lead_id="C3"),
        ]
        publish(deployment, events)
        server.wait_for(1, timeout=60)
        wait_outcomes(deployment, lambda o: len(o) >= 1)
        assert service.wait_metric("eventmail_events_consumed_total", lambda n: n >= 3) == 3
        assert service.terminate() == 0
    finally:
        service.stop()
    assert [m.subject for m in server.messages] == ["Call C1 via pool-1"]
    html = server.messages[0].message.get_content()
    assert "&lt;b&gt;vip&lt;/b&gt;" in html
    assert [o.event_id for o in outcomes(deployment)] == [events[0].event_id]
