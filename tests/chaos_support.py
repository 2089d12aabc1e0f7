"""Shared parts of the reliability suite (tests/test_chaos.py, test_poison.py, test_hostile_rules.py).

- :class:`Tally`: what arrived where, counted the same way in every scenario: distinct Message-IDs and
  copies at the SMTP server, ``sent`` outcomes per Message-ID on the outcome topic, and the figures
  (lost, duplicates, copies in the documented window) that docs/reliability.md reports.
- :class:`SinkProcess`: ``consumer.devtools.smtp_sink`` as a process of its own, with its JSON log, that
  can be stopped and started again on the same port.
- :class:`Replicas`: ``eventmail run`` replicas of one deployment, killed (``kill -9``) and restarted.
- :func:`produce_many`: records to a topic in big batches (and records up to the broker's size limit).
"""

from __future__ import annotations

import itertools
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumer.devtools.produce import Record, produce_every
from consumer.devtools.smtp_sink import spawn_sink_process, stop_sink_process
from consumer.outcomes.codec import decode_outcome
from consumer.outcomes.model import Outcome, OutcomeStatus
from tests.support.kafka import unique_name
from tests.support.service import Deployment, ServiceProcess

#: Settings of every chaos deployment: quick commits, a bounded drain.
FAST = {
    "EVENTMAIL_PIPELINE__COMMIT_INTERVAL_SECONDS": "0.2",
    "EVENTMAIL_PIPELINE__DRAIN_TIMEOUT_SECONDS": "10",
}
#: Transient SMTP failures retried quickly (in place, then through the retry topic).
QUICK_RETRIES = {
    "EVENTMAIL_PIPELINE__RETRY_BASE_SECONDS": "1",
    "EVENTMAIL_SMTP__RETRY_BASE_SECONDS": "0.1",
    "EVENTMAIL_SMTP__CONNECT_TIMEOUT_SECONDS": "2",
    "EVENTMAIL_SMTP__CIRCUIT_OPEN_SECONDS": "2",
}


