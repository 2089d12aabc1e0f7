"""What the end-to-end benchmarks share: the broker, throwaway topics, fast producing, event records,
``eventmail run`` as a child process (readiness, RSS, committed offsets) and the SMTP sink's log.

Nothing here measures anything; :mod:`bench.pipeline` decides what is timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.devtools.process import ServiceProcess
from consumer.devtools.produce import produce_every
from consumer.events.codec import EventDecoder, encode_json
from consumer.events.model import Event
from consumer.events.triggers import Platform

ROOT = Path(__file__).resolve().parent.parent

Headers = list[tuple[str, bytes]]
T = TypeVar("T")


#: The setting that chooses the event loop of ``eventmail run`` (when the service has the choice).
LOOP_SETTING = "EVENTMAIL_PIPELINE__EVENT_LOOP"


def service_event_loop() -> str | None:
    """The event loop ``eventmail run`` runs on in the benchmarks: ``EVENTMAIL_PIPELINE__EVENT_LOOP``
    of this environment if set (:meth:`Deployment.env` passes it on to every service), else the
    service's default (``PipelineSettings.event_loop``); None for a service without the choice
    (``asyncio.run`` on the default loop)."""
    try:
        from consumer import eventloop  # noqa: F401  (the service's own choice of loop)
        from consumer.settings import PipelineSettings
    except ImportError:
        return None
    default = getattr(PipelineSettings(), "event_loop", None)
    if default is None:
        return None
    return os.environ.get(LOOP_SETTING) or str(default)


def run_on_service_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on the event-loop implementation ``eventmail run`` uses (:func:`service_event_loop`),
    so that the baselines (raw aiosmtplib, the hand-written mail loop) and the service compare like
    with like: the one place the benchmarks choose a loop."""
    kind = service_event_loop()
    if kind is None:
        return asyncio.run(main)
    from consumer import eventloop

    return eventloop.run(main, kind)


def service_loop_name() -> str:
    """The event-loop class :func:`run_on_service_loop` runs on, for the report."""

    async def name() -> str:
        loop = asyncio.get_running_loop()
        return f"{type(loop).__module__}.{type(loop).__name__}"

    return run_on_service_loop(name())


def bootstrap() -> str:
    """``EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS``, else ``127.0.0.1:$KAFKA_PORT`` (9092, as ``make bench``)."""
    given = os.environ.get("EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS")
    return given or f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}"


# --- topics -------------------------------------------------------------------------------------------


class Topics:
    """Uniquely named topics, created on demand and deleted by :meth:`cleanup`."""

    def __init__(self, servers: str, prefix: str = "bench") -> None:
        self.servers = servers
        self.admin = AdminClient({"bootstrap.servers": servers})
        self.prefix = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.created: list[str] = []

    def create(self, name: str, partitions: int = 1, compacted: bool = False) -> str:
        topic = f"{self.prefix}.{name}"
        config = {"cleanup.policy": "compact"} if compacted else {}
        futures = self.admin.create_topics([NewTopic(topic, partitions, 1, config=config)])
        futures[topic].result(timeout=30)
        self.created.append(topic)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            metadata = self.admin.list_topics(topic, timeout=5).topics.get(topic)
            if (
                metadata is not None
                and metadata.error is None
                and len(metadata.partitions) == partitions
                and all(p.leader >= 0 for p in metadata.partitions.values())
            ):
                return topic
            time.sleep(0.05)
        raise TimeoutError(f"topic {topic} has no leader after 30 s")

    def cleanup(self) -> None:
        if not self.created:
            return
        futures = self.admin.delete_topics(self.created, operation_timeout=30)
        for future in futures.values():
            with contextlib.suppress(KafkaException):
                future.result(timeout=30)
        self.created.clear()


@dataclass
class Deployment:
    """The topics, group and settings of one ``eventmail run`` deployment under benchmark."""

    servers: str
    topics: dict[str, str]
    group_id: str
    esp_connections: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def create(cls, topics: Topics, name: str, partitions: int = 3) -> Deployment:
        names = {
            "lms": topics.create(f"{name}.lms", partitions),
            "call_logic": topics.create(f"{name}.calllogic", 1),
            "rules": topics.create(f"{name}.rules", 1, compacted=True),
            "outcomes": topics.create(f"{name}.outcomes", partitions),
            "alerts": topics.create(f"{name}.alerts", 1),
            "dlq": topics.create(f"{name}.dlq", 1),
            "retry": topics.create(f"{name}.retry", partitions),
        }
        return cls(topics.servers, names, group_id=f"{topics.prefix}.{name}")

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS": self.servers,
            "EVENTMAIL_GROUP_ID": self.group_id,
            "EVENTMAIL_LOG_FORMAT": "json",
            "EVENTMAIL_LOG_LEVEL": "INFO",
            "EVENTMAIL_ESP_CONNECTIONS": json.dumps(self.esp_connections),
        }
        if os.environ.get(LOOP_SETTING):
            env[LOOP_SETTING] = os.environ[LOOP_SETTING]
        env.update({f"EVENTMAIL_TOPICS__{name.upper()}": topic for name, topic in self.topics.items()})
        env.update(extra)
        return env

    def settings(self) -> Any:
        from consumer.settings import Settings

        return Settings(
            kafka={"bootstrap_servers": self.servers},
            group_id=self.group_id,
            topics=self.topics,
            esp_connections=self.esp_connections,
        )

    def apply_rules(self, documents: Sequence[dict[str, Any]]) -> None:
        """Validate the rule documents as ``eventmail rules apply`` does and write them to the topic."""
        from consumer.rules.checks import RuleContext
        from consumer.rules.publish import publish_rules
        from consumer.rules.validation import validate_rule

        settings = self.settings()
        context = RuleContext.for_files(settings)
        publish_rules(settings, [validate_rule(doc, context) for doc in documents])


