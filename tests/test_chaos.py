"""The reliability suite: ``eventmail run`` under injected failures, counted at the SMTP server and on
the outcome topic. Figures of the last run are in docs/reliability.md.

- ``kill -9`` of one of two replicas at random moments, restarted each time;
- the Kafka broker stopped for 10 s mid-stream;
- the SMTP sink stopped for 60 s, answering 451 to 30 % of the messages, or closing connections in
  the middle of DATA.

Only ``kill -9`` can produce a copy of a mail (docs/delivery.md, "The remaining window"); every other
scenario must deliver each mail exactly once. The long versions are marked ``slow`` (``make chaos``);
short versions of the kill and SMTP-fault scenarios run with the rest of the tests.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumer.events.model import Event
from consumer.mail.message import message_id_for
from consumer.outcomes.model import Outcome, OutcomeStatus
from tests.chaos_support import (
    FAST,
    QUICK_RETRIES,
    Kill,
    Replicas,
    SinkProcess,
    Tally,
    alive,
    chaos_monkey,
    kill_windows,
    wait_sent_outcomes,
    wait_until,
)
from tests.factories import make_event
from tests.pipeline_support import SENDER_DOMAIN, apply_rules, esp, publish, rule_doc
from tests.support.kafka import LocalBroker, TopicFactory
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory

RULE = "r-chaos"
#: Pooled SMTP connections per replica, and event records a replica holds at most between fetching
#: them and their outcomes' acknowledgement (EVENTMAIL_PIPELINE__MAX_IN_FLIGHT).
POOL = 4
IN_FLIGHT = 32


@pytest.fixture
def deployment(kafka_bootstrap: str, topic_factory: TopicFactory) -> Deployment:
    return Deployment.create(kafka_bootstrap, topic_factory)


def _events(prefix: str, count: int) -> list[Event]:
    return [make_event(lead_id=f"{prefix}{i}") for i in range(count)]


def _ids(events: list[Event]) -> set[str]:
    return {message_id_for(e.event_id, RULE, SENDER_DOMAIN) for e in events}


def _use(deployment: Deployment, tmp_path: Path, connection: dict[str, object]) -> None:
    deployment.with_esp({"default": connection})
    apply_rules(deployment, tmp_path, rule_doc(RULE, action={"subject": "Chaos {{ lead_id }}"}))


# --- kill -9 -----------------------------------------------------------------------------------------
def _kill_scenario(
    deployment: Deployment,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    name: str,
    count: int,
    kills: int,
    seed: int,
) -> Tally:
    server = smtp_server_factory("plain")
    _use(deployment, tmp_path, esp(server, max_connections=POOL))
    events = _events("K", count)
    expected = _ids(events)
    env = deployment.env(**FAST, EVENTMAIL_PIPELINE__MAX_IN_FLIGHT=str(IN_FLIGHT))
    rng = random.Random(seed)
    started = time.monotonic()
    publish(deployment, events)
    replicas = Replicas(env, tmp_path, ["a", "b"])
    try:
        received = lambda: len(set(server.message_ids))  # noqa: E731
        # Kills spread over the first half to two thirds of the stream.
        step = (count // (3 * kills), 2 * count // (3 * kills))
        chaos_monkey(replicas, received, count, kills, rng, step)
        server.wait_until(lambda: len(set(server.message_ids)) >= count, timeout=240, what="every mail")
        outcomes = wait_sent_outcomes(deployment, expected)
        seconds = time.monotonic() - started
        replicas.check_alive()
        replicas.terminate_all()
    finally:
        replicas.stop_all()
    arrivals = [(m.message_id or "", m.received_at) for m in server.messages]
    windows = kill_windows(replicas.kills, arrivals, outcomes)
    tally = Tally(
        name,
        expected,
        [m.message_id or "" for m in server.messages],
        outcomes,
        seconds,
        extra={
            "kills": len(replicas.kills),
            "copies": len(server.messages) - len(set(server.message_ids)),
            "mails_at_each_kill": [k.received_before for k in replicas.kills],
            "caught_at_each_kill": windows.per_kill,
        },
    )
    tally.report(capsys)
    assert len(replicas.kills) == kills
    assert all(k.received_before < count for k in replicas.kills), "a kill came after the stream ended"
    tally.assert_nothing_lost()
    # Every copy is explained by the window (its first delivery has no sent outcome): no mail was sent
    # again after its outcome was durable, and no mail has two sent outcomes.
    assert tally.duplicates == 0, f"copies outside the documented window: {tally.copied}"
    assert tally.outcome_duplicates == 0
    # Every copy is of a mail the server had taken from a replica killed before its outcome was written,
    # and a kill catches at most the records a replica holds (counted at the server and on the outcomes).
    windows.check(held=IN_FLIGHT)
    return tally


def test_kill_9_of_one_of_two_replicas_loses_nothing(
    deployment: Deployment,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Short version (make test): 1,000 events, 2 kills."""
    _kill_scenario(
        deployment,
        smtp_server_factory,
        tmp_path,
        capsys,
        name="kill -9 (short)",
        count=1000,
        kills=2,
        seed=11,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_at_random_moments_during_5000_events_with_two_replicas(
    deployment: Deployment,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _kill_scenario(
        deployment, smtp_server_factory, tmp_path, capsys, name="kill -9", count=5000, kills=6, seed=5
    )


# --- the broker ----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_broker_stopped_for_10_seconds_mid_stream(
    deployment: Deployment,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
    local_broker: LocalBroker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = smtp_server_factory("plain", reply_delay=0.001)
    _use(deployment, tmp_path, esp(server, max_connections=POOL))
    first, second = _events("B", 2000), _events("C", 1000)
    expected = _ids(first + second)
    replicas = Replicas(deployment.env(**FAST), tmp_path, ["a", "b"])
    try:
        for proc in replicas.procs.values():
            proc.wait_ready()
        pids = replicas.pids()
        started = time.monotonic()
        publish(deployment, first)
        server.wait_until(lambda: len(server.messages) >= 300, timeout=120, what="300 mails")
        local_broker.stop()
        stopped_at = len(server.messages)
        time.sleep(10)
        local_broker.start()
        publish(deployment, second)
        server.wait_until(
            lambda: len(set(server.message_ids)) >= len(expected), timeout=300, what="every mail"
        )
        outcomes = wait_sent_outcomes(deployment, expected, timeout=180)
        seconds = time.monotonic() - started
        assert replicas.pids() == pids, "a replica restarted"
        replicas.terminate_all()
    finally:
        replicas.stop_all()
    tally = Tally(
        "broker stopped 10 s",
        expected,
        [m.message_id or "" for m in server.messages],
        outcomes,
        seconds,
        extra={"mails_before_the_stop": stopped_at},
    )
    tally.report(capsys)
    assert stopped_at < len(first), "the stream was over before the broker stopped"
    tally.assert_exactly_once()


# --- the SMTP sink -----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smtp_sink_stopped_for_60_seconds(
    deployment: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = SinkProcess(tmp_path).start()
    _use(deployment, tmp_path, sink.esp(max_connections=POOL))
    upfront, during = _events("S", 1000), _events("D", 400)
    expected = _ids(upfront + during)
    service = ServiceProcess("run", deployment.env(**FAST, **QUICK_RETRIES), tmp_path).start()
    stop_feed = threading.Event()
    feeder: threading.Thread | None = None
    try:
        service.wait_ready()
        pid = alive(service).pid
        started = time.monotonic()
        publish(deployment, upfront)
        wait_until(lambda: len(sink.message_ids()) >= 200, 60, "200 mails")
        sink.stop()
        down_at = len(sink.message_ids())

        def feed() -> None:  # events keep arriving during the outage
            for i in range(0, len(during), 10):
                publish(deployment, during[i : i + 10])
                if stop_feed.wait(1.5):
                    return

        feeder = threading.Thread(target=feed)
        feeder.start()
        time.sleep(60)
        sink.start()
        feeder.join()
        sink.wait_distinct(len(expected), timeout=400)
        outcomes = wait_sent_outcomes(deployment, expected, timeout=120)
        seconds = time.monotonic() - started
        retried = service.metric("eventmail_mails_retried_total")
        assert alive(service).pid == pid
        assert service.terminate() == 0
    finally:
        stop_feed.set()
        if feeder is not None:
            feeder.join()
        service.stop()
        sink.stop()
    tally = Tally(
        "SMTP sink stopped 60 s",
        expected,
        sink.message_ids(),
        outcomes,
        seconds,
        extra={"mails_before_the_stop": down_at, "handed_to_the_retry_topic": int(retried)},
    )
    tally.report(capsys)
    assert down_at < len(upfront), "the stream was over before the sink stopped"
    assert retried > 0, "nothing went through the retry topic: the outage was not seen"
    tally.assert_exactly_once()


def _faulty_sink_scenario(
    deployment: Deployment,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    name: str,
    count: int,
    fail_rate: float,
    drop_rate: float,
    seed: int,
) -> Tally:
    sink = SinkProcess(tmp_path, fail_rate=fail_rate, fail_code=451, drop_rate=drop_rate, seed=seed).start()
    _use(deployment, tmp_path, sink.esp(max_connections=POOL))
    events = _events("F", count)
    expected = _ids(events)
    service = ServiceProcess("run", deployment.env(**FAST, **QUICK_RETRIES), tmp_path).start()
    try:
        service.wait_ready()
        pid = alive(service).pid
        started = time.monotonic()
        publish(deployment, events)
        sink.wait_distinct(count, timeout=400)
        outcomes = wait_sent_outcomes(deployment, expected)
        seconds = time.monotonic() - started
        assert alive(service).pid == pid
        assert service.terminate() == 0
    finally:
        service.stop()
        sink.stop()
    counters = sink.counters()
    tally = Tally(
        name,
        expected,
        sink.message_ids(),
        outcomes,
        seconds,
        extra={
            "answered_451": counters["failed"],
            "dropped_in_data": counters["dropped"],
            "sent_after_retries": sum(1 for o in outcomes if o.attempts > 1),
        },
    )
    tally.report(capsys)
    if fail_rate:
        assert counters["failed"] > count * fail_rate / 2, f"too few 451 replies were injected: {counters}"
    if drop_rate:
        assert counters["dropped"] > count * drop_rate / 2, f"too few drops were injected: {counters}"
    tally.assert_exactly_once()
    return tally


def test_sink_failing_and_dropping_at_random_delivers_each_mail_once(
    deployment: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Short version (make test): 1,000 events; 30 % answered 451, 10 % dropped in DATA."""
    _faulty_sink_scenario(
        deployment,
        tmp_path,
        capsys,
        name="451 30 % + drops 10 % (short)",
        count=1000,
        fail_rate=0.3,
        drop_rate=0.1,
        seed=3,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sink_answering_451_to_30_percent_at_random(
    deployment: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _faulty_sink_scenario(
        deployment, tmp_path, capsys, name="451 to 30 %", count=4000, fail_rate=0.3, drop_rate=0.0, seed=30
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sink_closing_connections_mid_data_at_random(
    deployment: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _faulty_sink_scenario(
        deployment,
        tmp_path,
        capsys,
        name="connection dropped in DATA, 20 %",
        count=4000,
        fail_rate=0.0,
        drop_rate=0.2,
        seed=20,
    )


def test_the_kill_window_count_explains_each_copy_it_cannot_attribute() -> None:
    """The count behind every kill test: a copy with a kill between its deliveries and no sent outcome
    before the second is the kill's; one without a kill between, or after its sent outcome, is not,
    and the failed check says when each delivery, outcome and kill happened."""

    def sent(message_id: str, at: float) -> Outcome:
        created = datetime.fromtimestamp(at, UTC)
        return Outcome(rule_id="r", status=OutcomeStatus.SENT, message_id=message_id, created=created)

    kills = [Kill(at=100.0, replica="a", received_before=10, dead_at=100.01)]
    arrivals = [("<caught>", 99.9), ("<caught>", 105.0), ("<early>", 50.0), ("<early>", 60.0)]
    arrivals += [("<confirmed>", 99.0), ("<confirmed>", 104.0)]
    outcomes = [sent("<caught>", 105.01), sent("<early>", 60.01), sent("<confirmed>", 99.01)]
    windows = kill_windows(kills, arrivals, outcomes)
    assert windows.per_kill == [1]
    assert windows.unexplained == {"<early>": 1, "<confirmed>": 1}
    with pytest.raises(AssertionError) as failed:
        windows.check(held=32)
    text = str(failed.value)
    assert "<early>: no kill between the deliveries at [0.0, 10.0]" in text
    assert "<confirmed>: a sent outcome between the deliveries at [0.0, 5.0]; sent outcomes at [0.01]" in text
    assert "kills (at, dead at) [(50.0, 50.01)]" in text
