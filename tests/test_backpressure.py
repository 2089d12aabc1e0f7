"""Backpressure of ``eventmail run`` on real parts: partitions pause when the pipeline holds its
in-flight bound and resume after, also across a rebalance; and a partition whose first record is
stuck is paused once its uncommitted span passes ``pipeline.max_uncommitted_per_partition``."""

from __future__ import annotations

import time
from pathlib import Path

from consumer.mail.message import message_id_for
from tests.chaos_support import FAST, QUICK_RETRIES, Tally, wait_sent_outcomes, wait_until
from tests.factories import make_event
from tests.pipeline_support import SENDER_DOMAIN, apply_rules, esp, publish, rule_doc
from tests.support.kafka import TopicFactory
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory

PAUSED = "eventmail_partitions_paused"


def test_partitions_pause_at_the_in_flight_bound_and_resume_across_a_rebalance(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
) -> None:
    """A backlog to an ESP that answers DATA after 2 s: replica a holds its 4 mails in flight for
    over a second and pauses its partitions; b joins (some paused partitions move to it) and leaves
    again (they come back to a, where librdkafka kept them paused). The ESP gets fast again: every
    mail arrives once and nothing stays paused."""
    deployment = Deployment.create(kafka_bootstrap, topic_factory)
    server = smtp_server_factory("plain", data_reply_delay=2.0)
    deployment.with_esp({"default": esp(server, max_connections=4)})
    apply_rules(deployment, tmp_path, rule_doc("r-bp"))
    events = [make_event(lead_id=f"BP{i}") for i in range(300)]
    expected = {message_id_for(e.event_id, "r-bp", SENDER_DOMAIN) for e in events}
    env = deployment.env(**FAST, EVENTMAIL_PIPELINE__MAX_IN_FLIGHT="4")
    a = ServiceProcess("run", env, tmp_path, name="a").start()
    b = ServiceProcess("run", env, tmp_path, name="b")
    started = time.monotonic()
    try:
        a.wait_ready()
        publish(deployment, events)
        wait_until(lambda: a.metric(PAUSED) > 0, 60, "partitions paused on a", every=0.05, running=[a])
        b.start().wait_ready()
        wait_until(lambda: b.metric("eventmail_mails_sent_total") > 0, 60, "mail sent by b", running=[a, b])
        left = len(expected) - len(set(server.message_ids))
        assert left > 100, f"the backlog was nearly done ({left} left) before b left"
        assert b.terminate() == 0, b.tail()
        server.data_reply_delay = 0.01  # the ESP is fast again
        server.wait_until(
            lambda: len(set(server.message_ids)) >= len(expected), timeout=180, what="every mail"
        )
        outcomes = wait_sent_outcomes(deployment, expected)
        wait_until(lambda: a.metric(PAUSED) == 0, 30, "a's partitions resumed", running=[a])
        assert a.terminate() == 0, a.tail()
    finally:
        a.stop()
        b.stop()
    tally = Tally(
        "backpressure",
        expected,
        [m.message_id or "" for m in server.messages],
        outcomes,
        time.monotonic() - started,
    )
    tally.assert_exactly_once()


def test_a_stuck_record_pauses_its_partition_at_the_uncommitted_limit(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
) -> None:
    """The first record's mail hangs in DATA; the 299 behind it go to another server. At most the
    limit (40) and the in-flight bound (16) of them are mailed while it is stuck, the partition is
    paused meanwhile, and all of them follow once it is done (before, all 299 were mailed while
    its commit stayed at offset 0)."""
    deployment = Deployment.create(kafka_bootstrap, topic_factory, partitions=1)
    stuck = smtp_server_factory("plain", hang_at_data_end=True, hang_times=1)
    fast = smtp_server_factory("plain")
    deployment.with_esp({"stuck": esp(stuck), "fast": esp(fast)})
    apply_rules(
        deployment,
        tmp_path,
        rule_doc(
            "r-stuck", triggers=["lead_rejected"], action={"connection": {"type": "esp", "name": "stuck"}}
        ),
        rule_doc("r-fast", action={"connection": {"type": "esp", "name": "fast"}}),
    )
    first = make_event(trigger="lead_rejected", lead_id="S0")
    behind = [make_event(lead_id=f"S{i}") for i in range(1, 300)]
    limit, in_flight = 40, 16
    env = deployment.env(
        **FAST,
        **QUICK_RETRIES,
        EVENTMAIL_PIPELINE__MAX_IN_FLIGHT=str(in_flight),
        EVENTMAIL_PIPELINE__MAX_UNCOMMITTED_PER_PARTITION=str(limit),
        EVENTMAIL_SMTP__DATA_TIMEOUT_SECONDS="600",
    )
    service = ServiceProcess("run", env, tmp_path).start()
    try:
        service.wait_ready()
        publish(deployment, [first])
        stuck.wait_until(lambda: stuck.hangs >= 1, timeout=60, what="the first mail hanging in DATA")
        publish(deployment, behind)
        wait_until(
            lambda: service.metric(PAUSED) >= 1 or len(fast.messages) >= len(behind),
            60,
            "the partition paused",
            every=0.05,
            running=[service],
        )
        mailed_while_stuck = len(fast.messages)
        assert mailed_while_stuck <= limit + in_flight, (
            f"{mailed_while_stuck} records mailed behind a stuck one (limit {limit})"
        )
        assert service.metric(PAUSED) >= 1
        stuck.stop()  # the hanging send fails: the mail goes to the retry topic, offset 0 is done
        stuck.start()
        fast.wait_until(lambda: len(set(fast.message_ids)) >= len(behind), timeout=120, what="the rest")
        stuck.wait_until(lambda: len(stuck.messages) >= 1, timeout=120, what="the retried mail")
        wait_until(lambda: service.metric(PAUSED) == 0, 30, "the partition resumed", running=[service])
        assert service.terminate() == 0, service.tail()
    finally:
        service.stop()
    assert len(fast.messages) == len(behind)