# --- reading topics ----------------------------------------------------------------------------------
def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Message]:
    """Every record of ``topic`` up to the end it had when reading began (read_committed)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_name("chaos-reader"),
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "fetch.message.max.bytes": 2_000_000,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        ends: dict[int, int] = {}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[partition] = high
        if not ends:
            return []
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=5000, timeout=0.5):
                error = msg.error()
                partition = msg.partition()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        ends.pop(partition if partition is not None else -1, None)
                        continue
                    raise KafkaException(error)
                out.append(msg)
                offset = msg.offset()
                if partition in ends and offset is not None and offset >= ends[partition] - 1:
                    del ends[partition]
        if ends:
            raise TimeoutError(f"{topic}: partitions {sorted(ends)} not read to their end in {timeout}s")
        return out
    finally:
        consumer.close()


def read_outcomes(deployment: Deployment) -> list[Outcome]:
    return [
        decode_outcome(m.value() or b"")
        for m in read_topic(deployment.bootstrap, deployment.topics["outcomes"])
    ]


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    every: float = 0.5,
    running: Sequence[ServiceProcess] = (),
) -> None:
    """Block until ``predicate()`` holds; fails at once when one of the ``running`` services exits."""
    deadline = time.monotonic() + timeout
    while not predicate():
        for service in running:
            alive(service)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout}s")
        time.sleep(every)


def wait_sent_outcomes(
    deployment: Deployment, message_ids: set[str], timeout: float = 120.0
) -> list[Outcome]:
    """The outcome topic once every one of ``message_ids`` has a ``sent`` outcome."""
    got: list[Outcome] = []

    def complete() -> bool:
        nonlocal got
        got = read_outcomes(deployment)
        sent = {o.message_id for o in got if o.status is OutcomeStatus.SENT}
        return message_ids <= sent

    wait_until(complete, timeout, f"sent outcome for each of {len(message_ids)} mails", every=1.0)
    return got


# --- the figures -------------------------------------------------------------------------------------
@dataclass
class Tally:
    """One scenario's count at the SMTP server and on the outcome topic, against what was expected.

    ``copies``: deliveries beyond the first of a Message-ID at the server. A copy is *in the window*
    (docs/delivery.md: the process died after the server accepted the mail and before its outcome was
    acknowledged) when its Message-ID has exactly one ``sent`` outcome: the first delivery's outcome
    never reached Kafka. A copy whose Message-ID has two ``sent`` outcomes was sent again although its
    first outcome was durable: that is a duplicate the read-back should have prevented.
    """

    scenario: str
    expected: set[str]
    received: list[str]
    outcomes: list[Outcome]
    seconds: float
    injected: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def delivered(self) -> set[str]:
        return set(self.received)

    @property
    def lost(self) -> int:
        return len(self.expected - self.delivered)

    @property
    def unexpected(self) -> set[str]:
        return self.delivered - self.expected

    @property
    def copies(self) -> int:
        return len(self.received) - len(self.delivered)

    @property
    def copied(self) -> dict[str, int]:
        return {mid: n for mid, n in Counter(self.received).items() if n > 1}

    @property
    def sent_outcomes(self) -> Counter[str]:
        return Counter(o.message_id or "" for o in self.outcomes if o.status is OutcomeStatus.SENT)

    @property
    def without_sent_outcome(self) -> set[str]:
        return self.expected - set(self.sent_outcomes)

    @property
    def outcome_duplicates(self) -> int:
        """``sent`` outcomes beyond the first for a Message-ID."""
        return sum(n - 1 for n in self.sent_outcomes.values() if n > 1)

    @property
    def copies_in_window(self) -> int:
        sent = self.sent_outcomes
        return sum(n - 1 for mid, n in self.copied.items() if sent[mid] == 1)

    @property
    def duplicates(self) -> int:
        """Copies that the documented window does not explain."""
        return self.copies - self.copies_in_window

    def line(self) -> str:
        parts = [
            f"{self.scenario}: {len(self.expected)} expected",
            f"lost={self.lost}",
            f"duplicates={self.duplicates}",
            f"copies_in_window={self.copies_in_window}",
            f"outcome_duplicates={self.outcome_duplicates}",
            f"time={self.seconds:.1f}s",
        ]
        parts += [f"{k}={v}" for k, v in self.extra.items()]
        return "chaos figures | " + ", ".join(parts)

    def report(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Print the figures past pytest's capture (they are the point of the scenario)."""
        with capsys.disabled():
            print(f"\n{self.line()}")

    def assert_nothing_lost(self) -> None:
        assert self.lost == 0, (
            f"{self.lost} mails never reached the SMTP server: {sorted(self.expected - self.delivered)[:10]}"
        )
        assert not self.unexpected, f"mails nobody asked for: {sorted(self.unexpected)[:10]}"
        assert not self.without_sent_outcome, f"{len(self.without_sent_outcome)} mails without a sent outcome"

    def assert_exactly_once(self) -> None:
        self.assert_nothing_lost()
        assert self.copies == 0, (
            f"{self.copies} copies at the SMTP server: {dict(list(self.copied.items())[:10])}"
        )
        assert self.outcome_duplicates == 0, f"{self.outcome_duplicates} duplicate sent outcomes"


# --- the SMTP sink as a process ----------------------------------------------------------------------
class SinkProcess:
    """``python -m consumer.devtools.smtp_sink`` with a JSON log (one line per accepted message)."""

    def __init__(self, directory: Path, name: str = "sink", **options: Any) -> None:
        self.log = directory / f"{name}.jsonl"
        self.stderr_path = directory / f"{name}.stderr"
        self.options = options
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.summaries: list[str] = []

    def start(self) -> SinkProcess:
        with self.stderr_path.open("ab") as stderr:
            self.proc, self.port = spawn_sink_process(
                port=self.port, log=self.log, stderr=stderr, **self.options
            )
        return self

    def stop(self) -> None:
        """SIGTERM: the sink closes its listener and aborts the open sessions."""
        if self.proc is not None:
            stop_sink_process(self.proc)
            self.proc = None
            self.summaries = [
                line
                for line in self.stderr_path.read_text().splitlines()
                if line.startswith("smtp-sink: stopped")
            ]

    def esp(self, **extra: Any) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "encryption": "none", **extra}

    def _records(self) -> list[dict[str, Any]]:
        """The log's complete lines (the sink may be writing the last one while it is read)."""
        if not self.log.exists():
            return []
        *complete, _partial = self.log.read_text().split("\n")
        return [json.loads(line) for line in complete if line.strip()]

    def message_ids(self) -> list[str]:
        return [record["message_id"] or "" for record in self._records()]

    def arrivals(self) -> list[tuple[str, float]]:
        """(Message-ID, time.time() when the sink took it) of every message, in order."""
        return [(record["message_id"] or "", float(record["ts"])) for record in self._records()]

    def wait_distinct(self, expected: int, timeout: float) -> None:
        wait_until(
            lambda: len(set(self.message_ids())) >= expected,
            timeout,
            f"{expected} distinct mails at the sink",
        )

    def counters(self) -> Counter[str]:
        """accepted / failed / dropped over every run of the sink (from its stop summaries)."""
        total: Counter[str] = Counter()
        for summary in self.summaries:
            for part in summary.removeprefix("smtp-sink: stopped;").split(","):
                words = part.split()
                if len(words) >= 2 and words[0].isdigit():
                    total[words[1]] += int(words[0])
        return total


