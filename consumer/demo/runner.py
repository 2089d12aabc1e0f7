"""``eventmail demo`` from start to finish, and back: start the pieces, stream the events, watch,
summarise, then (with ``follow``) keep the services up until Ctrl-C, and stop what it started.

The order of things: output folders -> Kafka (``deploy/local/kafka.sh up`` unless a bootstrap is
given) -> SMTP sinks (mail, a relay refusing everything, alert mail) -> topics -> rules -> the
services, until both are ready -> the watcher and the publisher -> the live screen -> the summary.
Stopping runs in reverse, whatever happened: Ctrl-C, SIGTERM, an error or the end. A second Ctrl-C
while stopping kills the children at once instead of waiting for their drain.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.live import Live
from rich.text import Text

from consumer.cli.logs import outcome_table
from consumer.demo import rules as demo_rules
from consumer.demo.plan import Plan, build_plan
from consumer.demo.stack import (
    KAFKA_LOG,
    PREFERRED_PORTS,
    DemoError,
    Deployment,
    LocalKafka,
    Service,
    Sink,
    check_broker,
    create_topics,
    delete_earlier_demo_topics,
    free_port,
    start_sink,
)
from consumer.demo.traffic import Publisher, Tally, Watcher
from consumer.demo.view import Summary, make_progress, screen, summary_view, table_rows
from consumer.events.triggers import Platform
from consumer.outcomes.model import AlertKind

#: Seconds for a service to become ready (two Python processes and a group join on a small machine).
READY_TIMEOUT = 180.0
#: Seconds a stopping service may take to drain before it is killed.
STOP_TIMEOUT = 30.0


@dataclass
class Options:
    events: int = 200
    follow: bool = True
    bootstrap: str | None = None
    output: Path = Path("demo-output")
    as_json: bool = False
    rate: float = 25.0
    #: Seconds to wait, once every event is published, for what the plan expects.
    timeout: float = 180.0
    seed: int = 7


class Stop(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C."""


@dataclass
class _Started:
    kafka: LocalKafka | None = None
    sinks: list[Sink] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    watcher: Watcher | None = None
    publisher: Publisher | None = None