# --- records ------------------------------------------------------------------------------------------


class EventRecords:
    """JSON event records as the platform writes them, built from one template (fast enough for a
    million records); the first one is checked with :class:`EventDecoder`."""

    _MARKS = ("@@EVENT@@", "@@TRIGGER@@", "2001-01-01T00:00:00+00:00", "@@PRODUCT@@", "@@LEAD@@")

    def __init__(self) -> None:
        event_id, trigger, _, product, lead = self._MARKS
        sample = Event(
            platform=Platform.LMS,
            event_id=event_id,
            trigger="lead_sold",
            occurred_at=datetime(2001, 1, 1, tzinfo=UTC),
            product_id=product,
            campaign_id="c-7",
            lead_id=lead,
            publisher_id="pub-1",
            channel_id="ch-1",
            source_id="src-1",
            buyer_id="buyer-1",
            pingtree_id="pt-1",
            method="POST",
            tracking_strategy="direct_sold",
            price=12.5,
            currency="USD",
            data={"first_name": "Ada", "last_name": "Lovelace", "state": "CA", "city": "Sacramento"},
        )
        text = encode_json(sample).decode().replace("%", "%%")
        text = text.replace('"lead_sold"', f'"{trigger}"')
        for mark in self._MARKS:
            text = text.replace(mark, "%s")
        self._template = text
        check = self.value("ev-check", "lead_sold", "p-check", datetime.now(UTC).isoformat())
        event = EventDecoder().decode(Platform.LMS, check)
        if (event.event_id, event.product_id) != ("ev-check", "p-check"):
            raise AssertionError(f"the event template does not round-trip: {event!r}")

    def value(self, event_id: str, trigger: str, product: str, occurred_at: str) -> bytes:
        return (self._template % (event_id, trigger, occurred_at, product, f"lead-{event_id}")).encode()

    def batch(
        self, prefix: str, count: int, trigger: str, product: str, occurred_at: str | None = None
    ) -> list[tuple[bytes, bytes]]:
        """``count`` (key, value) records with event ids ``{prefix}-{n}``."""
        stamp = occurred_at or datetime.now(UTC).isoformat()
        template = self._template
        out: list[tuple[bytes, bytes]] = []
        for n in range(count):
            event_id = f"{prefix}-{n}"
            out.append(
                (
                    event_id.encode(),
                    (template % (event_id, trigger, stamp, product, f"lead-{event_id}")).encode(),
                )
            )
        return out


def producer(servers: str, **config: Any) -> Producer:
    return Producer(
        {
            "bootstrap.servers": servers,
            "enable.idempotence": True,
            "linger.ms": 10,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 500_000,
            **config,
        }
    )


def produce_all(
    servers: str,
    topic: str,
    records: Iterable[tuple[bytes, bytes]],
    headers: Callable[[bytes], Headers] | None = None,
    out: Producer | None = None,
) -> int:
    """Produce every record and wait for the acknowledgements; the number produced."""
    rows = ((key, value, headers(value) if headers else None) for key, value in records)
    return produce_every(out or producer(servers), topic, rows)


# --- offsets ------------------------------------------------------------------------------------------


class Offsets:
    """Committed offsets of a group and end offsets of topics, read without joining the group."""

    def __init__(self, servers: str, group_id: str) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": servers, "group.id": group_id, "enable.auto.commit": False}
        )
        self._partitions: dict[str, list[int]] = {}

    def partitions(self, topic: str) -> list[int]:
        if topic not in self._partitions:
            metadata = self._consumer.list_topics(topic, timeout=10).topics[topic]
            self._partitions[topic] = sorted(metadata.partitions)
        return self._partitions[topic]

    def committed(self, topic: str) -> int:
        """The sum over partitions of the committed offsets (0 where none)."""
        listed = [TopicPartition(topic, p) for p in self.partitions(topic)]
        return sum(max(tp.offset, 0) for tp in self._consumer.committed(listed, timeout=10))

    def end(self, topic: str) -> int:
        """The sum over partitions of the high watermarks."""
        total = 0
        for p in self.partitions(topic):
            _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            total += high
        return total

    def close(self) -> None:
        self._consumer.close()


