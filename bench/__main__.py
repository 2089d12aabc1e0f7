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
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
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

    ratio("filter_vs_raw_decode", "pipeline.filter_only_per_s", "pipeline.raw_consume_decode_per_s")
    ratio("mail_vs_raw_smtp", "pipeline.mail_fast_per_s", "pipeline.raw_smtp_per_s")
    ratio("mail_vs_naive_peer", "pipeline.mail_esp_per_s", "pipeline.naive_peer_esp_per_s")
    ratio("transport_vs_raw_aiosmtplib", "transport.eventmail_per_s", "transport.raw_aiosmtplib_per_s")
    return out


#: The goals the report is held against: (ratio or ``module.figure``, which of the two, op, bound).
#: "RSS flat" is read as: growth over the stream under 10 % of the 250 MB budget.
GOALS: tuple[tuple[str, str, str, float], ...] = (
    ("filter_vs_raw_decode", "ratio", ">=", 0.6),
    ("mail_vs_raw_smtp", "ratio", ">=", 0.8),
    ("mail_vs_naive_peer", "ratio", ">=", 20.0),
    ("pipeline.latency_p99_ms", "figure", "<", 100.0),
    ("pipeline.memory_peak_rss_mb", "figure", "<", 250.0),
    ("pipeline.memory_rss_growth_mb", "figure", "<", 25.0),
)


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal with the value measured in this run and whether it is met (None: not measured)."""
    flat = {f"{m}.{k}": v for m, figures in report["results"].items() for k, v in figures.items()}
    out = []
    for name, kind, op, bound in GOALS:
        value = report["ratios"].get(name) if kind == "ratio" else flat.get(name)
        met = None if value is None else (value >= bound if op == ">=" else value < bound)
        out.append({"goal": name, "op": op, "bound": bound, "value": value, "met": met})
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
        f"- machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}",
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
    lines += ["", "## Goals", "", "| goal | target | this run | met |", "|---|---|---|---|"]
    for goal in report["goals"]:
        value = "not measured" if goal["value"] is None else f"{goal['value']:,.3g}"
        met = {True: "yes", False: "**no**", None: "-"}[goal["met"]]
        lines.append(f"| `{goal['goal']}` | {goal['op']} {goal['bound']:g} | {value} | {met} |")
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


def chart_png(report: dict[str, Any]) -> str | None:
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
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(bars) + 1.2))
    names = list(bars)
    ax.barh(names, [bars[n] for n in names], color="#3b7dd8")
    ax.set_xscale("log")
    ax.set_xlabel("per second (log scale)")
    ax.set_title("eventmail benchmarks")
    fig.tight_layout()
    path = REPORT.parent / "benchmarks.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


if __name__ == "__main__":
    sys.exit(main())
