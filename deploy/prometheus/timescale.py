#!/usr/bin/env python3
"""Print a Prometheus rule file with its time scale shrunk, for end-to-end tests that cannot wait for
the shipped durations: every ``for:``, range selector (``[15m]``) and ``offset`` is divided by FACTOR and
written in seconds (rounded up, at least 1 s; ``0m`` stays 0). Nothing else changes: the thresholds,
labels and annotations are the shipped ones.

    deploy/prometheus/timescale.py deploy/prometheus/eventmail-alerts.yaml 60 > /tmp/alerts.yaml

With FACTOR 60 a minute becomes a second (``for: 15m`` -> ``for: 15s``, ``rate(x[15m])`` ->
``rate(x[15s])``); scrape and evaluate every second or so, so that a window still holds several samples.
"""

from __future__ import annotations

import math
import re
import sys

UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = r"(\d+)(ms|s|m|h|d|w)"


def seconds(amount: str, unit: str) -> float:
    return int(amount) * UNITS[unit]


def scaled(amount: str, unit: str, factor: float) -> str:
    value = seconds(amount, unit)
    if value == 0:
        return "0s"
    return f"{max(1, math.ceil(value / factor))}s"


def timescale(text: str, factor: float) -> str:
    """``text`` (a rule file) with every ``for:``, range and offset duration divided by ``factor``."""
    if factor <= 0:
        raise ValueError(f"FACTOR must be positive, not {factor}")
    text = re.sub(
        rf"^(\s*for:\s*){_DURATION}\s*$",
        lambda m: m.group(1) + scaled(m.group(2), m.group(3), factor),
        text,
        flags=re.M,
    )
    text = re.sub(rf"\[{_DURATION}\]", lambda m: "[" + scaled(m.group(1), m.group(2), factor) + "]", text)
    return re.sub(
        rf"\boffset\s+{_DURATION}\b", lambda m: "offset " + scaled(m.group(1), m.group(2), factor), text
    )


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as rules:
        sys.stdout.write(timescale(rules.read(), float(argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