# --- eventmail run ------------------------------------------------------------------------------------


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB, from /proc/PID/status; (0, 0) once it is gone."""
    values = {"VmRSS": 0.0, "VmHWM": 0.0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return values["VmRSS"], values["VmHWM"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc/PID/stat."""
    try:
        return _stat_seconds(Path(f"/proc/{pid}/stat"))
    except OSError:
        return 0.0


def _stat_seconds(stat: Path) -> float:
    """User + system CPU seconds of a /proc ``stat`` file (a process's or one thread's)."""
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of every core so far, from /proc/stat: the share of the machine
    busy over a span is the difference of busy over the difference of total (1.0: every core)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


class Load:
    """The CPU a span of a benchmark cost outside the measured process: the SMTP sink's CPU per
    mail and the share of the machine busy (every process), so a rate can be told apart from the
    machine's limit."""

    def __init__(self, sink_pid: int) -> None:
        self.sink_pid = sink_pid
        self.sink = cpu_seconds(sink_pid)
        self.machine = machine_jiffies()

    def end(self, count: int, into: dict[str, list[float]]) -> None:
        """Appends ``sink_cpu_ms_per_mail`` and ``machine_busy`` of the span since it began."""
        busy, total = machine_jiffies()
        into.setdefault("sink_cpu_ms_per_mail", []).append(
            (cpu_seconds(self.sink_pid) - self.sink) / count * 1000
        )
        into.setdefault("machine_busy", []).append((busy - self.machine[0]) / max(1, total - self.machine[1]))


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU time so far of a process's threads in three groups: ``main`` (the thread
    whose id is the process's: the asyncio loop of ``eventmail run``), ``librdkafka`` (librdkafka's own
    threads, named ``rdk:...``) and ``other`` (the rest: Python threads, which keep the process's name).
    Threads that ended meanwhile are not counted, so take the figures while the process runs."""
    out = {"main": 0.0, "librdkafka": 0.0, "other": 0.0}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            name = (task / "comm").read_text().strip()
            seconds = _stat_seconds(task / "stat")
        except OSError:  # the thread ended meanwhile
            continue
        group = "main" if task.name == str(pid) else "librdkafka" if name.startswith("rdk:") else "other"
        out[group] += seconds
    return out


class Service(ServiceProcess):
    """``eventmail run`` as a child process with its own HTTP port and log file.

    With ``profile_to`` set (a file name ending in .svg/.txt/.json) and ``py-spy`` installed, the
    service runs under ``py-spy record`` (every thread, idle time left out) and the profile is written
    there when the service stops.
    """

    def __init__(self, env: dict[str, str], log_dir: Path, name: str, profile_to: Path | None = None) -> None:
        super().__init__("run", env, log_dir, name, cwd=ROOT)
        self.profile_to = profile_to
        self._spy: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        super().start()
        if self.profile_to is not None:
            with self.log_path.open("ab") as log:
                self._spy = _py_spy(self.pid, self.profile_to, log)
        return self

    def wait_ready(self, timeout: float = 90.0) -> None:
        super().wait_ready(timeout)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (a clean drain and exit), SIGKILL after ``timeout``; then the profile is written."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(timeout)
            except subprocess.TimeoutExpired:
                super().stop()
        if self._spy is not None:
            try:
                self._spy.wait(60)
            except subprocess.TimeoutExpired:
                self._spy.kill()


def _py_spy(pid: int, out: Path, log: Any) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("bench: py-spy is not installed; no profile", file=sys.stderr)
        return None
    kind = {".svg": "flamegraph", ".txt": "raw", ".json": "speedscope"}.get(out.suffix, "flamegraph")
    command = [spy, "record", "--pid", str(pid), "--threads", "--rate", "200", "-f", kind, "-o", str(out)]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds in a thread, with a progress figure."""

    def __init__(self, pid: int, progress: Callable[[], int], interval: float = 0.25) -> None:
        self.pid = pid
        self.progress = progress
        self.interval = interval
        self.samples: list[tuple[float, int, float]] = []  # (time, progress, rss MiB)
        self.hwm = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def sample(self) -> tuple[int, float]:
        done = self.progress()
        rss, hwm = rss_mb(self.pid)
        self.hwm = max(self.hwm, hwm)
        self.samples.append((time.monotonic(), done, rss))
        return done, rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


# --- the SMTP sink's log ------------------------------------------------------------------------------


def read_sink_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def count_lines(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except OSError:
        return 0


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02, alive: Any = None
) -> float:
    """Poll ``condition`` until true; the time (``perf_counter``) it was first seen true."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done within {timeout:.0f} s")
        if alive is not None:
            alive()
        time.sleep(interval)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


@contextlib.contextmanager
def stopping(items: list[Any]) -> Iterator[list[Any]]:
    """Stop every service / sink process appended to ``items`` on the way out, newest first."""
    try:
        yield items
    finally:
        for item in reversed(items):
            with contextlib.suppress(Exception):
                item()