# --- replicas ---------------------------------------------------------------------------------------
def alive(service: ServiceProcess) -> subprocess.Popen[bytes]:
    """The service's process, which must still be running (the same one that was started)."""
    process = service.proc
    assert process is not None, f"{service.name} was never started"
    assert process.poll() is None, f"{service.name} exited with {process.returncode}:\n{service.tail()}"
    return process


def stacks_of(service: ServiceProcess) -> str:
    """Every thread's stack of a running service (py-spy, a dev dependency): where it waits."""
    process = service.proc
    spy = Path(sys.executable).with_name("py-spy")
    if process is None or process.poll() is not None or not spy.exists():
        return f"{service.name}: no stacks (not running, or no py-spy)"
    done = subprocess.run(
        [str(spy), "dump", "--pid", str(process.pid)], capture_output=True, text=True, timeout=60, check=False
    )
    return f"{service.name}:\n{done.stdout}{done.stderr}"


def state_of(services: Iterable[ServiceProcess]) -> str:
    """What each running service says of itself (/healthz, /readyz) and where its threads are: the
    report of a wait that timed out, to tell a slow machine from a stall."""
    lines: list[str] = []
    for service in services:
        for path in ("/healthz", "/readyz"):
            try:
                status, body = service.get(path)
            except OSError as exc:
                status, body = 0, str(exc)
            lines.append(f"{service.name} {path} {status}: {body}")
        lines.append(stacks_of(service))
    return "\n".join(lines)


def handles_signals(service: ServiceProcess, timeout: float = 60.0) -> None:
    """Wait until the service answers HTTP: its SIGTERM handler is installed before its HTTP server
    starts, so a SIGTERM from now on is a clean stop (before it, a process still importing on a busy
    machine dies of the signal: exit -15)."""
    deadline = time.monotonic() + timeout
    while True:
        alive(service)
        try:
            service.get("/healthz")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service.name} did not answer HTTP within {timeout}s") from None
            time.sleep(0.05)


@dataclass
class Kill:
    #: time.time() just before the signal, and once the process was gone.
    at: float
    replica: str
    received_before: int
    dead_at: float = 0.0


@dataclass
class KillWindows:
    """The copies at the SMTP server explained by kills, counted, not assumed (docs/delivery.md,
    "Crash before the outcome"): a delivery of a mail that is followed by another delivery of it must
    have no ``sent`` outcome created between the two (the first one's outcome never reached Kafka),
    and a kill must fall between them (the process died after the server took the mail and before
    the next delivery). ``orphaned[k]``: the mails kill ``k`` caught that way (each delivery counted
    for the first kill after it); ``unexplained``: copies without such a kill, or after a sent outcome."""

    orphaned: list[set[str]]
    unexplained: dict[str, int]
    #: Per unexplained mail, why, with its deliveries, sent outcomes and the kills (seconds from the
    #: first delivery of the mail): what a failed check shows.
    why: dict[str, str] = field(default_factory=dict)

    @property
    def per_kill(self) -> list[int]:
        return [len(mails) for mails in self.orphaned]

    def check(self, held: int) -> None:
        """No copy without a kill before it, and no kill catching more mails than the records a replica
        holds between fetching them and their outcomes' acknowledgement (``held``)."""
        assert not self.unexplained, (
            f"{len(self.unexplained)} mails sent again without a kill between, or after their sent "
            f"outcome: {dict(list(self.unexplained.items())[:5])}; "
            + "; ".join(f"{mid}: {self.why.get(mid, '')}" for mid in list(self.unexplained)[:5])
        )
        assert all(n <= held for n in self.per_kill), f"mails caught per kill {self.per_kill} > {held}"


