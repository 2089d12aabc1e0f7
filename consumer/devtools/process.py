"""``eventmail <command>`` as a child process with its own HTTP port and log file.

The tests and the benchmarks run the services for real with it: start, wait until ``/readyz``
answers 200, read ``/metrics``, and stop with SIGTERM (a clean drain) or SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """``python -m consumer.cli.main <command>`` with ``env`` (and nothing ``EVENTMAIL_*`` from this
    process's environment), its HTTP server on a free port of 127.0.0.1, stdout and stderr in
    ``log_dir/<name>-<port>.log``."""

    def __init__(
        self,
        command: str,
        env: dict[str, str],
        log_dir: Path,
        name: str | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.command = command
        self.port = free_port()
        self.name = name or command
        self.cwd = cwd
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("EVENTMAIL_")},
            "EVENTMAIL_HTTP__HOST": "127.0.0.1",
            **env,
            "EVENTMAIL_HTTP__PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
        }
        self.log_path = log_dir / f"{self.name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "consumer.cli.main", self.command],
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        """(status, body) of a GET on the service's HTTP port; OSError when nothing answers."""
        try:
            with urllib.request.urlopen(self.url(path), timeout=2) as response:  # noqa: S310 (a local URL)
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def check_alive(self) -> None:
        """RuntimeError with the end of the log when the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                code, body = self.get("/readyz")
                if code == 200:
                    return
                last = body
            except OSError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s ({last}):\n{self.tail()}")

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The sum of a metric's samples (those matching ``labels``) from /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        _, body = self.get("/metrics")
        total = 0.0
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                    total += sample.value
        return total

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the exit code of a clean drain."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGKILL if still running (cleanup after a test; :meth:`terminate` is the clean way)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
