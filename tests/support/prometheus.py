"""Debian's Prometheus and promtool (2.42, installed into ``.cache`` by deploy/prometheus/install.sh,
which ``make tools`` runs) for the tests.

- :func:`promtool` / :func:`prometheus_binary`: the binaries; a missing one fails the test.
- :func:`check_expressions`: PromQL expressions parsed by promtool (as recording rules of a throw-away
  rule file), with the ``eventmail_*`` metrics each one names.
- :class:`PrometheusServer`: a real ``prometheus`` on a free port and a temporary directory, with its
  HTTP API (``query``, ``alerts``, ``targets``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.devtools.process import free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "eventmail-alerts.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "eventmail-alerts.test.yaml"


def _tool(name: str) -> Path:
    path = Path(os.environ.get("EVENTMAIL_CACHE", ROOT / ".cache")) / "bin" / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run deploy/prometheus/install.sh (make tools)")
    return path


def promtool() -> Path:
    return _tool("promtool")


def prometheus_binary() -> Path:
    return _tool("prometheus")


def run_promtool(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool()), *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def metric_names(expr: str) -> list[str]:
    """The ``eventmail_*`` metrics an expression names (outside quoted label values), sorted."""
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return sorted(set(re.findall(r"\beventmail_\w+", unquoted)))


def check_expressions(exprs: list[str], workdir: Path) -> list[dict[str, Any]]:
    """Each expression parsed by promtool: ``{"metrics": [...]}``, plus ``"error"`` if it is not valid
    PromQL. One group per expression, so an error names the expression it belongs to."""
    groups = [{"name": f"q{i}", "rules": [{"record": f"q{i}", "expr": e}]} for i, e in enumerate(exprs)]
    path = workdir / "expressions.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    result = run_promtool("check", "rules", path)
    errors: dict[int, str] = {}
    if result.returncode != 0:
        # promtool stops at the first bad file; check the expressions one by one to name each bad one.
        for i, expr in enumerate(exprs):
            single = workdir / f"expression-{i}.rules.yaml"
            single.write_text(
                yaml.safe_dump({"groups": [{"name": "q", "rules": [{"record": "q", "expr": expr}]}]})
            )
            one = run_promtool("check", "rules", single)
            if one.returncode != 0:
                errors[i] = (one.stderr or one.stdout).strip()
        assert errors, f"promtool check rules failed on the whole file only:\n{result.stderr}"
    out: list[dict[str, Any]] = []
    for i, expr in enumerate(exprs):
        entry: dict[str, Any] = {"metrics": metric_names(expr)}
        if i in errors:
            entry["error"] = errors[i]
        out.append(entry)
    return out


class PrometheusError(RuntimeError):
    pass


class PrometheusServer:
    """``prometheus`` with ``config`` (a dict written as prometheus.yml) in ``directory``, listening on a
    free port of 127.0.0.1; its log in ``directory/prometheus.log``."""

    def __init__(self, directory: Path, config: dict[str, Any], rule_files: dict[str, str]) -> None:
        self.directory = directory
        self.port = free_port()
        for name, text in rule_files.items():
            (directory / name).write_text(text)
        config = {**config, "rule_files": [str(directory / name) for name in rule_files]}
        self.config_path = directory / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = directory / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        check = run_promtool("check", "config", self.config_path)
        assert check.returncode == 0, check.stdout + check.stderr
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(prometheus_binary()),
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                with urllib.request.urlopen(self.url("/-/ready"), timeout=2) as response:  # noqa: S310
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready after {timeout}s:\n{self.tail()}")
            time.sleep(0.2)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise PrometheusError(f"prometheus exited with {self.proc.returncode}:\n{self.tail()}")

    def api(self, path: str, **params: str) -> Any:
        """``data`` of a GET on the HTTP API; PrometheusError with the API's error text."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(self.url(f"/api/v1/{path}?{query}"), timeout=10) as response:  # noqa: S310
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now (``[{"metric": {...}, "value": [t, "v"]}]``)."""
        data = self.api("query", query=expr)
        result = data["result"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        assert isinstance(result, list)
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts (``labels``, ``annotations``, ``state``, ``value``, ``activeAt``)."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return active

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
