"""``eventmail run`` under failure: rule changes mid-stream, SIGTERM, kill -9, replicas coming and
going, a broker restart and an SMTP outage. Every scenario ends with a count at the SMTP server and
on the outcome topic compared with what was expected."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from consumer.outcomes.model import OutcomeStatus
from tests.chaos_support import Kill, kill_windows, read_outcomes
from tests.clirun import run_cli
from tests.factories import make_event
from tests.pipeline_support import apply_rules, esp_env, outcomes, publish, rule_doc, wait_outcomes
from tests.support.kafka import LocalBroker, TopicFactory, consume_all, produce
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory, SMTPTestServer

FAST = {
    "EVENTMAIL_PIPELINE__COMMIT_INTERVAL_SECONDS": "0.2",
    "EVENTMAIL_PIPELINE__DRAIN_TIMEOUT_SECONDS": "10",
}


@pytest.fixture
def deployment(kafka_bootstrap: str, topic_factory: TopicFactory) -> Deployment:
    return Deployment.create(kafka_bootstrap, topic_factory)


def _sent_ids(deployment: Deployment, expected: int) -> list[str]:
    got = wait_outcomes(
        deployment, lambda o: len({x.event_id for x in o if x.status is OutcomeStatus.SENT}) >= expected, 120
    )
    return [o.event_id or "" for o in got if o.status is OutcomeStatus.SENT]


def _assert_exactly_once(server: SMTPTestServer, expected: int) -> None:
    ids = [m.message_id for m in server.messages]
    duplicates = {k: n for k, n in Counter(ids).items() if n > 1}
    assert len(set(ids)) == expected, f"{expected - len(set(ids))} mails missing"
    assert not duplicates, (
        f"{len(duplicates)} mails sent more than once, e.g. {sorted(duplicates.items())[:5]}"
    )


def test_rule_changes_and_deletions_take_effect_without_restart(
    deployment: Deployment, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    """Each change is waited for through ``eventmail_rules_loaded``, which the store sets after it
    swapped its index: ``r-idle`` (a trigger no event here has) rides along so that an edit of
    ``r-live`` moves the count too (the rules topic has one partition, applied in order)."""
    server = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(deployment, tmp_path, rule_doc("r-live", action={"subject": "v1 {{ lead_id }}"}))
    idle = rule_doc("r-idle", triggers=["lead_rejected"])
    service = ServiceProcess("run", deployment.env(**FAST), tmp_path).start()
    try:
        service.wait_ready()
        assert service.metric("eventmail_rules_loaded") == 1
        publish(deployment, [make_event(lead_id="A")])
        server.wait_for(1, timeout=60)
        apply_rules(deployment, tmp_path, rule_doc("r-live", action={"subject": "v2 {{ lead_id }}"}), idle)
        service.wait_metric("eventmail_rules_loaded", lambda n: n == 2)  # v2 is in force, then r-idle
        publish(deployment, [make_event(lead_id="B")])
        server.wait_for(2, timeout=60)
        result = run_cli(["rules", "delete", "r-live"], deployment.env())
        assert result.code == 0, result.err
        service.wait_metric("eventmail_rules_loaded", lambda n: n == 1)
        publish(deployment, [make_event(lead_id="C")])
        # C is matched (against no rule of its trigger) before the next rule comes.
        service.wait_metric("eventmail_events_consumed_total", lambda n: n == 3)
        marker_rule = rule_doc("r-marker", action={"subject": "marker {{ lead_id }}"})
        apply_rules(deployment, tmp_path, marker_rule)
        service.wait_metric("eventmail_rules_loaded", lambda n: n == 2)
        publish(deployment, [make_event(lead_id="D")])
        server.wait_for(3, timeout=60)
        assert service.terminate() == 0
    finally:
        service.stop()
    # C arrived while no rule matched: nothing; D only through the new rule.
    assert [m.subject for m in server.messages] == ["v1 A", "v2 B", "marker D"]


def test_sigterm_mid_stream_then_restart_loses_and_repeats_nothing(
    deployment: Deployment, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory("plain", reply_delay=0.002)
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(deployment, tmp_path, rule_doc("r-1"))
    events = [make_event(lead_id=f"T{i}") for i in range(600)]
    publish(deployment, events)
    service = ServiceProcess("run", deployment.env(**FAST), tmp_path, name="first").start()
    try:
        server.wait_until(lambda: len(server.messages) >= 50, timeout=90, what="50 mails")
        assert service.terminate() == 0
        stopped_at = len(server.messages)
        assert stopped_at < len(events), "the stream was over before SIGTERM; nothing was tested"
        second = ServiceProcess("run", deployment.env(**FAST), tmp_path, name="second").start()
        try:
            server.wait_for(len(events), timeout=120)
            _sent_ids(deployment, len(events))
            assert second.terminate() == 0
        finally:
            second.stop()
    finally:
        service.stop()
    _assert_exactly_once(server, len(events))


def test_kill_9_at_random_points_loses_nothing(
    deployment: Deployment, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    """kill -9 at random moments while 2,000 matching events flow, restarted each time.

    Guaranteed: no mail is lost, every one has a ``sent`` outcome, and every copy of a mail carries the
    same Message-ID. A copy can only come from a kill between the server's acceptance of a mail and
    the acknowledgement of its outcome (docs/delivery.md): the test counts, per kill, the mails the
    server had taken that had no ``sent`` outcome yet, and allows a copy of those only (at most one per
    kill). That number is not the pool size: the outcome is written after the connection is free for
    the next mail, so on a loaded machine tens of mails can wait for their outcome's acknowledgement.
    """
    server = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": server}, max_connections=4))
    apply_rules(deployment, tmp_path, rule_doc("r-1"))
    events = [make_event(lead_id=f"K{i}") for i in range(2000)]
    publish(deployment, events)
    rng = random.Random(7)
    kills: list[Kill] = []
    while len(set(server.message_ids)) < len(events) and len(kills) < 5:
        service = ServiceProcess("run", deployment.env(**FAST), tmp_path, name=f"k{len(kills)}").start()
        target = min(len(events) - 1, len(set(server.message_ids)) + rng.randint(100, 350))
        try:
            server.wait_until(lambda t=target: len(server.messages) >= t, timeout=120, what=f"{target} mails")
            time.sleep(rng.random() * 0.05)
            kill = Kill(time.time(), service.name, len(server.messages))
            service.kill()
            kill.dead_at = time.time()
            kills.append(kill)
        finally:
            service.stop()
    final = ServiceProcess("run", deployment.env(**FAST), tmp_path, name="final").start()
    try:
        server.wait_until(lambda: len(set(server.message_ids)) >= len(events), timeout=180, what="every mail")
        sent = _sent_ids(deployment, len(events))
        assert final.terminate() == 0
    finally:
        final.stop()
    assert len(kills) == 5
    ids = server.message_ids
    assert len(set(ids)) == len(events)  # nothing lost
    assert set(sent) == {e.event_id for e in events}  # every mail has a sent outcome
    arrivals = [(m.message_id or "", m.received_at) for m in server.messages]
    windows = kill_windows(kills, arrivals, read_outcomes(deployment))
    copies = len(ids) - len(set(ids))
    print(
        f"kill -9 x{len(kills)}: {len(events)} mails, {copies} copies; caught at each kill {windows.per_kill}"
    )
    # No copy without a kill between the first delivery and the next, none after a sent outcome; a kill
    # catches at most the records a replica holds (EVENTMAIL_PIPELINE__MAX_IN_FLIGHT, 256 by default).
    windows.check(held=256)
    assert copies == sum(windows.per_kill)


def _partitions(records: list[dict[str, object]], topic: str) -> set[int]:
    """The partitions of ``topic`` named in "partitions assigned/revoked" log records."""
    named = {str(p) for r in records for p in r.get("partitions") or []}  # type: ignore[attr-defined]
    return {int(p[len(topic) + 1 : -1]) for p in named if p.startswith(f"{topic}[")}


def _committed(deployment: Deployment, topic: str, partitions: set[int]) -> dict[int, int]:
    """The group's committed offsets (-1001: none) of these partitions of ``topic``."""
    reader = Consumer({"bootstrap.servers": deployment.bootstrap, "group.id": deployment.group_id})
    try:
        listed = reader.committed([TopicPartition(topic, p) for p in sorted(partitions)], timeout=30)
    finally:
        reader.close()
    return {tp.partition: tp.offset for tp in listed}


