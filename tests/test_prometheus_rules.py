"""The alert rules under promtool (Debian's Prometheus 2.42, deploy/prometheus/install.sh):
``promtool check rules`` on the shipped file and the chart's copy, and ``promtool test rules`` with the
unit tests of deploy/prometheus/eventmail-alerts.test.yaml, which give every alert a case that fires
(labels and annotations, runbook included) and cases that must not.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from tests.support.prometheus import ROOT, RULE_TESTS, RULES, run_promtool

CHART_RULES = ROOT / "deploy" / "helm" / "eventmail" / "files" / "eventmail-alerts.yaml"


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def timescale_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "timescale", ROOT / "deploy" / "prometheus" / "timescale.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("timescale", module)
    spec.loader.exec_module(module)
    return module


def test_rule_files_pass_promtool_check_rules() -> None:
    for path in (RULES, CHART_RULES):
        result = run_promtool("check", "rules", path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_chart_carries_the_same_rules() -> None:
    assert CHART_RULES.read_bytes() == RULES.read_bytes(), (
        "copy deploy/prometheus/eventmail-alerts.yaml to the chart"
    )


def test_alert_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_case_with_its_runbook() -> None:
    cases = [
        case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]
    ]
    for rule in alert_rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        firing = [alert for c in mine for alert in c.get("exp_alerts") or []]
        assert firing, f"{rule['alert']}: no case where it fires"
        assert any(not c.get("exp_alerts") for c in mine), f"{rule['alert']}: no case where it must not fire"
        for alert in firing:
            assert alert["exp_labels"]["severity"] == rule["labels"]["severity"], rule["alert"]
            assert alert["exp_annotations"]["runbook_url"] == rule["annotations"]["runbook_url"], rule[
                "alert"
            ]


def test_the_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    """promtool fails the unit tests when a rule no longer does what they expect."""
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    text = RULES.read_text()
    assert "> 1000)" in text
    (tmp_path / RULES.name).write_text(text.replace("> 1000)", "> 10000)"))
    result = run_promtool("test", "rules", tmp_path / RULE_TESTS.name)
    assert result.returncode == 1, result.stdout
    assert "EventmailConsumerLagGrowing" in result.stdout + result.stderr


def without_durations(expr: str) -> str:
    return re.sub(r"offset \w+", "offset", re.sub(r"\[\w+\]", "[]", expr))


def test_timescale_divides_every_duration_and_nothing_else() -> None:
    timescale = timescale_module()
    text = RULES.read_text()
    scaled = timescale.timescale(text, 60)
    assert "for: 15s" in scaled
    assert "[15s]" in scaled
    assert "[60s]" in scaled
    assert "for: 0s" in scaled
    assert "offset 10s" in scaled
    assert "[15m]" not in scaled
    assert "for: 15m" not in scaled
    original, fast = yaml.safe_load(text), yaml.safe_load(scaled)
    for before, after in zip(original["groups"], fast["groups"], strict=True):
        for a, b in zip(before["rules"], after["rules"], strict=True):
            assert a["labels"] == b["labels"]
            assert a["annotations"] == b["annotations"]
            assert without_durations(a["expr"]) == without_durations(b["expr"]), a["alert"]
    assert timescale.timescale("for: 90s\nrate(x[1h])", 60) == "for: 2s\nrate(x[60s])"
    result = run_promtool("check", "rules", "/dev/stdin", stdin=scaled)
    assert result.returncode == 0, result.stdout + result.stderr