def kill_windows(
    kills: Sequence[Kill], arrivals: Iterable[tuple[str, float]], outcomes: Iterable[Outcome]
) -> KillWindows:
    """:class:`KillWindows` from the kills, the server's (Message-ID, time taken) of every delivery and
    the outcomes (``created`` is set by the consumer when the server has answered)."""
    delivered: dict[str, list[float]] = {}
    for message_id, at in arrivals:
        delivered.setdefault(message_id, []).append(at)
    sent: dict[str, list[float]] = {}
    for outcome in outcomes:
        if outcome.status is OutcomeStatus.SENT and outcome.message_id:
            sent.setdefault(outcome.message_id, []).append(outcome.created.timestamp())
    orphaned: list[set[str]] = [set() for _ in kills]
    unexplained: Counter[str] = Counter()
    why: dict[str, str] = {}
    for message_id, times in delivered.items():
        times.sort()
        outcome_times = sent.get(message_id, [])
        for first, again in itertools.pairwise(times):
            # ``created`` is kept in milliseconds (cut, not rounded): the outcome of the next delivery
            # can read up to 1 ms before the server took that delivery.
            confirmed = any(first - 0.001 <= created < again - 0.001 for created in outcome_times)
            caught = next(
                (
                    i
                    for i, kill in enumerate(kills)
                    if (kill.dead_at or kill.at) >= first and kill.at <= again
                ),
                None,
            )
            if confirmed or caught is None:
                unexplained[message_id] += 1
                start = times[0]
                why[message_id] = (
                    f"{'a sent outcome between' if confirmed else 'no kill between'} the deliveries at "
                    f"{[round(t - start, 3) for t in times]}; sent outcomes at "
                    f"{[round(t - start, 3) for t in sorted(outcome_times)]}; kills (at, dead at) "
                    f"{[(round(k.at - start, 3), round((k.dead_at or k.at) - start, 3)) for k in kills]}"
                )
            else:
                orphaned[caught].add(message_id)
    return KillWindows(orphaned, dict(unexplained), why)


class Replicas:
    """``eventmail run`` replicas of one deployment (same group), each restarted after a kill."""

    def __init__(self, env: dict[str, str], log_dir: Path, names: Sequence[str]) -> None:
        self.env = env
        self.log_dir = log_dir
        self.starts: Counter[str] = Counter()
        self.procs: dict[str, ServiceProcess] = {}
        #: Every process started, in order (also those stopped since).
        self.started: list[ServiceProcess] = []
        self.kills: list[Kill] = []
        for name in names:
            self.start(name)

    def start(self, name: str) -> ServiceProcess:
        self.starts[name] += 1
        proc = ServiceProcess("run", self.env, self.log_dir, name=f"{name}{self.starts[name]}").start()
        self.procs[name] = proc
        self.started.append(proc)
        return proc

    def kill(self, name: str, received: int) -> None:
        process = alive(self.procs[name])
        kill = Kill(time.time(), name, received)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        kill.dead_at = time.time()
        self.kills.append(kill)

    def terminate(self, name: str) -> None:
        """SIGTERM (a clean leave: drain, commit, leave the group); the exit code must be 0."""
        proc = self.procs.pop(name)
        handles_signals(proc)
        code = proc.terminate()
        assert code == 0, f"{proc.name} exited with {code}:\n{proc.tail()}"

    def check_alive(self) -> None:
        for proc in self.procs.values():
            alive(proc)

    def pids(self) -> dict[str, int]:
        return {name: alive(proc).pid for name, proc in self.procs.items()}

    def terminate_all(self) -> None:
        for proc in self.procs.values():
            handles_signals(proc)
            code = proc.terminate()
            assert code == 0, f"{proc.name} exited with {code}:\n{proc.tail()}"

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop()


def chaos_monkey(
    replicas: Replicas,
    received: Callable[[], int],
    total: int,
    kills: int,
    rng: random.Random,
    step: tuple[int, int],
    timeout: float = 120.0,
) -> None:
    """Kill a random replica ``kills`` times, each after a random number (``step``) of further mails
    and a random few milliseconds, and restart it after a random pause of up to 2 s."""
    for _ in range(kills):
        target = min(total - 1, received() + rng.randint(*step))
        wait_until(lambda t=target: received() >= t, timeout, f"{target} mails", every=0.005)  # type: ignore[misc]
        time.sleep(rng.random() * 0.05)
        victim = rng.choice(sorted(replicas.procs))
        replicas.kill(victim, received())
        time.sleep(rng.random() * 2)
        replicas.start(victim)


