"""The demo's moving parts: the local Kafka broker, the SMTP sinks, the topics, and the two services.

Everything the demo starts is remembered by the object that started it and stopped by it, by
process id: the broker only when the demo started it (``deploy/local/kafka.sh down``), the SMTP
sinks and the services with SIGTERM (then SIGKILL after a grace period). The services run in a
session of their own, so a Ctrl-C in the terminal reaches the demo alone, which stops them in
order (consumer first, so the mail it is sending still reaches the sinks).

The deployment's settings are explicit: the demo neither reads nor passes on the caller's
``EVENTMAIL_*`` variables, so a shell set up for production cannot point the demo at it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

import consumer
from consumer.devtools.smtp_sink import spawn_sink_process, stop_sink_process
from consumer.errors import EventmailError
from consumer.settings import Settings

#: Where the demo's own Kafka clients log (librdkafka's lines would otherwise cut through the screen);
#: the demo points it at a file of its output folder.
KAFKA_LOG = logging.getLogger("consumer.demo.kafka")
KAFKA_LOG.addHandler(logging.NullHandler())
KAFKA_LOG.propagate = False

#: The repository the package was installed from (editable install or a checkout on PYTHONPATH).
SOURCE_ROOT = Path(consumer.__file__).resolve().parents[1]
KAFKA_SCRIPT = Path("deploy") / "local" / "kafka.sh"
#: Prefix of every topic the demo creates: ``demo.<run id>.<name>``.
TOPIC_PREFIX = "demo."
PREFERRED_PORTS = {"run": 9400, "aggregate": 9401, "console": 9410}
#: Services with /metrics (the console has none).
METRICS_SERVICES = ("run", "aggregate")


class DemoError(EventmailError):
    """Something the demo needs is missing or did not start; the message says what and where to look."""


def source_path(relative: Path | str) -> Path:
    """A file of the source checkout (the demo's rules, the broker script)."""
    path = SOURCE_ROOT / relative
    if not path.exists():
        raise DemoError(
            f"{relative} not found under {SOURCE_ROOT}: eventmail demo runs from a source checkout"
        )
    return path


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when nothing listens on it, else a port the kernel picks."""
    if preferred is not None and port_is_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tool_env() -> dict[str, str]:
    """The environment for helper scripts: this interpreter's bin directory first on PATH (the broker
    script checks readiness with the Kafka client of this environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTMAIL_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if "EVENTMAIL_CACHE" in os.environ:  # where `make` keeps the broker jars
        env["EVENTMAIL_CACHE"] = os.environ["EVENTMAIL_CACHE"]
    return env


@dataclass
class LocalKafka:
    """The single-node broker of ``deploy/local/kafka.sh`` on 127.0.0.1:``port``."""

    port: int = field(default_factory=lambda: int(os.environ.get("KAFKA_PORT", "9092")))
    started_here: bool = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _script(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        env = {**_tool_env(), "KAFKA_PORT": str(self.port)}
        return subprocess.run(
            [str(source_path(KAFKA_SCRIPT)), command],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def running(self) -> bool:
        return self._script("status", 30).returncode == 0

    def up(self) -> None:
        """Start the broker unless it runs; remember whether this call started it."""
        # Decided before starting: interrupted half-way, the broker is still ours to stop.
        self.started_here = not self.running()
        result = self._script("up", 600)  # the first run fetches the broker jars
        if result.returncode != 0:
            detail = result.stderr.strip().splitlines()[-1:] or ["no output"]
            raise DemoError(f"the local Kafka did not start ({KAFKA_SCRIPT} up): {detail[0]}")

    def down(self) -> None:
        if self.started_here:
            self._script("down", 60)
            self.started_here = False


def client_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    """The configuration of the demo's own Kafka clients (publisher, watcher, admin)."""
    return {"bootstrap.servers": bootstrap, "logger": KAFKA_LOG, **extra}


def check_broker(bootstrap: str, timeout: float = 15.0) -> None:
    admin = AdminClient(client_config(bootstrap, **{"socket.connection.setup.timeout.ms": 5000}))
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise DemoError(f"cannot reach Kafka at {bootstrap}: {exc.args[0].str()}") from None
    if not metadata.brokers:
        raise DemoError(f"cannot reach Kafka at {bootstrap}: no broker answered")


# --- the deployment ---------------------------------------------------------------------------------


@dataclass
class Deployment:
    """The demo deployment's names and settings: the same for the services and for this process."""

    bootstrap: str
    run_id: str
    connections: dict[str, int]  # ESP connection name -> port of its sink on 127.0.0.1
    ports: dict[str, int]  # service -> HTTP port
    users: dict[str, str] = field(default_factory=lambda: {"u-ops-lead": "ops-lead@example.com"})
    partitions: int = 3

    TOPICS: ClassVar[tuple[str, ...]] = ("lms", "call_logic", "rules", "outcomes", "alerts", "dlq", "retry")

    @property
    def topics(self) -> dict[str, str]:
        names = {"lms": "lms.events", "call_logic": "calllogic.events"}
        return {key: f"{TOPIC_PREFIX}{self.run_id}.{names.get(key, key)}" for key in self.TOPICS}

    @property
    def group_id(self) -> str:
        return f"demo-{self.run_id}"

    def esp_connections(self) -> dict[str, dict[str, Any]]:
        return {
            name: {"host": "127.0.0.1", "port": port, "encryption": "none"}
            for name, port in self.connections.items()
        }

    def values(self) -> dict[str, Any]:
        """The settings, as nested values of :class:`consumer.settings.Settings`."""
        return {
            "kafka": {"bootstrap_servers": self.bootstrap, "extra": {}},
            "group_id": self.group_id,
            "topics": self.topics,
            "esp_connections": self.esp_connections(),
            "users": self.users,
            "alerts": {"connection": "alerts", "sender": "eventmail-alerts@example.com"},
        }

    def settings(self) -> Settings:
        """The settings of this deployment, and nothing from the caller's environment; this process's
        clients log errors only (a fresh broker's transient warnings are not news)."""
        values = self.values()
        values["kafka"]["extra"] = {"log_level": 3}
        return _ExplicitSettings(**values)

    def env(self) -> dict[str, str]:
        """The ``EVENTMAIL_*`` variables of this deployment (for the services, and for the user's shell)."""
        env = {
            "EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "EVENTMAIL_GROUP_ID": self.group_id,
            "EVENTMAIL_ESP_CONNECTIONS": json.dumps(self.esp_connections(), separators=(",", ":")),
            "EVENTMAIL_USERS": json.dumps(self.users, separators=(",", ":")),
            "EVENTMAIL_ALERTS__CONNECTION": "alerts",
            "EVENTMAIL_ALERTS__SENDER": "eventmail-alerts@example.com",
        }
        env.update({f"EVENTMAIL_TOPICS__{key.upper()}": topic for key, topic in self.topics.items()})
        return env

    def service_env(self, service: str) -> dict[str, str]:
        return {
            **self.env(),
            "EVENTMAIL_HTTP__HOST": "127.0.0.1",
            "EVENTMAIL_HTTP__PORT": str(self.ports[service]),
            "EVENTMAIL_CONSOLE__PORT": str(self.ports[service]),
            "EVENTMAIL_LOG_FORMAT": "json",
            # Short grace periods: Ctrl-C should not keep a demo waiting.
            "EVENTMAIL_PIPELINE__DRAIN_TIMEOUT_SECONDS": "10",
        }

    def write_env_file(self, path: Path) -> None:
        """``export NAME='value'`` lines: ``. demo-output/demo.env`` points a shell at the demo."""
        lines = ["# The settings of the last `eventmail demo` run: `. THIS_FILE`, then `eventmail logs`."]
        lines += [f"export {name}={shlex.quote(value)}" for name, value in sorted(self.env().items())]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def metrics_urls(self) -> dict[str, str]:
        return {s: f"http://127.0.0.1:{self.ports[s]}/metrics" for s in METRICS_SERVICES if s in self.ports}

    def console_url(self) -> str | None:
        port = self.ports.get("console")
        return None if port is None else f"http://127.0.0.1:{port}/"


class _ExplicitSettings(Settings):
    """Settings from the values given, ignoring ``EVENTMAIL_*`` variables."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def create_topics(deployment: Deployment, timeout: float = 60.0) -> None:
    """The deployment's topics (the rules topic compacted), with the broker's replication factor."""
    admin = AdminClient(client_config(deployment.bootstrap))
    wanted = []
    for key, topic in deployment.topics.items():
        partitions = 1 if key in ("rules", "alerts", "dlq") else deployment.partitions
        config = {"cleanup.policy": "compact"} if key == "rules" else {}
        wanted.append(NewTopic(topic, num_partitions=partitions, replication_factor=-1, config=config))
    futures = admin.create_topics(wanted, operation_timeout=timeout, request_timeout=timeout)
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            raise DemoError(f"cannot create topic {topic}: {exc.args[0].str()}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # leaders elected: producing and consuming work at once
        metadata = admin.list_topics(timeout=10).topics
        if all(
            name in metadata and metadata[name].error is None and metadata[name].partitions
            and all(p.leader >= 0 for p in metadata[name].partitions.values())
            for name in deployment.topics.values()
        ):  # fmt: skip
            return
        time.sleep(0.2)
    raise DemoError(f"the demo topics have no leaders after {timeout:.0f}s")


def delete_earlier_demo_topics(bootstrap: str, keep_run: str, timeout: float = 30.0) -> int:
    """Remove the topics of earlier demo runs (``demo.<run>.*``) from the demo's own local broker,
    except those of a run whose consumer group still has members (a demo running in another terminal)."""
    admin = AdminClient(client_config(bootstrap))
    by_run: dict[str, list[str]] = {}
    for name in admin.list_topics(timeout=timeout).topics:
        if name.startswith(TOPIC_PREFIX):
            run = name[len(TOPIC_PREFIX) :].split(".", 1)[0]
            if run != keep_run:
                by_run.setdefault(run, []).append(name)
    if not by_run:
        return 0
    groups = {f"demo-{run}": run for run in by_run}
    for group, future in admin.describe_consumer_groups(list(groups), request_timeout=timeout).items():
        try:
            busy = bool(future.result(timeout=timeout).members)
        except KafkaException:
            busy = True  # cannot tell: leave that run alone
        if busy:
            by_run.pop(groups[group], None)
    names = [name for topics in by_run.values() for name in topics]
    if not names:
        return 0
    for future in admin.delete_topics(names, operation_timeout=timeout).values():
        with contextlib.suppress(KafkaException):
            future.result(timeout=timeout)
    return len(names)


# --- processes -------------------------------------------------------------------------------------


@dataclass
class Sink:
    """An SMTP sink child process."""

    name: str
    process: subprocess.Popen[bytes]
    port: int

    def stop(self) -> int:
        return stop_sink_process(self.process)


def start_sink(name: str, stderr: IO[Any], **options: Any) -> Sink:
    try:
        process, port = spawn_sink_process(port=0, stderr=stderr, ready_timeout=60, **options)
    except (OSError, RuntimeError, TimeoutError) as exc:
        raise DemoError(f"the SMTP sink {name!r} did not start: {exc}") from None
    return Sink(name, process, port)


class Service:
    """``eventmail <command>`` (words split on spaces, e.g. ``console --local``) as a child process in a
    session of its own, logging to a file."""

    def __init__(self, command: str, env: dict[str, str], port: int, log_path: Path) -> None:
        self.command = command
        self.port = port
        self.log_path = log_path
        base = {k: v for k, v in os.environ.items() if not k.startswith("EVENTMAIL_")}
        root = str(SOURCE_ROOT)
        base["PYTHONPATH"] = os.pathsep.join(filter(None, [root, base.get("PYTHONPATH")]))
        self.env = {**base, **env, "PYTHONUNBUFFERED": "1"}
        self.process: subprocess.Popen[bytes] | None = None
        self._terminated = False

    def start(self) -> Service:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "consumer.cli.main", *self.command.split()],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def wait_ready(self, timeout: float, interrupted: Callable[[], bool] = lambda: False) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not interrupted():
            if not self.alive():
                code = None if self.process is None else self.process.returncode
                raise DemoError(f"eventmail {self.command} exited with code {code}: {self.tail()}")
            if self.ready():
                return
            time.sleep(0.25)
        if not interrupted():
            raise DemoError(f"eventmail {self.command} not ready after {timeout:.0f}s; see {self.log_path}")

    def terminate(self) -> None:
        """SIGTERM, once: the service drains and exits 0 (a second SIGTERM could land after its
        signal handlers are gone and cut its clean exit short)."""
        if self.process is not None and self.process.poll() is None and not self._terminated:
            self._terminated = True
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float, hurry: Callable[[], bool] = lambda: False) -> int | None:
        """SIGTERM, wait up to ``timeout`` (less once ``hurry()``), then SIGKILL; the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            self.terminate()
            deadline = time.monotonic() + timeout
            while process.poll() is None and time.monotonic() < deadline and not hurry():
                time.sleep(0.1)
            if process.poll() is None:
                process.kill()
        return process.wait()

    def tail(self, lines: int = 3, limit: int = 600) -> str:
        """The end of the service's log, on one line (for an error message), and where the rest is."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return f"no log at {self.log_path}"
        last = " | ".join(text[-lines:])[-limit:]
        return f"{last} (log: {self.log_path})" if last else f"empty log {self.log_path}"
