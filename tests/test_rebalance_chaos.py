"""Rebalances under load: ``eventmail run`` replicas join, leave (SIGTERM) and die (``kill -9``)
while a backlog of mail flows to an ESP-like sink (20 ms per reply, 100 ms for DATA).

The sink answers 451 to a share of the messages, so retries through the retry topic are waiting and
being sent while partitions move. Afterwards the group's committed offsets reach the end of every
partition (events and retries), every mail arrived, with its original Message-ID and a ``sent``
outcome, and the only copies are of mails in flight at a kill, one each, counted from the sink and
the outcomes (tests.chaos_support.KillWindows): without kills, every mail arrives exactly once.

One move leaves a hanging transaction: a process with a transactional id of the group's hand-off
prefix (another host's, so nobody fences it) opens a transaction on every outcome partition and is
killed with ``kill -9``; mail goes on behind it, then a replica is killed and restarted. Until the
broker aborts the transaction (``transaction.timeout.ms``, 15 s) ``read_committed`` readers see
nothing behind it, so the read-backs of the assignments that follow wait for the abort; meanwhile
every replica answers ``/healthz`` with 200 and none stops. Figures in docs/reliability.md
("Rebalances"). The short version (joins, leaves, SIGTERMs, the hang) runs in ``make test``, the long
one (more mail, more moves in random order, kills among them) in ``make chaos``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from consumer.mail.message import message_id_for
from tests.chaos_support import (
    FAST,
    QUICK_RETRIES,
    HealthWatch,
    Replicas,
    SinkProcess,
    Tally,
    group_lag,
    kill_windows,
    last_records,
    open_hanging_transaction,
    state_of,
    wait_sent_outcomes,
    wait_until,
)
from tests.factories import make_event
from tests.pipeline_support import SENDER_DOMAIN, apply_rules, publish, rule_doc
from tests.support.kafka import TopicFactory
from tests.support.service import Deployment

RULE = "r-rebalance"
#: Event records a replica holds at most between fetching them and their outcomes' acknowledgement.
IN_FLIGHT = 16
POOL = 4
NAMES = ("a", "b", "c")


def _scenario(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    name: str,
    count: int,
    moves: list[str],
    fail_rate: float,
    seed: int,
) -> Tally:
    deployment = Deployment.create(kafka_bootstrap, topic_factory, partitions=6)
    sink = SinkProcess(tmp_path, profile="esp", fail_rate=fail_rate, fail_code=451, seed=seed).start()
    deployment.with_esp({"default": sink.esp(max_connections=POOL)})
    apply_rules(deployment, tmp_path, rule_doc(RULE, action={"subject": "Rebalance {{ lead_id }}"}))
    events = [make_event(lead_id=f"R{i}") for i in range(count)]
    expected = {message_id_for(e.event_id, RULE, SENDER_DOMAIN) for e in events}
    env = deployment.env(**FAST, **QUICK_RETRIES, EVENTMAIL_PIPELINE__MAX_IN_FLIGHT=str(IN_FLIGHT))
    publish(deployment, events)  # the backlog is there before anyone reads it
    started = time.monotonic()
    replicas = Replicas(env, tmp_path, ["a", "b"])
    received: Callable[[], int] = lambda: len(set(sink.message_ids()))  # noqa: E731
    done: list[str] = []
    kills = 0
    hung_at: float | None = None
    watch = HealthWatch(replicas)
    try:
        for i, move in enumerate(moves):
            target = (i + 1) * count // (len(moves) + 2)
            wait_until(lambda t=target: received() >= t, 120, f"{target} mails", every=0.05)  # type: ignore[misc]
            replicas.check_alive()
            kind, who = move.split(":")
            if kind == "join":
                replicas.start(who)
            elif kind == "leave":
                replicas.terminate(who)
            elif kind == "term":  # SIGTERM and back
                replicas.terminate(who)
                replicas.start(who)
            elif kind == "hang":  # a killed replica's open hand-off transaction, then a kill -9 and back
                event_topics = [deployment.topics["lms"], deployment.topics["call_logic"]]
                unsent = last_records(kafka_bootstrap, event_topics)
                hung_at = open_hanging_transaction(
                    kafka_bootstrap,
                    deployment.topics["outcomes"],
                    deployment.group_id,
                    RULE,
                    [unsent[n % len(unsent)] for n in range(6)],
                )
                # Outcomes behind it, then the replica dies with some of them durable and uncommitted:
                # the next owner's read-back must wait for the abort to see them.
                behind = received() + 2 * IN_FLIGHT
                wait_until(lambda b=behind: received() >= b, 120, f"{behind} mails", every=0.05)  # type: ignore[misc]
                replicas.kill(who, received())
                kills += 1
                replicas.start(who)
            elif kind == "kill":
                replicas.kill(who, received())
                kills += 1
                replicas.start(who)
            done.append(f"{move}@{received()}")
        try:
            wait_until(
                lambda: received() >= count,
                240,
                "every mail at the sink",
                running=list(replicas.procs.values()),
            )
        except TimeoutError as exc:  # say how far it got, to tell a slow machine from a stall
            topics = [deployment.topics["lms"], deployment.topics["call_logic"], deployment.topics["retry"]]
            raise TimeoutError(
                f"{exc}: {received()} of {count} mails, after the moves {done}; "
                f"uncommitted {group_lag(kafka_bootstrap, deployment.group_id, topics)}\n"
                f"{state_of(replicas.procs.values())}"
            ) from None
        outcomes = wait_sent_outcomes(deployment, expected, timeout=120)
        seconds = time.monotonic() - started
        replicas.check_alive()
        watch.stop()
        replicas.terminate_all()
        replicas.procs.clear()
    finally:
        watch.stop()
        replicas.stop_all()
        sink.stop()
    topics = [deployment.topics["lms"], deployment.topics["call_logic"], deployment.topics["retry"]]
    lag = group_lag(kafka_bootstrap, deployment.group_id, topics)
    windows = kill_windows(replicas.kills, sink.arrivals(), outcomes)
    readbacks = [
        (float(r.get("seconds", 0.0)), proc.name)
        for proc in replicas.started
        for r in proc.logged("outcome read-back done")
        if hung_at is not None and _time_of(r) >= hung_at
    ]
    late = [
        proc.name
        for proc in replicas.started
        if proc.logged("outcome read-back did not finish in time; deliveries of outcomes not read may repeat")
    ]
    extra: dict[str, object] = {
        "moves": len(moves),
        "kills": kills,
        "caught_at_each_kill": windows.per_kill,
        "answered_451": sink.counters()["failed"],
        "uncommitted": sum(lag.values()),
        "healthz_polls": watch.polls,
        "healthz_failures": len(watch.failures),
    }
    if hung_at is not None:
        extra["longest_readback_in_the_hang"] = f"{max(readbacks, default=(0.0, ''))[0]:.1f}s"
    extra["log"] = " ".join(done)
    tally = Tally(name, expected, sink.message_ids(), outcomes, seconds, extra=extra)
    tally.report(capsys)
    assert all(n == 0 for n in lag.values()), f"the group's commits stop short of the end: {lag}"
    tally.assert_nothing_lost()  # also: no Message-ID that was not asked for
    assert tally.duplicates == 0, f"copies beyond the kill window: {tally.copied}"
    assert tally.outcome_duplicates == 0
    # Each copy is of a mail the sink took from a replica killed before its outcome was written: one
    # per mail in flight at a kill, counted; with the original Message-ID (copies are counted by it).
    windows.check(held=IN_FLIGHT)
    assert tally.copies == sum(windows.per_kill)
    # Neither the hang nor anything else stopped a replica or failed its liveness (the test's own
    # SIGTERMs exit 0, kill -9 are the test's): no stop, no crash loop.
    assert not watch.failures, f"/healthz failed: {watch.failures[:5]}"
    assert not late, f"a read-back ran out of its time in {late}"
    if hung_at is not None:
        # The hang was met: read-backs after it waited for the broker to abort the transaction.
        assert max(readbacks, default=(0.0, ""))[0] >= 3.0, f"no read-back waited on the hang: {readbacks}"
    if fail_rate:
        assert sink.counters()["failed"] > 0, "no 451 was answered: nothing went through the retry topic"
    return tally


def _time_of(record: dict[str, object]) -> float:
    return datetime.fromisoformat(str(record["ts"])).timestamp()


def test_replicas_joining_and_leaving_under_a_backlog_with_retries(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Short version (make test): 800 mails, 20 % answered 451 at first; c joins, a hanging
    transaction and b killed behind it, c leaves, a leaves with SIGTERM and comes back, c joins."""
    _scenario(
        kafka_bootstrap,
        topic_factory,
        tmp_path,
        capsys,
        name="rebalances (short)",
        count=800,
        moves=["join:c", "hang:b", "leave:c", "term:a", "join:c"],
        fail_rate=0.2,
        seed=13,
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_replicas_joining_leaving_and_dying_at_random_under_a_backlog(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(13)
    moves: list[str] = []
    running = {"a", "b"}
    for _ in range(16):
        kind = rng.choice(["join", "leave", "term", "kill", "kill"])
        if kind == "join" or (len(running) == 1 and kind == "leave"):
            absent = sorted(set(NAMES) - running)
            if not absent:
                kind = "term"
            else:
                who = rng.choice(absent)
                running.add(who)
                moves.append(f"join:{who}")
                continue
        who = rng.choice(sorted(running))
        if kind == "leave":
            running.discard(who)
        moves.append(f"{kind}:{who}")
    # One of the SIGTERMs comes with a hanging transaction (a replica killed in its hand-off).
    first_term = next((i for i, m in enumerate(moves) if m.startswith("term:")), None)
    if first_term is None:
        moves.append(f"hang:{sorted(running)[0]}")
    else:
        moves[first_term] = "hang:" + moves[first_term].split(":")[1]
    _scenario(
        kafka_bootstrap,
        topic_factory,
        tmp_path,
        capsys,
        name="rebalances (random)",
        count=5000,
        moves=moves,
        fail_rate=0.1,
        seed=14,
    )