def group_lag(bootstrap: str, group_id: str, topics: Iterable[str]) -> dict[str, int]:
    """Per ``topic[partition]``, how far the group's committed offset is behind the partition's end
    (0 everywhere: the group committed everything)."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id, "enable.auto.commit": False})
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in reader.list_topics(topic, timeout=10).topics[topic].partitions
        ]
        committed = reader.committed(partitions, timeout=30)
        lag: dict[str, int] = {}
        for tp in committed:
            low, high = reader.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            position = tp.offset if tp.offset >= 0 else low
            lag[f"{tp.topic}[{tp.partition}]"] = high - position
        return lag
    finally:
        reader.close()


# --- a hanging transaction ----------------------------------------------------------------------------
HANGING_TRANSACTION = """
import os, signal, sys
from confluent_kafka import Producer
from consumer.outcomes.codec import encode_outcome
from consumer.outcomes.model import Outcome, OutcomeStatus, SourcePosition
from consumer.pipeline.handoff import TRANSACTION_TIMEOUT_MS
from consumer.pipeline.outcome_writer import source_header
bootstrap, topic, tx_id, rule, *sources = sys.argv[1:]
producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": tx_id, "linger.ms": 0,
                     "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS})
producer.init_transactions(30)
producer.begin_transaction()
for partition, source in enumerate(sources):
    source_topic, source_partition, offset = source.rsplit(":", 2)
    origin = SourcePosition(topic=source_topic, partition=int(source_partition), offset=int(offset))
    outcome = Outcome(rule_id=rule, status=OutcomeStatus.SENT, source=origin)
    producer.produce(topic, key=rule.encode(), value=encode_outcome(outcome), partition=partition,
                     headers=source_header(origin))
producer.flush(30)
print("open", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def open_hanging_transaction(
    bootstrap: str, outcomes_topic: str, group_id: str, rule: str, sources: Sequence[tuple[str, int, int]]
) -> float:
    """What a replica killed with its retry hand-off's transaction open leaves: a process with a
    transactional id of the group's hand-off prefix (``<group>.retry.``, another host: no replica
    fences it) begins a transaction, writes a ``sent`` outcome of ``sources[i]`` (records not mailed
    yet) to outcome partition ``i`` and is killed with ``kill -9``. ``read_committed`` readers of those
    partitions see nothing past it until the broker aborts it (``transaction.timeout.ms``, 15 s, and
    the broker's next check for timed-out transactions); then its outcomes are gone (aborted). Returns
    time.time() once the transaction is open."""
    tx_id = f"{group_id}.retry.{unique_name('killed-host')}.1"
    arguments = [bootstrap, outcomes_topic, tx_id, rule, *(f"{t}:{p}:{o}" for t, p, o in sources)]
    killed = subprocess.run(
        [sys.executable, "-c", HANGING_TRANSACTION, *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert killed.stdout.strip() == "open", killed.stderr
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    return time.time()


def last_records(bootstrap: str, topics: Iterable[str]) -> list[tuple[str, int, int]]:
    """(topic, partition, offset) of the last record of every non-empty partition of ``topics``."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("ends")})
    try:
        out = []
        for topic in topics:
            for partition in sorted(reader.list_topics(topic, timeout=10).topics[topic].partitions):
                low, high = reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                if high > low:
                    out.append((topic, partition, high - 1))
        return out
    finally:
        reader.close()


class HealthWatch:
    """Polls ``/healthz`` of the running replicas every 0.2 s in a thread: the answers other than 200
    (a process still starting, which does not answer yet, is left out)."""

    def __init__(self, replicas: Replicas) -> None:
        self.replicas = replicas
        self.failures: list[tuple[str, int, str]] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for proc in list(self.replicas.procs.values()):
                try:
                    code, body = proc.get("/healthz")
                except OSError:
                    continue
                self.polls += 1
                if code != 200:
                    self.failures.append((proc.name, code, body[:300]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


# --- producing -----------------------------------------------------------------------------------------


def produce_many(bootstrap: str, topic: str, records: Iterable[Record], partition: int | None = None) -> int:
    """Produce (key, value, headers) records in big batches; values up to the broker's default limit."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "message.max.bytes": 1_040_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500_000,
        }
    )
    return produce_every(producer, topic, records, partition, flush_timeout=60)
