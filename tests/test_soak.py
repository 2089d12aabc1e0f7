"""The soak: everything the reliability suite injects one at a time, at random, for a long time.

2-3 ``eventmail run`` replicas of one deployment on the real broker, with the real Schema Registry,
take a steady stream of good events (JSON and Confluent wire format through the registry) for a rule
that mails an SMTP server, interleaved with poison records (tests/test_poison.py) and events for rules
with hostile templates (tests/hostile_templates). Meanwhile a seeded random schedule (the seed is
printed; ``EVENTMAIL_SOAK_SEED`` replays it) sends replicas SIGTERM and ``kill -9`` and restarts them,
lets a third replica join and leave, restarts the broker, makes the SMTP server answer bursts of 451,
and stops the registry for a few seconds.

Afterwards: nothing lost (every good event has a ``sent`` outcome and its mail at the server), copies
only within the documented window (at most one per mail in flight at a kill), the group's committed
offsets at the end of every partition, every poison record in the DLQ, a ``failed`` outcome naming
the limit for every hostile rule, and the peak RSS of every replica (with its render workers) under
a bound. ``EVENTMAIL_SOAK_SECONDS`` (default 600) is how long the chaos lasts; figures of the last
runs are in docs/reliability.md ("Soak").
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient

from consumer.events.codec import encode_json, encode_wire
from consumer.events.registry import register_event_schema, value_subject
from consumer.events.triggers import Platform
from consumer.mail.message import message_id_for
from consumer.outcomes.model import OutcomeStatus
from tests.chaos_support import (
    FAST,
    QUICK_RETRIES,
    Replicas,
    Tally,
    alive,
    group_lag,
    read_outcomes,
    read_topic,
    stacks_of,
    wait_sent_outcomes,
    wait_until,
)
from tests.factories import make_event
from tests.hostile_templates import CORPUS, EVENT_DATA
from tests.pipeline_support import SENDER_DOMAIN, apply_rules, esp, rule_doc
from tests.support.kafka import LocalBroker, TopicFactory
from tests.support.registry_fixtures import RegistryEndpoint
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory, SMTPTestServer
from tests.test_hostile_templates import _tree_rss_kb
from tests.test_poison import Poison

RULE = "r-soak"
SECONDS = float(os.environ.get("EVENTMAIL_SOAK_SECONDS", "600"))
#: Good events produced per second, and one poison record per POISON_EVERY good events.
RATE = 20
POISON_EVERY = 10
#: One event for the hostile rules every HOSTILE_EVERY seconds.
HOSTILE_EVERY = 5.0
IN_FLIGHT = 32
POOL = 4
NAMES = ("a", "b", "c")
#: Peak resident memory of one replica and its render workers.
RSS_BOUND_MB = 400
#: One hostile template per kind of limit (size, output, time), all valid for ``rules validate``.
HOSTILE = [
    next(c for c in CORPUS if c.validation_message is None and kind in c.message)
    for kind in ("repeated string or list", "template produced more than", "template took longer than")
]


@dataclass
class Stream:
    """The producer thread: good events, poison records and hostile events, kept once delivered."""

    deployment: Deployment
    wire_id: int
    rng: random.Random
    good: set[str] = field(default_factory=set)
    poison: Counter[bytes] = field(default_factory=Counter)
    hostile: set[str] = field(default_factory=set)
    failed_deliveries: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.poisoner = Poison(self.rng, avro_input=False, wire_id=self.wire_id)
        # every kind in turn, a nesting bomb among each 500
        self.poison_records = self.poisoner.records(1 << 40, Platform.LMS)
        self.producer = Producer(
            {
                "bootstrap.servers": self.deployment.bootstrap,
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.max.bytes": 1_040_000,
                "message.timeout.ms": 600_000,  # across every broker restart of the soak
            }
        )
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _delivered(self, kind: str) -> Callable[[KafkaError | None, Message], None]:
        def report(err: KafkaError | None, msg: Message) -> None:
            key = msg.key() or b""
            if err is not None:
                self.failed_deliveries.append(f"{kind} {key!r}: {err}")
            elif kind == "good":
                self.good.add(key.decode())
            elif kind == "poison":
                self.poison[key] += 1
            else:
                self.hostile.add(key.decode())

        return report

    def _produce(self, kind: str, key: bytes, value: bytes | None, headers: object = None) -> None:
        topic = self.deployment.topics["lms"]
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers, on_delivery=self._delivered(kind))  # type: ignore[arg-type]
                return
            except BufferError:
                self.producer.poll(0.1)

    def _run(self) -> None:
        started = time.monotonic()
        sent = 0
        next_hostile = started
        while not self.stop.is_set():
            due = int((time.monotonic() - started) * RATE)
            while sent < due:
                event = make_event(lead_id=f"S{sent}")
                value = encode_wire(event, self.wire_id) if sent % 2 else encode_json(event)
                self._produce("good", event.event_id.encode(), value)
                sent += 1
                if sent % POISON_EVERY == 0:
                    key, bad, headers = next(self.poison_records)
                    self._produce("poison", key or b"", bad, headers)
            if time.monotonic() >= next_hostile:
                event = make_event(product_id="p-hostile", data=EVENT_DATA)
                self._produce("hostile", event.event_id.encode(), encode_json(event))
                next_hostile += HOSTILE_EVERY
            self.producer.poll(0)
            self.stop.wait(0.05)
        remaining = self.producer.flush(300)
        if remaining:
            self.failed_deliveries.append(f"{remaining} records not delivered in 300 s")

    @property
    def expected(self) -> set[str]:
        return {message_id_for(event_id, RULE, SENDER_DOMAIN) for event_id in self.good}


@dataclass
class RssWatch:
    """Samples every running process (a replica with its render workers) each second; keeps the peak
    of each (by process name: a restarted replica is another one)."""

    running: Callable[[], list[ServiceProcess]]
    peak_kb: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            for proc in self.running():
                process = proc.proc
                if process is None or process.poll() is not None:
                    continue
                kb = _tree_rss_kb(process.pid)
                try:  # the process's own high-water mark catches a peak between two samples
                    with open(f"/proc/{process.pid}/status", encoding="ascii") as status:
                        for line in status:
                            if line.startswith("VmHWM:"):
                                kb = max(kb, int(line.split()[1]))
                except OSError:
                    continue
                self.peak_kb[proc.name] = max(self.peak_kb[proc.name], kb)

    @property
    def peak_mb(self) -> float:
        return max(self.peak_kb.values(), default=0) / 1024


class Chaos:
    """The seeded schedule of faults, one at a time, each after a random pause."""

    def __init__(
        self,
        rng: random.Random,
        replicas: Replicas,
        broker: LocalBroker,
        server: SMTPTestServer,
        registry: RegistryEndpoint,
        say: Callable[[str], None],
    ) -> None:
        self.rng, self.replicas, self.broker, self.server, self.registry = (
            rng,
            replicas,
            broker,
            server,
            registry,
        )
        self.done: Counter[str] = Counter()
        self.log: list[str] = []
        self.bag: list[str] = []
        self.say = say  # each step as it begins: a failing run shows where it was
        self.pause = threading.Event()  # never set: a fault lasts its own time, nothing waits on it

    def ready(self, who: str) -> None:
        """A SIGTERM is a clean leave once the replica has started (before that, its Python is still
        importing and the signal's default action ends it)."""
        self.replicas.procs[who].wait_ready(timeout=180)

    def step(self, started: float) -> None:
        if not self.bag:  # each kind once per round, in a random order (a short soak sees them all)
            self.bag = ["kill", "kill", "term", "join_or_leave", "broker", "smtp_451"]
            if self.registry.local is not None:
                self.bag.append("registry")
            self.rng.shuffle(self.bag)
        kind = self.bag.pop()
        at = time.monotonic() - started
        self.say(f"soak step | {at:.0f}s {kind} (running: {', '.join(sorted(self.replicas.procs))})")
        running = sorted(self.replicas.procs)
        if kind == "kill":
            who = self.rng.choice(running)
            self.replicas.kill(who, len(self.server.messages))
            self.pause.wait(self.rng.random() * 2)
            self.replicas.start(who)
        elif kind == "term":
            who = self.rng.choice(running)
            self.ready(who)
            self.replicas.terminate(who)
            self.replicas.start(who)
        elif kind == "join_or_leave":
            absent = sorted(set(NAMES) - set(running))
            if absent:
                kind = "join"
                self.replicas.start(self.rng.choice(absent))
            else:
                kind = "leave"
                who = self.rng.choice(running)
                self.ready(who)
                self.replicas.terminate(who)
        elif kind == "broker":
            self.broker.restart()
        elif kind == "smtp_451":
            burst = self.rng.randint(20, 150)
            self.server.fail_times = self.server.attempts + burst
            self.server.fail_code = 451
            kind = f"smtp_451x{burst}"
        elif kind == "registry":
            assert self.registry.local is not None
            self.registry.local.stop()
            self.pause.wait(self.rng.uniform(3, 10))
            self.registry.local.start()
        self.done[kind.split("x")[0]] += 1
        self.log.append(f"{at:.0f}s:{kind}")


@pytest.mark.slow
@pytest.mark.timeout(int(SECONDS) + 1500)
def test_soak_of_every_fault_at_random(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    local_broker: LocalBroker,
    smtp_server_factory: SMTPServerFactory,
    schema_registry: RegistryEndpoint,
    registry_client: SchemaRegistryClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed = int(os.environ.get("EVENTMAIL_SOAK_SEED", str(random.SystemRandom().randrange(1 << 32))))
    with capsys.disabled():
        print(f"\nsoak: seed {seed} (EVENTMAIL_SOAK_SEED={seed} replays the schedule), {SECONDS:.0f} s")
    rng = random.Random(seed)
    deployment = Deployment.create(kafka_bootstrap, topic_factory, partitions=6)
    wire_id = register_event_schema(registry_client, value_subject(deployment.topics["lms"]), Platform.LMS)
    server = smtp_server_factory("plain")
    deployment.with_esp({"default": esp(server, max_connections=POOL)})
    hostile_rules = [
        rule_doc(
            f"r-h-{c.name}",
            product_id="p-hostile",
            action={"use_twig": True, "subject": f"{c.name} {{{{ lead_id }}}}", "body": c.template},
        )
        for c in HOSTILE
    ]
    apply_rules(
        deployment, tmp_path, rule_doc(RULE, action={"subject": "Soak {{ lead_id }}"}), *hostile_rules
    )
    env = deployment.env(
        **FAST,
        **QUICK_RETRIES,
        EVENTMAIL_PIPELINE__MAX_IN_FLIGHT=str(IN_FLIGHT),
        EVENTMAIL_SCHEMA_REGISTRY__URL=schema_registry.url,
        # a replica out of its group while the broker answers replaces its consumer well within the
        # soak's wait for readiness
        EVENTMAIL_KAFKA__GROUP_STUCK_SECONDS="60",
    )
    replicas = Replicas(env, tmp_path, ["a", "b"])
    # the aggregator reads the outcomes throughout and must ride out every fault without a restart
    aggregator = ServiceProcess("aggregate", env, tmp_path, name="aggregator")
    aggregator.start()
    rss = RssWatch(lambda: [*replicas.procs.values(), aggregator])
    stream = Stream(deployment, wire_id, rng=random.Random(seed + 1))

    def say(line: str) -> None:
        with capsys.disabled():
            print(line, flush=True)

    chaos = Chaos(rng, replicas, local_broker, server, schema_registry, say)
    started = time.monotonic()
    last_health: tuple[int, str] = (200, "")
    try:
        rss.thread.start()
        stream.thread.start()
        while time.monotonic() - started < SECONDS:
            chaos.pause.wait(rng.uniform(2, 8))
            replicas.check_alive()
            alive(aggregator)
            try:
                health = aggregator.get("/healthz")
            except OSError as exc:  # not answering yet (start) or too slow to answer: also a change
                health = (0, str(exc))
            if health[0] != last_health[0]:  # each change of the aggregator's health, for the record
                say(f"[{time.monotonic() - started:5.0f}s] aggregator /healthz {health[0]}: {health[1]}")
                last_health = health
            if time.monotonic() - started < SECONDS:
                chaos.step(started)
        stream.stop.set()
        stream.thread.join(320)
        assert not stream.failed_deliveries, stream.failed_deliveries[:5]
        expected = stream.expected
        received: Callable[[], int] = lambda: len(set(server.message_ids) & expected)  # noqa: E731
        wait_until(
            lambda: received() >= len(expected),
            900,
            f"{len(expected)} mails at the server",
            every=1.0,
            running=list(replicas.procs.values()),
        )
        outcomes = wait_sent_outcomes(deployment, expected, timeout=300)
        dlq: list[Message] = []

        def dlq_complete() -> bool:
            nonlocal dlq
            dlq = read_topic(deployment.bootstrap, deployment.topics["dlq"])
            return set(stream.poison) <= {m.key() for m in dlq}

        wait_until(dlq_complete, 300, "every poison record in the DLQ", every=2.0)
        hostile_expected = {(e, r["id"]) for e in stream.hostile for r in hostile_rules}

        def hostile_done() -> bool:
            nonlocal outcomes
            outcomes = read_outcomes(deployment)
            return hostile_expected <= {(o.event_id, o.rule_id) for o in outcomes}

        wait_until(hostile_done, 300, "an outcome of every hostile rule", every=2.0)
        seconds = time.monotonic() - started
        for proc in [*replicas.procs.values(), aggregator]:
            alive(proc)
        status, body = aggregator.get("/healthz")
        assert status == 200, f"/healthz {status}: {body}\n{stacks_of(aggregator)}\n{aggregator.tail()}"
        rss.stop.set()
        rss.thread.join(10)
        replicas.terminate_all()
        replicas.procs.clear()
        assert aggregator.terminate() == 0, aggregator.tail()
    finally:
        aggregator.stop()
        stream.stop.set()
        rss.stop.set()
        replicas.stop_all()
        if schema_registry.local is not None and not schema_registry.local.is_running():
            schema_registry.local.start()
    topics = [deployment.topics["lms"], deployment.topics["call_logic"], deployment.topics["retry"]]
    lag = group_lag(kafka_bootstrap, deployment.group_id, topics)
    aggregator_lag = group_lag(
        kafka_bootstrap, f"{deployment.group_id}-aggregate", [deployment.topics["outcomes"]]
    )
    kills = chaos.done["kill"]
    gap, aggregator_gap = sum(lag.values()), sum(aggregator_lag.values())
    soak_mails = [m.message_id or "" for m in server.messages]
    tally = Tally(
        "soak",
        expected,
        soak_mails,
        [o for o in outcomes if o.rule_id == RULE],
        seconds,
        extra={
            "seed": seed,
            "events": len(expected),
            "poison": sum(stream.poison.values()),
            "hostile_events": len(stream.hostile),
            "kills": kills,
            "faults": dict(chaos.done),
            "answered_451": server.failures,
            "commit_gap": sum(lag.values()),
            "aggregator_commit_gap": sum(aggregator_lag.values()),
            "peak_rss_mb": round(rss.peak_mb),
            "aggregator_peak_rss_mb": round(rss.peak_kb["aggregator"] / 1024),
            "dlq_copies": len(dlq) - len({m.key() for m in dlq}),
        },
    )
    with capsys.disabled():
        print(f"\n{tally.line()}")
        print(f"soak schedule | {' '.join(chaos.log)}")
        print(
            f"soak summary | seed={seed} lost={tally.lost} copies={tally.copies} "
            f"commit_gap={gap} aggregator_commit_gap={aggregator_gap} peak_rss={rss.peak_mb:.0f}MB "
            f"events={len(expected)} kills={kills} faults={dict(chaos.done)}"
        )
    assert all(n == 0 for n in lag.values()), f"the group's commits stop short of the end: {lag}"
    assert all(n == 0 for n in aggregator_lag.values()), f"the aggregator's commits: {aggregator_lag}"
    tally.assert_nothing_lost()
    assert tally.duplicates == 0, f"copies beyond the kill window: {tally.copied}"
    assert tally.outcome_duplicates == 0
    assert tally.copies <= kills * IN_FLIGHT, f"{tally.copies} copies after {kills} kills"
    assert all(n <= 1 + kills for n in tally.copied.values())
    dlq_keys = Counter(m.key() for m in dlq)
    assert set(dlq_keys) == set(stream.poison), "DLQ records nobody produced as poison"
    assert len(dlq) - len(dlq_keys) <= kills * IN_FLIGHT, "DLQ copies beyond the kill window"
    limits = {f"r-h-{c.name}": c.message for c in HOSTILE}
    for outcome in outcomes:
        if outcome.rule_id in limits:
            assert outcome.status is OutcomeStatus.FAILED, (outcome.rule_id, outcome.status)
            assert limits[outcome.rule_id] in (outcome.error or ""), (outcome.rule_id, outcome.error)
    assert not [m for m in server.messages if str(m.message["X-Eventmail-Rule"]).startswith("r-h-")]
    if chaos.done["smtp_451"]:
        assert server.failures > 0, "no 451 was answered: nothing went through the retries"
    assert rss.peak_kb, "no replica was ever sampled"
    assert rss.peak_mb < RSS_BOUND_MB, f"peak RSS per replica: {dict(rss.peak_kb)} kB"
