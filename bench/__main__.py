"""``python -m bench [--quick] [--only NAME]``: run every benchmark module and write
``bench/results/latest.json`` and ``docs/benchmarks.md``.

Each module under ``bench/`` named in ``MODULES`` exposes ``run(quick: bool) -> dict[str, float]``.
Figures are rates (per second), latencies (ms) or sizes (MB); ratios compare scenarios measured in
this same run, never against numbers from another machine or another day.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
REPORT = ROOT / "docs" / "benchmarks.md"
MODULES = ("matching", "transport", "pipeline", "aggregate")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from bench.support import service_loop_name

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "event_loop": service_loop_name(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="a small version (minutes, not tens of minutes)")
    parser.add_argument("--only", action="append", choices=MODULES, help="run only these modules")
    args = parser.parse_args()
    started = time.monotonic()
    machine_at_start = machine()
    results: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for name in args.only or MODULES:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.{name}":
                failures[name] = "not present"
                continue
            raise
        print(f"bench: {name} ...", flush=True)
        t0 = time.monotonic()
        try:
            figures = module.run(args.quick)
        except Exception:
            failures[name] = traceback.format_exc(limit=5)
            print(f"bench: {name} FAILED\n{failures[name]}", file=sys.stderr, flush=True)
            continue
        results[name] = figures
        print(f"bench: {name} done in {time.monotonic() - t0:.0f}s: {json.dumps(figures)}", flush=True)
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine_at_start,
        "seconds": round(time.monotonic() - started, 1),
        "results": results,
        "ratios": ratios(results),
        "failures": failures,
    }
    report["goals"] = goals(report)
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report)
    print(f"bench: wrote {RESULTS.relative_to(ROOT)} and {REPORT.relative_to(ROOT)}")
    return 1 if any(v != "not present" for v in failures.values()) else 0


def ratios(results: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    flat = {f"{m}.{k}": v for m, figures in results.items() for k, v in figures.items()}

    def ratio(name: str, num: str, den: str) -> None:
        if flat.get(num) and flat.get(den):
            out[name] = round(float(flat[num]) / float(flat[den]), 3)

    ratio("filter_vs_hand_json", "pipeline.filter_only_per_s", "pipeline.hand_json_per_s")
    ratio("filter_vs_raw_decode", "pipeline.filter_only_per_s", "pipeline.raw_consume_decode_per_s")
    ratio(
        "filter_vs_raw_decode_same_fetch",
        "pipeline.filter_only_per_s",
        "pipeline.raw_consume_decode_same_fetch_per_s",
    )
    ratio("mail_vs_hand_loop", "pipeline.mail_fast_per_s", "pipeline.hand_mail_per_s")
    ratio("mail_vs_raw_smtp", "pipeline.mail_fast_per_s", "pipeline.raw_smtp_per_s")
    # what keeping the guarantee costs any loop: the smallest one against the bare SMTP client
    ratio("hand_loop_vs_raw_smtp", "pipeline.hand_mail_per_s", "pipeline.raw_smtp_per_s")
    ratio("mail_vs_naive_peer", "pipeline.mail_esp_per_s", "pipeline.naive_peer_esp_per_s")
    ratio("transport_vs_raw_aiosmtplib", "transport.eventmail_per_s", "transport.raw_aiosmtplib_per_s")
    return out


#: The goals the report is held against: (ratio or ``module.figure``, which of the two, op, bound,
#: what it means). "RSS flat" is read as: growth over the stream under 10 % of the 250 MB budget.
GOALS: tuple[tuple[str, str, str, float, str], ...] = (
    ("filter_vs_hand_json", "ratio", ">=", 1.0, "filter path vs a hand-written json.loads loop"),
    ("filter_vs_raw_decode", "ratio", ">=", 0.85, "filter path vs a plain consumer with EventDecoder"),
    ("mail_vs_hand_loop", "ratio", ">=", 0.9, "mail path vs the smallest loop with its guarantee"),
    ("mail_vs_raw_smtp", "ratio", ">=", 0.8, "mail path vs raw aiosmtplib on the same connections"),
    ("pipeline.mail_fast_cpu_ms_per_mail", "figure", "<=", 0.5, "CPU (all threads) per mail, fast sink"),
    ("matching.match_events_per_s", "figure", ">=", 150_000.0, "events/s matched, 100,000 rules"),
    ("matching.rules_rss_mb", "figure", "<", 400.0, "RSS holding 100,000 rules and their index"),
    ("pipeline.latency_p99_ms", "figure", "<", 50.0, "p99 at 500 mails/s, produce to SMTP acceptance"),
    ("mail_vs_naive_peer", "ratio", ">=", 20.0, "mail path vs the naive peer, ESP sink"),
    ("pipeline.memory_peak_rss_mb", "figure", "<", 250.0, "peak RSS over the long stream"),
    ("pipeline.memory_rss_growth_mb", "figure", "<", 25.0, "RSS growth over the long stream"),
)
OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda value, bound: value >= bound,
    "<=": lambda value, bound: value <= bound,
    "<": lambda value, bound: value < bound,
}


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal with the value measured in this run and whether it is met (None: not measured)."""
    flat = {f"{m}.{k}": v for m, figures in report["results"].items() for k, v in figures.items()}
    out = []
    for name, kind, op, bound, meaning in GOALS:
        value = report["ratios"].get(name) if kind == "ratio" else flat.get(name)
        met = None if value is None else OPS[op](value, bound)
        out.append({"goal": name, "op": op, "bound": bound, "value": value, "met": met, "meaning": meaning})
    return out