def test_replicas_share_partitions_and_survive_one_killed_and_one_added(
    deployment: Deployment, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    """Replica ``b`` owns event partitions and sends mail; when it leaves, its drain and final commit
    cover every record it delivered, so whoever takes its partitions starts after them (no record
    fetched again, none skipped as a duplicate), and no mail is lost or sent twice."""
    server = smtp_server_factory("plain", reply_delay=0.002)
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(deployment, tmp_path, rule_doc("r-1"))
    lms = deployment.topics["lms"]
    events = [make_event(lead_id=f"R{i}") for i in range(1500)]
    a = ServiceProcess("run", deployment.env(**FAST), tmp_path, name="a").start()
    b = ServiceProcess("run", deployment.env(**FAST), tmp_path, name="b").start()
    c: ServiceProcess | None = None
    try:
        a.wait_ready()
        b.wait_ready()
        publish(deployment, events)
        server.wait_until(lambda: len(server.messages) >= 300, timeout=120, what="300 mails")
        b.wait_metric("eventmail_mails_sent_total", lambda n: n > 0)  # b owns event partitions
        b_owned = _partitions(b.logged("partitions assigned"), lms)
        assert b_owned, "b sent mail without an lms partition logged as assigned"
        a_before = len(a.logged("partitions assigned"))
        assert b.terminate() == 0  # leaves the group cleanly: drain, commit, revoke; its partitions move
        assert b_owned <= _partitions(b.logged("partitions revoked"), lms)
        # Before b's partitions are fetched by anyone else, every outcome on them is b's: the offsets
        # it committed on leaving are past each record it delivered.
        delivered: dict[int, int] = {}
        for o in wait_outcomes(deployment, lambda o: True):
            if o.status is OutcomeStatus.SENT and o.source is not None and o.source.partition in b_owned:
                delivered[o.source.partition] = max(delivered.get(o.source.partition, -1), o.source.offset)
        committed = _committed(deployment, lms, b_owned)
        assert delivered
        assert all(committed[p] > last for p, last in delivered.items()), (committed, delivered)
        c = ServiceProcess("run", deployment.env(**FAST), tmp_path, name="c").start()
        c.wait_ready()
        server.wait_for(len(events), timeout=180)
        _sent_ids(deployment, len(events))
        # b's partitions went on with a or c, from where b's commit left them.
        taken = _partitions(a.logged("partitions assigned")[a_before:] + c.logged("partitions assigned"), lms)
        assert b_owned <= taken
        for proc in (a, c):
            assert proc.metric("eventmail_duplicates_skipped_total") == 0, proc.name
        assert a.terminate() == 0
        assert c.terminate() == 0
    finally:
        for proc in (a, b, c):
            if proc is not None:
                proc.stop()
    _assert_exactly_once(server, len(events))
    ends = _committed(deployment, lms, {0, 1, 2})
    assert sum(ends.values()) == len(events), ends  # everything committed at the end


def test_broker_restart_mid_stream_recovers_by_itself(
    deployment: Deployment, smtp_server_factory: SMTPServerFactory, tmp_path: Path, local_broker: LocalBroker
) -> None:
    server = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(deployment, tmp_path, rule_doc("r-1"))
    service = ServiceProcess("run", deployment.env(**FAST), tmp_path).start()
    try:
        service.wait_ready()
        first = [make_event(lead_id=f"B{i}") for i in range(200)]
        publish(deployment, first)
        server.wait_until(lambda: len(server.messages) >= 20, timeout=60, what="20 mails")
        local_broker.restart()
        second = [make_event(lead_id=f"C{i}") for i in range(200)]
        publish(deployment, second)
        server.wait_for(400, timeout=180)
        _sent_ids(deployment, 400)
        assert service.proc is not None
        assert service.proc.poll() is None, "the consumer died with the broker"
        assert service.terminate() == 0
    finally:
        service.stop()
    _assert_exactly_once(server, 400)  # README: no second mail through a broker restart
    written = outcomes(deployment)  # the whole topic, after the service stopped
    sent = Counter(o.event_id for o in written if o.status is OutcomeStatus.SENT)
    assert set(sent) == {e.event_id for e in first + second}
    assert {k: n for k, n in sent.items() if n > 1} == {}, "sent outcomes written twice"


def test_smtp_outage_of_one_server_does_not_stop_the_others(
    deployment: Deployment, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    down = smtp_server_factory("plain")
    up = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": down, "other": up}))
    apply_rules(
        deployment,
        tmp_path,
        rule_doc("r-down"),
        rule_doc(
            "r-up", action={"connection": {"type": "esp", "name": "other"}, "subject": "up {{ lead_id }}"}
        ),
    )
    env = deployment.env(
        **FAST,
        EVENTMAIL_PIPELINE__RETRY_BASE_SECONDS="1",
        EVENTMAIL_SMTP__IN_PLACE_RETRIES="1",
        EVENTMAIL_SMTP__RETRY_BASE_SECONDS="0.1",
        EVENTMAIL_SMTP__CONNECT_TIMEOUT_SECONDS="2",
        EVENTMAIL_SMTP__CIRCUIT_OPEN_SECONDS="3",
    )
    service = ServiceProcess("run", env, tmp_path).start()
    stop_feed = threading.Event()
    try:
        service.wait_ready()
        down.stop()
        events = [make_event(lead_id=f"O{i}") for i in range(40)]

        def feed() -> None:  # events keep arriving during the outage
            for i in range(0, len(events), 4):
                publish(deployment, events[i : i + 4])
                if stop_feed.wait(0.5):
                    return

        feeder = threading.Thread(target=feed)
        feeder.start()
        up.wait_for(20, timeout=60)  # mail for the healthy server keeps flowing during the outage
        assert len(down.messages) == 0
        # Mail for the server that is down goes to the retry topic, and comes back and fails again
        # while the outage lasts (more hand-offs than mails), never failed for good.
        service.wait_metric(
            "eventmail_mails_retried_total", lambda n: n > len(events), {"connection": "default"}
        )
        assert service.metric("eventmail_mails_failed_total") == 0
        assert len(down.messages) == 0
        down.start()
        feeder.join()
        up.wait_for(len(events), timeout=60)
        down.wait_until(lambda: len(set(down.message_ids)) >= len(events), timeout=180, what="every mail")
        assert service.terminate() == 0
    finally:
        stop_feed.set()
        service.stop()
    assert len(set(down.message_ids)) == len(events)
    _assert_exactly_once(up, len(events))
    _assert_exactly_once(down, len(events))
    retrying = [o for o in wait_outcomes(deployment, lambda o: True) if o.status is OutcomeStatus.RETRYING]
    assert retrying
    assert all(o.rule_id == "r-down" for o in retrying)


def test_producer_record_key_none_and_headers_are_preserved_in_the_dlq(
    deployment: Deployment, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    service = ServiceProcess("run", deployment.env(**FAST), tmp_path).start()
    try:
        service.wait_ready()
        produce(
            deployment.bootstrap, deployment.topics["lms"], [(None, b"\xff\xfe")], headers=[("trace", b"t-1")]
        )
        (dlq,) = consume_all(deployment.bootstrap, deployment.topics["dlq"], expected=1, timeout=60)
        assert service.terminate() == 0
    finally:
        service.stop()
    headers = dict(dlq.headers() or [])
    assert dlq.key() is None
    assert dlq.value() == b"\xff\xfe"
    assert headers["trace"] == b"t-1"
    assert b"unrecognised encoding" in headers["eventmail.error"]
