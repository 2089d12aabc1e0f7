"""End-to-end benchmarks of ``eventmail run`` against its baselines and a naive peer, in one run.

Everything runs on this machine in the same run: one broker (``EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS``,
else ``127.0.0.1:$KAFKA_PORT``, port 9092 as ``make bench`` starts), two SMTP sinks in processes of
their own, both keeping a JSON log: the ``fast`` sink (:mod:`bench.lean_sink`) answers at once for
about a sixth of the CPU of aiosmtpd, so that it is not what bounds a mail scenario; the ``esp`` sink
(``consumer.devtools.smtp_sink``, profile ``esp``) waits 20 ms before each reply and 100 ms before
the reply to DATA. Both offer PIPELINING (RFC 2920), as MTAs and ESPs do: ``eventmail run`` sends
MAIL, RCPT and DATA in one write and the message in a second, two round trips per mail; aiosmtplib
(the raw baseline and the hand-written loop) does not pipeline and makes four. The ``esp`` sink
waits before each reply even when the commands arrived together, so there pipelining saves the
round trips' network time only, which is nil here. ``eventmail run``
as a child process with topics and a group of its own per scenario, the baselines in this process and
the naive peer as a child process. Every service runs with the defaults except
``EVENTMAIL_PIPELINE__COMMIT_INTERVAL_SECONDS=0.1`` (default 1 s), so that committed offsets, which
the filter and memory figures are read from, trail the work by at most 0.1 s. Records are JSON
events of about 450 bytes on 3 partitions. Everything asyncio here (the raw SMTP clients, the
hand-written mail loop) runs on the event-loop implementation the service runs on
(:func:`bench.support.run_on_service_loop`; the report names it).

Figures (rates are per second; the runner divides the first of each pair by the second):

* ``raw_consume_decode_per_s``: a plain confluent-kafka consumer (``consume(500)`` batches, partitions
  assigned, no group join) reading N pre-produced events and decoding each with ``EventDecoder``: the
  work no implementation avoids. Timed from its first batch (not counted) to the last record. It
  and the hand-written loops use librdkafka's defaults, as their authors would.
  ``raw_consume_decode_same_fetch_per_s``: the same consumer with the service's fetch settings
  (:data:`consumer.kafka.fetching.FETCH_DEFAULTS`: a 10 ms fetch back-off instead of 1 s, without
  which a consumer draining a backlog faster than librdkafka refills its queue waits out the
  second). Ratio ``filter_vs_raw_decode_same_fetch``: the service against it, like with like.
* ``filter_only_per_s``: ``eventmail run`` on the same N events, written to its topic before it
  starts, with rules that match none of them (their trigger has no rule): decode, match, commit.
  Start-up and rule loading are left out: the clock starts when the group's committed offsets first
  move (C0 records done) and stops when they reach the end; the rate is (N - C0) / elapsed. The
  plain consumer, the hand-written one and the service take turns (plain, hand, service, plain,
  hand, ...); each figure is the median of its rounds. Ratio ``filter_vs_raw_decode``.
* ``hand_json_per_s``: :mod:`bench.peers.hand_json`, the filter loop a platform engineer writes
  (a group, ``consume(500)`` batches, ``json.loads``, a dict lookup of the trigger and product, no
  validation), on the same N records, timed as the plain consumer. Ratio ``filter_vs_hand_json``.
* ``raw_smtp_per_s``: plain aiosmtplib, 8 connected clients sending M pre-built messages back to back
  to the ``fast`` sink (no Kafka at all); ``raw_smtp_cpu_ms_per_mail`` is its process's CPU per mail.
* ``mail_fast_per_s``: ``eventmail run`` with a rule matching every event, M events, a pool of 8
  (``max_connections: 8``) to the ``fast`` sink; timed from producing the events until their M
  outcomes are acknowledged on the outcome topic (each written before its offset is committed; all
  are checked to say ``sent``). The pool is warmed up first, as the raw clients connect before
  their clock starts. Raw, service and hand-loop rounds take turns, each round starting with the
  next one of them; each figure is the median. Ratio ``mail_vs_raw_smtp``.
* ``hand_mail_per_s`` / ``hand_mail_cpu_ms_per_mail``: :mod:`bench.peers.hand_mail`, the smallest
  loop that keeps the service's guarantee (consume a batch, send on 8 aiosmtplib connections,
  produce the outcomes with ``acks=all``, commit after their acknowledgement), as a child process on
  topics of its own, the same M events to the same ``fast`` sink, timed and costed exactly as
  ``mail_fast_per_s`` (producing to acknowledged outcomes; CPU of its process). Connected and
  warmed up with 32 mails first. Ratio ``mail_vs_hand_loop``; ``hand_loop_vs_raw_smtp`` is what
  keeping the guarantee (Kafka in, an outcome out, a commit) costs even the smallest loop.
* ``mail_esp_per_s`` (``mail_esp_connections``: K): the same to the ``esp`` sink with a pool of K,
  since the ESP's latency, not CPU, bounds what one connection carries.
* ``naive_peer_esp_per_s``: :mod:`bench.peers.naive` (poll loop, ``smtplib``, a connection per mail,
  a synchronous commit per record) to the ``esp`` sink. Ratio ``mail_vs_naive_peer``.
* ``latency_p50_ms`` / ``latency_p99_ms`` / ``latency_max_ms``: events produced one by one at a steady
  500 per second (``latency_target_rate``; ``latency_produced_rate`` is the rate the producing loop
  achieved, ``latency_delivered_rate`` the rate the mails reached the sink: a service slower than
  the stream falls behind and the latencies measure its backlog), each with ``occurred_at`` = the
  moment it is produced; latency is from that moment to SMTP acceptance: the ``fast`` sink's time of
  receiving the message's data, just before its 250 reply (from its log), matched by the event id in
  the subject. The outcome's write comes after it and is not included. ``hand_latency_*``: the same
  stream (same rate, length and sink) into the hand-written mail loop, right after its rounds: what a
  plain program that keeps the guarantee achieves at that rate on this machine. ``latency_low_*``:
  the same into the service at 250 per second (``LATENCY_LOW_RATE``), as long: its latency when the
  machine is not saturated.
* ``memory_peak_rss_mb`` / ``memory_rss_growth_mb``: a fresh ``eventmail run`` over a long stream of
  interleaved events (full: 1,000,000 filtered + 100,000 mailed; quick: 40,000 + 1,500), produced
  as fast as the broker takes them; RSS is sampled from /proc/PID/status every 0.25 s; the peak is
  the larger of the samples and VmHWM; growth is RSS once the whole stream is committed minus RSS
  when 10 % of it was.
* ``*_cpu_us_per_event`` / ``*_cpu_ms_per_mail``: CPU time (user + system, all threads) of the
  consumer process over the timed window, per record: what the rate costs, apart from waiting.
  ``mail_fast_cpu_{main,librdkafka,other}_ms_per_mail`` (and ``hand_mail_cpu_...``) split it by
  thread: the asyncio loop's thread, librdkafka's own threads (``rdk:*``: the brokers' I/O, the
  producer's batching and acknowledgements) and the other Python threads (the poll thread).
* ``{raw_smtp,mail_fast,hand_mail}_sink_cpu_ms_per_mail`` and ``..._machine_busy``: over the same
  rounds, the fast SMTP sink's CPU per mail (one process, answering every scenario alike) and
  the share of the whole machine busy (every process, /proc/stat; 1.0 is both cores), the median of
  the rounds: a rate whose machine is busy near 1.0 is bounded by the machine, not by its consumer.

Sizes (quick / full): N = 100,000 / 500,000 in 1 / 2 service rounds; M = 800 / 15,000 in 2 / 3
rounds to the fast sink (the service, the hand-written loop and raw aiosmtplib alike; rounds of
5,000 took under two seconds, so the start of a round and the last outcome's poll weighed on the
rate and its spread) and 600 / 3,000
to the ESP sink; 20 / 100 mails for the naive peer; 5 / 60 seconds of the latency stream (2,500 /
30,000 mails).

Not measured: a ``trigger``-header fast path (skip decoding records whose trigger no rule uses). It
would skip validation too, so malformed records carrying such a header would no longer reach the DLQ,
and a header that disagrees with its payload would silently drop mail; it is not implemented.

``python -m bench.pipeline [--quick] [--only SCENARIO] [--profile DIR]`` prints the figures;
``--profile`` runs each service under ``py-spy record`` (all threads) and writes a profile per service.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosmtplib
from confluent_kafka import Consumer, TopicPartition

from bench import lean_sink
from bench.peers import hand_json
from bench.peers.hand_mail import READY as HAND_MAIL_READY
from bench.support import (
    ROOT,
    Deployment,
    EventRecords,
    Load,
    Offsets,
    RssSampler,
    Service,
    Topics,
    bootstrap,
    count_lines,
    cpu_seconds,
    percentile,
    produce_all,
    producer,
    read_sink_log,
    run_on_service_loop,
    stopping,
    thread_cpu_seconds,
    wait_for,
)
from consumer.devtools.smtp_sink import spawn_sink_process, stop_sink_process
from consumer.events.codec import EventDecoder
from consumer.events.triggers import Platform
from consumer.kafka.fetching import FETCH_DEFAULTS
from consumer.mail import MailAddress, Rendered, build_message
from consumer.outcomes.codec import decode_outcome
from consumer.outcomes.model import OutcomeStatus

SCENARIOS = ("decode", "hand_json", "filter", "smtp", "hand_mail", "mail", "naive", "latency", "memory")
FAST_CONNECTIONS = 8
#: The plain consumer again, with the service's fetch settings (``consumer.kafka.fetching``).
SAME_FETCH = "raw_consume_decode_same_fetch"
ESP_CONNECTIONS = 32
#: Mails per second of the latency stream, produced one by one at a steady pace.
LATENCY_RATE = 500.0
#: The lower rate of a second latency stream into the service: its latency when the machine is not
#: saturated.
LATENCY_LOW_RATE = 250.0
COMMIT_INTERVAL = "0.1"
#: Events no rule matches: a trigger no rule uses, for products that do have rules.
FILTER_TRIGGER = "lead_rejected"
MAIL_TRIGGER = "lead_sold"
SUBJECT = "bench {{ event_id }}"
BODY = (
    "Lead {{ lead_id }} sold for {{ price }} ({{ data.first_name }} {{ data.last_name }}, {{ data.city }})."
)


@dataclass(frozen=True)
class Plan:
    filter_events: int
    filter_rounds: int
    mail_fast: int
    mail_rounds: int
    mail_esp: int
    naive_mails: int
    latency_seconds: float
    memory_filtered: int
    memory_mailed: int

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls(100_000, 1, 800, 2, 600, 20, 5.0, 40_000, 1_500)
        return cls(500_000, 2, 15_000, 3, 3_000, 100, 60.0, 1_000_000, 100_000)


def rule(rule_id: str, product: str, connection: str) -> dict[str, Any]:
    return {
        "id": rule_id,
        "name": f"bench {rule_id}",
        "platform": "lms",
        "level": "product",
        "product_id": product,
        "triggers": [MAIL_TRIGGER],
        "action": {
            "connection": {"type": "esp", "name": connection},
            "sender": {"email": "sales@example.com", "name": "Sales"},
            "recipients": [{"email": "ops@example.com", "name": "Ops"}],
            "subject": SUBJECT,
            "body": BODY,
        },
    }


RULES = [rule("r-fast", "p-fast", "fast"), rule("r-esp", "p-esp", "esp")]
#: The same rules as the hand-written filter loop holds them: {trigger: {product_id: [rule id, ...]}}.
HAND_RULES = {MAIL_TRIGGER: {"p-fast": ["r-fast"], "p-esp": ["r-esp"]}}


class Bench:
    def __init__(self, plan: Plan, work: Path, profile: Path | None, profile_format: str = "svg") -> None:
        self.plan = plan
        self.work = work
        self.profile = profile
        self.profile_format = profile_format
        self.servers = bootstrap()
        self.topics = Topics(self.servers, "bench-pipeline")
        self.records = EventRecords()
        self.figures: dict[str, float] = {}
        self.cleanup: list[Callable[[], Any]] = []
        self.fast_log = work / "fast-sink.jsonl"
        self.fast_port = 0
        self.fast_sink_pid = 0
        self.esp_port = 0
        self.only: tuple[str, ...] = SCENARIOS
        #: Figures measured in several rounds; each is reported as the median.
        self.rounds: dict[str, list[float]] = {}
        self._raw_topic = ""

    # --- infrastructure ---------------------------------------------------------------------------------
    def start_sinks(self) -> None:
        fast, self.fast_port = lean_sink.spawn(self.fast_log)
        self.fast_sink_pid = fast.pid
        self.cleanup.append(lambda: lean_sink.stop(fast))
        esp, self.esp_port = spawn_sink_process(profile="esp", log=self.work / "esp-sink.jsonl")
        self.cleanup.append(lambda: stop_sink_process(esp))

    def deployment(self, name: str) -> Deployment:
        deployment = Deployment.create(self.topics, name)
        deployment.esp_connections = {
            "fast": {
                "host": "127.0.0.1",
                "port": self.fast_port,
                "encryption": "none",
                "max_connections": FAST_CONNECTIONS,
            },
            "esp": {
                "host": "127.0.0.1",
                "port": self.esp_port,
                "encryption": "none",
                "max_connections": ESP_CONNECTIONS,
            },
        }
        deployment.apply_rules(RULES)
        return deployment

    def service(self, deployment: Deployment, name: str) -> Service:
        profile = self.profile / f"{name}.{self.profile_format}" if self.profile else None
        env = deployment.env(EVENTMAIL_PIPELINE__COMMIT_INTERVAL_SECONDS=COMMIT_INTERVAL)
        service = Service(env, self.work, name, profile_to=profile).start()
        self.cleanup.append(service.stop)
        return service

    # --- decode and filter ------------------------------------------------------------------------------
    def filter_records(self) -> list[tuple[bytes, bytes]]:
        return self.records.batch("f", self.plan.filter_events, FILTER_TRIGGER, "p-fast")

    def raw_topic(self) -> str:
        """A topic holding the filter scenario's records, for the plain consumer."""
        if not self._raw_topic:
            self._raw_topic = self.topics.create("raw", 3)
            produce_all(self.servers, self._raw_topic, self.filter_records())
        return self._raw_topic

    def raw_consume_decode(
        self, extra: dict[str, Any] | None = None, name: str = "raw_consume_decode"
    ) -> None:
        """One round of the plain consumer (with ``extra`` librdkafka settings; its figures are
        ``{name}_per_s`` and ``{name}_cpu_us_per_event``); timed from its first batch (those records
        not counted)."""
        topic = self.raw_topic()
        total = self.plan.filter_events
        consumer = Consumer(
            {
                "bootstrap.servers": self.servers,
                "group.id": f"{self.topics.prefix}.raw",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                **(extra or {}),
            }
        )
        decoder = EventDecoder()
        platform = Platform.LMS
        seen = first = 0
        started = cpu = 0.0
        try:
            consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
            deadline = time.monotonic() + 300
            while seen < total and time.monotonic() < deadline:
                batch = consumer.consume(num_messages=500, timeout=0.05)
                for msg in batch:
                    if msg.error() is None:
                        decoder.decode(platform, msg.value(), msg.headers())
                        seen += 1
                if batch and not started:
                    started, cpu, first = time.perf_counter(), time.process_time(), seen
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu
        finally:
            consumer.close()
        if seen < total:
            raise RuntimeError(f"raw consumer read {seen} of {total} records")
        self.rounds.setdefault(f"{name}_per_s", []).append((total - first) / elapsed)
        self.rounds.setdefault(f"{name}_cpu_us_per_event", []).append(cpu / (total - first) * 1e6)

    def hand_json(self) -> None:
        """One round of the hand-written consumer (:mod:`bench.peers.hand_json`) on the same records."""
        rounds = self.rounds.setdefault("hand_json_per_s", [])
        group = f"{self.topics.prefix}.hand-json-{len(rounds)}"
        result = hand_json.consume(self.servers, self.raw_topic(), group, self.plan.filter_events, HAND_RULES)
        if result.matched:
            raise RuntimeError(f"the hand-written consumer matched {result.matched} filter records")
        rounds.append(result.per_s)
        self.rounds.setdefault("hand_json_cpu_us_per_event", []).append(result.cpu_us_per_event)

    def filter_only(self, n: int) -> None:
        """One round of ``eventmail run`` on the filter records, a fresh deployment and service."""
        name = f"filter{n}"
        deployment = self.deployment(name)
        topic = deployment.topics["lms"]
        total = produce_all(self.servers, topic, self.filter_records())
        offsets = Offsets(self.servers, deployment.group_id)
        try:
            service = self.service(deployment, name)
            committed = {"n": 0}

            def moved() -> bool:
                committed["n"] = offsets.committed(topic)
                return committed["n"] > 0

            started = wait_for(moved, 120, f"{name}: first commit", 0.005, service.check_alive)
            cpu = cpu_seconds(service.pid)
            first = committed["n"]
            ended = wait_for(
                lambda: offsets.committed(topic) >= total, 600, f"{name}: commits", 0.005, service.check_alive
            )
            cpu = cpu_seconds(service.pid) - cpu
            consumed = service_metric(service, "eventmail_events_consumed_total")
            service.stop()
        finally:
            offsets.close()
        if first >= total:
            raise RuntimeError(f"{name}: every record was committed at once; use more events")
        if consumed != total:
            raise RuntimeError(f"{name}: the service counted {consumed} events, not {total}")
        self.rounds.setdefault("filter_only_per_s", []).append((total - first) / (ended - started))
        self.rounds.setdefault("filter_only_cpu_us_per_event", []).append(cpu / (total - first) * 1e6)

    # --- SMTP baseline and mail through the service -------------------------------------------------------
    def smtp_messages(self, count: int) -> list[tuple[str, list[str], bytes]]:
        out = []
        for n in range(count):
            built = build_message(
                Rendered(
                    f"bench raw-{n}", f"Lead lead-raw-{n} sold for 12.5 (Ada Lovelace, Sacramento).", None
                ),
                sender=MailAddress("sales@example.com", "Sales"),
                to=[MailAddress("ops@example.com", "Ops")],
                event_id=f"raw-{n}",
                rule_id="r-raw",
            )
            out.append((built.sender, list(built.recipients), built.data))
        return out

    def raw_smtp(
        self, messages: list[tuple[str, list[str], bytes]], load: dict[str, list[float]] | None = None
    ) -> tuple[float, float]:
        """One round of raw aiosmtplib: mails per second and this process's CPU ms per mail (with
        ``load``: the sink's CPU and the machine's busy share appended, see :class:`Load`)."""

        async def measure() -> tuple[float, float]:
            clients = [
                aiosmtplib.SMTP(
                    hostname="127.0.0.1", port=self.fast_port, start_tls=False, local_hostname="b"
                )
                for _ in range(FAST_CONNECTIONS)
            ]
            await asyncio.gather(*(client.connect() for client in clients))
            queue = iter(messages)

            async def worker(client: aiosmtplib.SMTP) -> None:
                for sender, recipients, data in queue:
                    await client.sendmail(sender, recipients, data)

            spent = Load(self.fast_sink_pid)
            started, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(worker(client) for client in clients))
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            if load is not None:
                spent.end(len(messages), load)
            await asyncio.gather(*(client.quit() for client in clients), return_exceptions=True)
            return len(messages) / elapsed, cpu / len(messages) * 1000

        return run_on_service_loop(measure())

    def mail_round(
        self,
        service: Service | HandMail,
        deployment: Deployment,
        offsets: Offsets,
        prefix: str,
        count: int,
        product: str,
        threads: dict[str, list[float]] | None = None,
        load: dict[str, list[float]] | None = None,
    ) -> tuple[float, float]:
        """Produce ``count`` matching events: the rate at which their outcomes are acknowledged, and
        the consumer's CPU milliseconds per mail meanwhile (with ``threads``: each thread group's
        milliseconds per mail appended to its list, see :func:`bench.support.thread_cpu_seconds`;
        with ``load``: the fast sink's CPU per mail and the machine's busy share, :class:`Load`)."""
        outcomes = deployment.topics["outcomes"]
        base = offsets.end(outcomes)
        records = self.records.batch(prefix, count, MAIL_TRIGGER, product)
        prod = producer(self.servers, **{"linger.ms": 2})
        by_thread = thread_cpu_seconds(service.pid)
        cpu = cpu_seconds(service.pid)
        spent = Load(self.fast_sink_pid)
        started = time.perf_counter()
        produce_all(self.servers, deployment.topics["lms"], records, out=prod)
        ended = wait_for(
            lambda: offsets.end(outcomes) >= base + count,
            600,
            f"{prefix}: outcomes",
            0.05,
            service.check_alive,
        )
        cpu = cpu_seconds(service.pid) - cpu
        if load is not None:
            spent.end(count, load)
        if threads is not None:
            for group, seconds in thread_cpu_seconds(service.pid).items():
                threads.setdefault(group, []).append((seconds - by_thread[group]) / count * 1000)
        return count / (ended - started), cpu / count * 1000

    def hand_mail(self) -> tuple[HandMail, Deployment]:
        """The hand-written mail loop on topics of its own, connected and ready, warmed up."""
        topics = {
            "lms": self.topics.create("hand.lms", 3),
            "outcomes": self.topics.create("hand.outcomes", 3),
        }
        deployment = Deployment(self.servers, topics, group_id=f"{self.topics.prefix}.hand-mail")
        peer = HandMail(
            self.servers, deployment, self.fast_port, FAST_CONNECTIONS, "p-fast", self.work / "hand-mail.log"
        )
        self.cleanup.append(peer.stop)
        peer.wait_ready()
        return peer, deployment

    def mail(self) -> None:
        plan = self.plan
        deployment = self.deployment("mail")
        offsets = Offsets(self.servers, deployment.group_id)
        messages = self.smtp_messages(plan.mail_fast)
        with_hand = "hand_mail" in self.only
        try:
            service = self.service(deployment, "mail")
            if with_hand:
                hand, hand_deployment = self.hand_mail()
            service.wait_ready()
            self.mail_round(service, deployment, offsets, "warm-fast", 4 * FAST_CONNECTIONS, "p-fast")
            self.raw_smtp(messages[: len(messages) // 4])
            if with_hand:
                self.mail_round(hand, hand_deployment, offsets, "warm-hand", 4 * FAST_CONNECTIONS, "p-fast")
            raw: list[tuple[float, float]] = []
            ours: list[tuple[float, float]] = []
            hands: list[tuple[float, float]] = []
            our_threads: dict[str, list[float]] = {}
            hand_threads: dict[str, list[float]] = {}
            #: Per scenario, the sink's CPU per mail and the machine's busy share of each round.
            loads: dict[str, dict[str, list[float]]] = {"raw_smtp": {}, "mail_fast": {}, "hand_mail": {}}

            def steps() -> list[Callable[[], None]]:
                out = [
                    lambda: raw.append(self.raw_smtp(messages, loads["raw_smtp"])),
                    lambda: ours.append(
                        self.mail_round(
                            service,
                            deployment,
                            offsets,
                            f"m{n}",
                            plan.mail_fast,
                            "p-fast",
                            our_threads,
                            loads["mail_fast"],
                        )
                    ),
                ]
                if with_hand:
                    out.append(
                        lambda: hands.append(
                            self.mail_round(
                                hand,
                                hand_deployment,
                                offsets,
                                f"h{n}",
                                plan.mail_fast,
                                "p-fast",
                                hand_threads,
                                loads["hand_mail"],
                            )
                        )
                    )
                return out

            for n in range(plan.mail_rounds):
                # rotate which side goes first, so a slow stretch of the machine hits each alike
                order = steps()
                for step in order[n % len(order) :] + order[: n % len(order)]:
                    step()
            self.figures["raw_smtp_per_s"] = round(statistics.median(rate for rate, _ in raw), 1)
            self.figures["raw_smtp_cpu_ms_per_mail"] = round(statistics.median(cpu for _, cpu in raw), 2)
            self.figures["mail_fast_per_s"] = round(statistics.median(rate for rate, _ in ours), 1)
            self.figures["mail_fast_cpu_ms_per_mail"] = round(statistics.median(cpu for _, cpu in ours), 2)
            for group, values in our_threads.items():
                self.figures[f"mail_fast_cpu_{group}_ms_per_mail"] = round(statistics.median(values), 3)
            for scenario, measured in loads.items():
                for name, values in measured.items():
                    self.figures[f"{scenario}_{name}"] = round(statistics.median(values), 3)
            self.figures["mail_fast_mails"] = float(plan.mail_fast)
            self.figures["mail_fast_connections"] = float(FAST_CONNECTIONS)
            if with_hand:
                for group, values in hand_threads.items():
                    self.figures[f"hand_mail_cpu_{group}_ms_per_mail"] = round(statistics.median(values), 3)
                latency_mails = 0
                if "latency" in self.only:
                    latency_mails = self.latency(hand, hand_deployment, "hand_latency")
                report = hand.stop()
                expected = 4 * FAST_CONNECTIONS + plan.mail_rounds * plan.mail_fast + latency_mails
                if report.get("mails") != expected or report.get("failed"):
                    raise RuntimeError(f"the hand-written mail loop sent {report}, not {expected} mails")
                self.figures["hand_mail_per_s"] = round(statistics.median(rate for rate, _ in hands), 1)
                self.figures["hand_mail_cpu_ms_per_mail"] = round(
                    statistics.median(cpu for _, cpu in hands), 2
                )
            if "latency" in self.only:
                self.latency(service, deployment, "latency")
                self.latency(service, deployment, "latency_low", LATENCY_LOW_RATE)
            self.mail_round(service, deployment, offsets, "warm-esp", 2 * ESP_CONNECTIONS, "p-esp")
            esp, esp_cpu = self.mail_round(service, deployment, offsets, "esp", plan.mail_esp, "p-esp")
            self.figures["mail_esp_per_s"] = round(esp, 1)
            self.figures["mail_esp_cpu_ms_per_mail"] = round(esp_cpu, 2)
            self.figures["mail_esp_connections"] = float(ESP_CONNECTIONS)
            service.stop()
            self.check_outcomes(deployment, offsets)
        finally:
            offsets.close()

    def check_outcomes(self, deployment: Deployment, offsets: Offsets) -> None:
        """Every outcome written in the mail scenarios says ``sent``."""
        topic = deployment.topics["outcomes"]
        expected = offsets.end(topic)
        reader = Consumer(
            {
                "bootstrap.servers": self.servers,
                "group.id": f"{self.topics.prefix}.check",
                "enable.auto.commit": False,
            }
        )
        statuses: dict[str, int] = {}
        try:
            reader.assign([TopicPartition(topic, p, 0) for p in offsets.partitions(topic)])
            seen = 0
            deadline = time.monotonic() + 60
            while seen < expected and time.monotonic() < deadline:
                for msg in reader.consume(num_messages=1000, timeout=0.2):
                    if msg.error() is None:
                        seen += 1
                        status = decode_outcome(msg.value() or b"").status.value
                        statuses[status] = statuses.get(status, 0) + 1
        finally:
            reader.close()
        if set(statuses) != {OutcomeStatus.SENT.value}:
            raise RuntimeError(f"outcomes other than sent: {statuses}")

    # --- latency ------------------------------------------------------------------------------------------
    def latency(
        self, service: Service | HandMail, deployment: Deployment, name: str, rate: float = LATENCY_RATE
    ) -> int:
        """The latency stream into ``deployment``'s events topic; its figures are ``{name}_p50_ms`` etc.
        Returns how many mails it made."""
        count = int(self.plan.latency_seconds * rate)
        prod = producer(self.servers, **{"linger.ms": 0})
        template = self.records
        before = count_lines(self.fast_log)
        sent_at: dict[str, float] = {}
        start = time.monotonic() + 0.1
        first = last = 0.0
        for n in range(count):
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            event_id = f"{name}-{n}"
            now = datetime.now(UTC)
            sent_at[event_id] = now.timestamp()
            value = template.value(event_id, MAIL_TRIGGER, "p-fast", now.isoformat())
            prod.produce(deployment.topics["lms"], key=event_id.encode(), value=value)
            prod.poll(0)
            last = time.monotonic()
            first = first or last
        prod.flush(30)
        wait_for(
            lambda: count_lines(self.fast_log) >= before + count,
            120 + count / 20,  # a service that falls behind still delivers them all, later
            f"{name}: mails at the sink",
            0.05,
            service.check_alive,
        )
        latencies = []
        received: list[float] = []
        for entry in read_sink_log(self.fast_log):
            event_id = str(entry.get("subject") or "").removeprefix("bench ")
            if event_id in sent_at:
                received.append(float(entry["ts"]))
                latencies.append((received[-1] - sent_at.pop(event_id)) * 1000)
        if sent_at:
            raise RuntimeError(f"{name}: {len(sent_at)} mails never reached the sink")
        self.figures[f"{name}_p50_ms"] = round(percentile(latencies, 50), 1)
        self.figures[f"{name}_p99_ms"] = round(percentile(latencies, 99), 1)
        self.figures[f"{name}_max_ms"] = round(max(latencies), 1)
        self.figures[f"{name}_events"] = float(count)
        self.figures[f"{name}_target_rate"] = rate
        #: what the producing loop achieved (it may fall behind on a loaded machine)
        self.figures[f"{name}_produced_rate"] = round((count - 1) / (last - first), 1)
        #: the rate mails reached the sink: below the produced rate, the service fell behind (and the
        #: latencies measure its backlog)
        self.figures[f"{name}_delivered_rate"] = round((count - 1) / (max(received) - min(received)), 1)
        return count

    # --- the naive peer -----------------------------------------------------------------------------------
    def naive_peer(self) -> None:
        count = self.plan.naive_mails
        topic = self.topics.create("naive", 1)
        produce_all(self.servers, topic, self.records.batch("naive", count, MAIL_TRIGGER, "p-esp"))
        command = [
            sys.executable,
            "-m",
            "bench.peers.naive",
            "--bootstrap",
            self.servers,
            "--topic",
            topic,
            "--group",
            f"{self.topics.prefix}.naive",
            "--smtp-port",
            str(self.esp_port),
            "--count",
            str(count),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"the naive peer failed ({result.returncode}):\n{result.stderr[-2000:]}")
        report = json.loads(result.stdout.strip().splitlines()[-1])
        self.figures["naive_peer_esp_per_s"] = float(report["per_s"])

    # --- memory -------------------------------------------------------------------------------------------
    def memory(self) -> None:
        plan = self.plan
        deployment = self.deployment("memory")
        topic = deployment.topics["lms"]
        total = plan.memory_filtered + plan.memory_mailed
        every = total // plan.memory_mailed
        offsets = Offsets(self.servers, deployment.group_id)
        progress = Offsets(self.servers, deployment.group_id)
        template = self.records
        stamp = datetime.now(UTC).isoformat()

        def stream() -> Any:
            mailed = 0
            for n in range(total):
                event_id = f"mem-{n}"
                if n % every == every - 1 and mailed < plan.memory_mailed:
                    mailed += 1
                    yield event_id.encode(), template.value(event_id, MAIL_TRIGGER, "p-fast", stamp)
                else:
                    yield event_id.encode(), template.value(event_id, FILTER_TRIGGER, "p-fast", stamp)

        failure: list[BaseException] = []

        def produce() -> None:
            try:
                produce_all(self.servers, topic, stream())
            except BaseException as exc:
                failure.append(exc)

        try:
            service = self.service(deployment, "memory")
            service.wait_ready()
            with RssSampler(service.pid, lambda: progress.committed(topic)) as sampler:
                writer = threading.Thread(target=produce, name="stream", daemon=True)
                writer.start()
                wait_for(
                    lambda: (
                        offsets.committed(topic) >= total
                        and offsets.end(deployment.topics["outcomes"]) >= plan.memory_mailed
                    ),
                    3600,
                    "memory: the stream",
                    0.25,
                    service.check_alive,
                )
                writer.join(60)
                sampler.sample()
            if failure:
                raise failure[0]
            service.stop()
        finally:
            offsets.close()
            progress.close()
        samples = sampler.samples
        tenth = next(rss for _, done, rss in samples if done >= total / 10)
        end = samples[-1][2]
        self.figures["memory_peak_rss_mb"] = round(max(sampler.hwm, *(rss for _, _, rss in samples)), 1)
        self.figures["memory_rss_growth_mb"] = round(end - tenth, 1)
        self.figures["memory_rss_at_10pct_mb"] = round(tenth, 1)
        self.figures["memory_stream_events"] = float(total)

    # --- all of it ----------------------------------------------------------------------------------------
    def run(self, only: tuple[str, ...]) -> dict[str, float]:
        self.only = only
        steps: list[tuple[str, Callable[[], None]]] = []
        # the plain consumer and the service take turns, so a slow stretch of the machine hits both
        for n in range(self.plan.filter_rounds):
            steps += [
                ("decode", self.raw_consume_decode),
                ("decode", functools.partial(self.raw_consume_decode, FETCH_DEFAULTS, SAME_FETCH)),
                ("hand_json", self.hand_json),
                ("filter", functools.partial(self.filter_only, n)),
            ]
        steps += [
            ("decode", self.raw_consume_decode),
            ("decode", functools.partial(self.raw_consume_decode, FETCH_DEFAULTS, SAME_FETCH)),
            ("hand_json", self.hand_json),
            ("mail", self.mail),
            ("naive", self.naive_peer),
            ("memory", self.memory),
        ]
        with stopping(self.cleanup):
            try:
                self.start_sinks()
                for name, step in steps:
                    wanted = name in only or (
                        name == "mail" and bool({"smtp", "hand_mail", "latency"} & set(only))
                    )
                    if not wanted:
                        continue
                    started = time.monotonic()
                    step()
                    print(f"bench.pipeline: {name} took {time.monotonic() - started:.1f} s", file=sys.stderr)
            finally:
                self.topics.cleanup()
        for figure, values in self.rounds.items():
            self.figures[figure] = round(statistics.median(values), 1)
        if "filter" in only:
            self.figures["filter_events"] = float(self.plan.filter_events)
        return dict(sorted(self.figures.items()))


class HandMail:
    """The hand-written mail loop (:mod:`bench.peers.hand_mail`) as a child process: its stdout is read
    in a thread (the ready line, then its counts at exit), its stderr goes to ``log``."""

    def __init__(
        self, servers: str, deployment: Deployment, smtp_port: int, connections: int, product: str, log: Path
    ) -> None:
        command = [
            sys.executable,
            "-m",
            "bench.peers.hand_mail",
            "--bootstrap",
            servers,
            "--topic",
            deployment.topics["lms"],
            "--outcomes",
            deployment.topics["outcomes"],
            "--group",
            deployment.group_id,
            "--smtp-port",
            str(smtp_port),
            "--connections",
            str(connections),
            "--trigger",
            MAIL_TRIGGER,
            "--product",
            product,
        ]
        self.log = log
        with log.open("ab") as err:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, name="hand-mail", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            if line.strip() == HAND_MAIL_READY:
                self._ready.set()

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"the hand-written mail loop exited with {code}:\n{tail}")

    def wait_ready(self, timeout: float = 90.0) -> None:
        wait_for(self._ready.is_set, timeout, "hand-mail: ready", 0.02, self.check_alive)

    def stop(self) -> dict[str, Any]:
        """SIGTERM (it finishes its batch), SIGKILL after 30 s; the counts it printed at exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(10)
        for line in reversed(self.lines):
            if line.startswith("{"):
                counts: dict[str, Any] = json.loads(line)
                return counts
        return {}


def service_metric(service: Service, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    _, body = service.get("/metrics")
    return sum(
        sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == name
    )


def run(
    quick: bool, only: tuple[str, ...] = SCENARIOS, profile: Path | None = None, profile_format: str = "svg"
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="eventmail-bench-") as work:
        return Bench(Plan.of(quick), Path(work), profile, profile_format).run(only)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline")
    parser.add_argument("--quick", action="store_true", help="smaller streams and fewer rounds")
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="run only these scenarios")
    parser.add_argument("--profile", type=Path, help="run each service under py-spy; profiles go here")
    parser.add_argument(
        "--profile-format",
        choices=("svg", "txt", "json"),
        default="svg",
        help="svg: flame graph; txt: collapsed stacks; json: speedscope",
    )
    args = parser.parse_args(argv)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    figures = run(args.quick, tuple(args.only or SCENARIOS), args.profile, args.profile_format)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