def write_markdown(report: dict[str, Any]) -> None:
    m = report["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m bench`); do not edit by hand. "
        "Ratios compare scenarios measured in the same run on the same machine.",
        "",
        f"- when: {report['when']}{' (quick run)' if report['quick'] else ''}",
        f"- machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; event loop of the service "
        f"and of the SMTP baselines: `{m.get('event_loop', 'unknown')}`",
        f"- load average (1, 5, 15 min) at start {m.get('load_average_at_start')}, at end "
        f"{m.get('load_average_at_end')}: everything here shares this machine, so other load is noise",
        f"- total time: {report['seconds']} s",
        "",
        "## Ratios",
        "",
        "| ratio | value |",
        "|---|---|",
    ]
    lines += [f"| `{k}` | {v} |" for k, v in report["ratios"].items()] or ["| (none) | |"]
    lines += ["", "## Goals", "", "| goal | what | target | this run | met |", "|---|---|---|---|---|"]
    for goal in report["goals"]:
        value = "not measured" if goal["value"] is None else _shown(goal["value"])
        met = {True: "yes", False: "**no**", None: "-"}[goal["met"]]
        lines.append(
            f"| `{goal['goal']}` | {goal['meaning']} | {goal['op']} {goal['bound']:,g} | {value} | {met} |"
        )
    lines += ["", "## Figures", "", "| module | figure | value |", "|---|---|---|"]
    for module, figures in report["results"].items():
        for key, value in figures.items():
            shown = f"{value:,.2f}" if isinstance(value, float) and abs(value) < 100 else f"{value:,.1f}"
            lines.append(f"| {module} | `{key}` | {shown} |")
    if report["failures"]:
        lines += ["", "## Not run", ""]
        lines += [f"- {k}: {v.splitlines()[-1] if v else ''}" for k, v in report["failures"].items()]
    chart = chart_png(report)
    if chart:
        lines += ["", f"![throughput]({chart})", ""]
    lines += ["", "## How each module measures", ""]
    for module in report["results"]:
        lines += [f"### {module}", "", _method(module), ""]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(line for line in lines) + "\n")


def _method(module: str) -> str:
    """The module's docstring without its usage line(s): what it measures and how."""
    doc = importlib.import_module(f"bench.{module}").__doc__ or ""
    kept = [p for p in doc.strip().split("\n\n") if "python -m bench" not in p]
    return "\n\n".join(kept)


#: Figures of baselines (what eventmail is compared with), drawn apart from eventmail's own.
BASELINES = ("raw_", "hand_", "naive_")


def chart_png(report: dict[str, Any]) -> str | None:
    """docs/benchmarks.png: every rate (eventmail's and its baselines'), and every goal measured as
    the share of its target reached (1 = just met)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    bars = {
        f"{module}.{key}".removesuffix("_per_s"): value
        for module, figures in report["results"].items()
        for key, value in figures.items()
        if key.endswith("_per_s")
    }
    if not bars:
        return None
    scored = [goal for goal in report["goals"] if goal["value"] is not None]
    rows = max(len(bars), len(scored))
    fig, (rates, targets) = plt.subplots(
        1, 2, figsize=(14, 0.42 * rows + 1.6), gridspec_kw={"width_ratios": [1.1, 1]}
    )
    names = list(bars)
    colors = ["#9a9a9a" if n.split(".", 1)[1].startswith(BASELINES) else "#3b7dd8" for n in names]
    rates.barh(names, [bars[n] for n in names], color=colors)
    rates.invert_yaxis()
    rates.set_xscale("log")
    rates.set_xlabel("per second (log scale); grey: baselines")
    rates.set_title("rates")
    if scored:
        labels = [goal["goal"] for goal in scored]
        shares = [_share(goal) for goal in scored]
        targets.barh(labels, shares, color=["#3a9d5d" if goal["met"] else "#d0473c" for goal in scored])
        targets.invert_yaxis()
        targets.axvline(1.0, color="black", linewidth=0.8)
        for row, goal in enumerate(scored):
            targets.text(
                shares[row], row, f" {_shown(goal['value'])} ({goal['op']} {goal['bound']:,g})", va="center"
            )
        targets.set_xscale("log")
        targets.set_xlim(min(0.1, *shares) * 0.8, max(10.0, *shares) * 12)
        targets.set_xlabel("share of the target reached (log scale; >= 1: met)")
        targets.set_title("goals")
    else:
        targets.axis("off")
    fig.suptitle(f"eventmail benchmarks, {report['when']}{' (quick run)' if report['quick'] else ''}")
    fig.tight_layout()
    path = REPORT.parent / "benchmarks.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _shown(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.3g}"


def _share(goal: dict[str, Any]) -> float:
    """How far a goal's value is toward its bound: value / bound for ">=", bound / value otherwise."""
    value, bound = float(goal["value"]), float(goal["bound"])
    if goal["op"] == ">=":
        return max(value / bound, 1e-3) if bound > 0 else 1.0
    return bound / value if value > 0 else 10.0


if __name__ == "__main__":
    sys.exit(main())