class Demo:
    def __init__(self, options: Options, console: Console) -> None:
        self.options = options
        self.console = console
        self.output = options.output
        self.mail_dir = self.output / "mail"
        self.alerts_dir = self.output / "alerts"
        self.logs_dir = self.output / "logs"
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        self.started = _Started()
        self.deployment: Deployment | None = None
        self.plan: Plan | None = None
        self.began = time.monotonic()
        self.hurry = False
        self.summary: Summary | None = None
        self._kafka_log: logging.Handler | None = None

    # --- the whole run ---------------------------------------------------------------------------------
    def run(self) -> int:
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        # Explicitly: a shell that starts us in the background may have told us to ignore SIGINT.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        code = 1
        try:
            self._start()
            ok = self._stream()
            self.summary = self._summarise(ok)
            self._report(self.summary, services_running=self.options.follow)
            code = 0 if self.summary.ok else 1
            if self.options.follow:
                self._follow()
        except (KeyboardInterrupt, Stop):
            self.console.print("\n[bold]stopping the demo[/]")
            code = code if self.summary is not None else 130
        finally:  # an error (DemoError ...) goes on to the CLI's one-line report after this
            signal.signal(signal.SIGINT, self._on_second_interrupt)
            signal.signal(signal.SIGTERM, self._on_second_interrupt)
            try:
                self._shutdown()
            finally:
                for sig, handler in previous.items():
                    if handler is not None:
                        signal.signal(sig, handler)
        return code

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        raise Stop

    def _on_second_interrupt(self, signum: int, frame: FrameType | None) -> None:
        self.hurry = True

    def _step(self, text: str) -> None:
        self.console.print(Text.assemble(("✓", "green"), " ", text))  # paths, names: text, not markup

    # --- start -----------------------------------------------------------------------------------------
    def _prepare_output(self) -> None:
        for folder in (self.mail_dir, self.alerts_dir, self.logs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for folder, pattern in ((self.mail_dir, "*.eml"), (self.alerts_dir, "*.eml"), (self.logs_dir, "*")):
            for stale in folder.glob(pattern):
                if stale.is_file():
                    stale.unlink()

    def _start(self) -> None:
        options = self.options
        self._prepare_output()
        self._kafka_log = logging.FileHandler(self.logs_dir / "kafka-clients.log", encoding="utf-8")
        KAFKA_LOG.addHandler(self._kafka_log)
        if options.bootstrap is None:
            kafka = LocalKafka()
            self.console.print(
                f"starting Kafka on {kafka.bootstrap} (deploy/local/kafka.sh up; the first time it fetches "
                "the broker jars) ..."
            )
            self.started.kafka = kafka
            kafka.up()
            bootstrap = kafka.bootstrap
            removed = delete_earlier_demo_topics(bootstrap, self.run_id)
            note = "started" if kafka.started_here else "already running"
            extra = f"; removed {removed} topics of earlier demo runs" if removed else ""
            self._step(f"Kafka at {bootstrap} ({note}{extra})")
        else:
            bootstrap = options.bootstrap
            check_broker(bootstrap)
            self._step(f"Kafka at {bootstrap}")

        with (self.logs_dir / "smtp-sinks.log").open("ab") as errors:
            mail = start_sink("mail", errors, maildir=self.mail_dir, log=self.logs_dir / "mail.jsonl")
            self.started.sinks.append(mail)
            failing = start_sink("failing", errors, fail_rate=1.0, fail_code=550)
            self.started.sinks.append(failing)
            alerts = start_sink("alerts", errors, maildir=self.alerts_dir)
            self.started.sinks.append(alerts)
        self._step(
            f"SMTP sinks: mail on :{mail.port} (keeps .eml files in {self.mail_dir}), a relay refusing "
            f"every mail (550) on :{failing.port}, alert mail on :{alerts.port}"
        )

        ports = {service: free_port(port) for service, port in PREFERRED_PORTS.items()}
        connections = {"default": mail.port, "failing": failing.port, "alerts": alerts.port}
        deployment = Deployment(bootstrap, self.run_id, connections, ports)
        self.deployment = deployment
        create_topics(deployment)
        self._step(
            f"topics {deployment.topics['lms']}, {deployment.topics['call_logic']} ... (run {self.run_id})"
        )

        files = demo_rules.prepare(self.output / "rules", mail.port)
        applied = demo_rules.apply(deployment.settings(), files)
        self._step(f"{len(applied.rules)} rules applied: {', '.join(r.id for r in applied.rules)}")
        deployment.write_env_file(self.output / "demo.env")

        self.plan = build_plan(
            options.events,
            applied.index,
            frozenset({"esp:failing"}),
            run_id=self.run_id,
            seed=options.seed,
        )

        for command, args in (("run", "run"), ("aggregate", "aggregate"), ("console", "console --local")):
            log_path = self.logs_dir / f"{command}.log"
            service = Service(args, deployment.service_env(command), ports[command], log_path)
            self.started.services.append(service.start())
        self.console.print("starting eventmail run, eventmail aggregate and eventmail console --local ...")
        for service in self.started.services:
            service.wait_ready(READY_TIMEOUT)
        self._step(
            "eventmail run and eventmail aggregate are ready: "
            + ", ".join(f"{s} {url}" for s, url in deployment.metrics_urls().items())
            + f"; the console (no login, this machine only): {deployment.console_url()}"
        )

        watcher = Watcher(
            bootstrap, deployment.topics["outcomes"], deployment.topics["alerts"], deployment.topics["dlq"]
        )
        watcher.start()
        self.started.watcher = watcher
        topics = {
            Platform.LMS: deployment.topics["lms"],
            Platform.CALL_LOGIC: deployment.topics["call_logic"],
        }
        publisher = Publisher(bootstrap, topics, self.plan.records, options.rate)
        publisher.start()
        self.started.publisher = publisher

    # --- watch -----------------------------------------------------------------------------------------
    def mail_files(self) -> int:
        return sum(1 for _ in self.mail_dir.glob("*.eml"))

    def alert_files(self) -> int:
        return sum(1 for _ in self.alerts_dir.glob("*.eml"))

    def _done(self, tally: Tally) -> bool:
        plan = self.plan
        assert plan is not None
        fired = {a.rule_id for a in tally.alerts_of(AlertKind.FIRED)}
        return (
            tally.final("sent") >= plan.expected("sent")
            and tally.final("failed") >= plan.expected("failed")
            and tally.dead_letters >= plan.malformed
            and plan.alerting_rules <= fired
        )

    def _check_services(self) -> None:
        for service in self.started.services:
            if not service.alive():
                raise DemoError(f"eventmail {service.command} stopped unexpectedly: {service.tail()}")

    def _stream(self) -> bool:
        """The live screen until everything expected came out (True) or the timeout (False)."""
        publisher, watcher, plan = self.started.publisher, self.started.watcher, self.plan
        assert publisher is not None
        assert watcher is not None
        assert plan is not None
        progress, task = make_progress(self.console, len(plan.records))
        title = (
            f"eventmail demo: {len(plan.records)} events to {self.deployment and self.deployment.bootstrap}"
        )
        published_at: float | None = None
        with Live(console=self.console, refresh_per_second=4, transient=False) as live:
            while True:
                tally = watcher.snapshot()
                progress.update(task, completed=publisher.acknowledged)
                rows = table_rows(self.console)
                live.update(screen(title, progress, tally, plan, rows, self.mail_files()))
                if publisher.finished.is_set():
                    published_at = published_at or time.monotonic()
                    if publisher.errors:
                        raise DemoError(f"publishing the events failed: {publisher.errors[0]}")
                    if self._done(tally):
                        return True
                    if time.monotonic() - published_at > self.options.timeout:
                        return False
                self._check_services()
                time.sleep(0.25)

    def _summarise(self, ok: bool) -> Summary:
        watcher, publisher, plan, deployment = (
            self.started.watcher,
            self.started.publisher,
            self.plan,
            self.deployment,
        )
        assert watcher is not None
        assert publisher is not None
        assert plan is not None
        assert deployment is not None
        tally = watcher.snapshot()
        expected = {
            "sent": plan.expected("sent"),
            "failed": plan.expected("failed"),
            "dead_letters": plan.malformed,
            "alerts": len(plan.alerting_rules),
        }
        outcomes = {status: tally.final(status) for status in ("sent", "failed")}
        outcomes.update(retrying=tally.records["retrying"], config_error=tally.records["config_error"])
        per_rule: dict[str, dict[str, int]] = {}
        for (_, rule_id), status in sorted(tally.finals.items(), key=lambda item: item[0][::-1]):
            per_rule.setdefault(rule_id, {"sent": 0, "failed": 0})[status] += 1
        problems: list[str] = []
        if not ok:
            problems.append(
                f"not everything expected came out within {self.options.timeout:.0f}s of the last event: "
                + ", ".join(f"{k} {outcomes.get(k, 0)}/{v}" for k, v in expected.items() if k in outcomes)
                + f", dead letters {tally.dead_letters}/{plan.malformed}"
                + f", alerts {len(tally.alerts_of(AlertKind.FIRED))}/{len(plan.alerting_rules)}"
                + f"; see {self.logs_dir}"
            )
        if watcher.error:
            problems.append(f"reading the result topics: {watcher.error}")
        mail_files = self.mail_files()
        if ok and mail_files != outcomes["sent"]:
            problems.append(f"{mail_files} .eml files for {outcomes['sent']} sent mails")
        return Summary(
            ok=ok and not problems,
            run_id=self.run_id,
            bootstrap=deployment.bootstrap,
            output=str(self.output),
            published=publisher.acknowledged,
            valid_events=plan.valid,
            malformed=plan.malformed,
            unmatched=plan.unmatched,
            expected=expected,
            outcomes=outcomes,
            mail_files=mail_files,
            alert_files=self.alert_files(),
            alerts=[alert.model_dump(mode="json") for alert in tally.alerts],
            dead_letters=tally.dead_letters,
            per_rule=per_rule,
            topics=deployment.topics,
            env_file=str(self.output / "demo.env"),
            mail_dir=str(self.mail_dir),
            alerts_dir=str(self.alerts_dir),
            logs_dir=str(self.logs_dir),
            metrics=deployment.metrics_urls(),
            console_url=deployment.console_url(),
            logs_command=f". {self.output / 'demo.env'} && {_eventmail()} logs --since 1h",
            duration_seconds=round(time.monotonic() - self.began, 1),
            problems=problems,
        )

    def _report(self, summary: Summary, services_running: bool) -> None:
        self.console.print(summary_view(summary, services_running))
        if self.options.as_json:
            sys.stdout.write(summary.to_json() + "\n")
            sys.stdout.flush()

    def _follow(self) -> None:
        """Keep the services up and print new outcomes until Ctrl-C (or a service dies)."""
        watcher = self.started.watcher
        assert watcher is not None
        self.console.print(
            "[bold]The services keep running:[/] new outcomes appear below. In another terminal: "
            f"[cyan]{self._env_hint()}[/]. Ctrl-C stops the demo."
        )
        seen = watcher.snapshot().seen
        while True:
            time.sleep(0.5)
            tally = watcher.snapshot()
            fresh = tally.seen - seen
            if fresh > 0:
                for outcome in list(tally.outcomes)[-min(fresh, len(tally.outcomes)) :]:
                    self.console.print(outcome_table([outcome]))
                seen = tally.seen
            self._check_services()

    def _env_hint(self) -> str:
        return f". {self.output / 'demo.env'} && {_eventmail()} logs --follow"

    # --- stop ------------------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Stop what was started, newest first; one step failing does not skip the others."""
        started = self.started
        steps: list[tuple[str, Callable[[], None]]] = [
            ("the publisher", self._stop_publisher),
            ("the services", self._stop_services),
            ("the watcher", lambda: started.watcher.stop() if started.watcher is not None else None),
            ("the SMTP sinks", self._stop_sinks),
            ("Kafka", self._stop_kafka),
            ("the client log", self._close_kafka_log),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                self.console.print(Text(f"stopping {what} failed: {type(exc).__name__}: {exc}", style="red"))

    def _close_kafka_log(self) -> None:
        if self._kafka_log is not None:
            KAFKA_LOG.removeHandler(self._kafka_log)
            self._kafka_log.close()
            self._kafka_log = None

    def _stop_publisher(self) -> None:
        if self.started.publisher is not None:
            self.started.publisher.stop()

    def _stop_services(self) -> None:
        services = self.started.services
        for service in services:  # all at once: each drains on its own
            service.terminate()
        for service in services:
            code = service.stop(STOP_TIMEOUT, hurry=lambda: self.hurry)
            self.console.print(f"stopped eventmail {service.command} (exit {code})")

    def _stop_sinks(self) -> None:
        for sink in self.started.sinks:
            sink.stop()
        if self.started.sinks:
            self.console.print(f"stopped {len(self.started.sinks)} SMTP sinks")

    def _stop_kafka(self) -> None:
        kafka = self.started.kafka
        if kafka is None:
            return
        if kafka.started_here:
            kafka.down()
            self.console.print(f"stopped Kafka on {kafka.bootstrap} (the demo started it)")
        else:
            self.console.print(f"Kafka on {kafka.bootstrap} keeps running (it was running before)")


def _eventmail() -> str:
    """How to call ``eventmail`` from the current directory."""
    if shutil.which("eventmail"):
        return "eventmail"
    script = Path(sys.executable).parent / "eventmail"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def run_demo(options: Options, console: Console | None = None) -> int:
    console = console or Console(stderr=options.as_json)
    return Demo(options, console).run()
