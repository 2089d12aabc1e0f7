"""Rule matching: events per second matched against 100,000 rules spread over every trigger and scope,
and the memory those rules take.

Measures the match step alone (``RuleIndex.match``) on one core, plus how fast rules validate and an
index builds, in a fresh Python process of its own (``python -m bench.matching --json``), so that
its memory figures are those of the rules and not of the benchmark runner:

* ``match_events_per_s``: 20,000 generated events (every platform and trigger) matched 10 (quick) or
  100 (full) times each against the index, after a warm-up of 2,000.
* The rules' scopes grow with their number, as they do in a deployment: 2 products and 4 campaigns
  per 100 rules (2,000 products and 4,000 campaigns for 100,000 rules), so each product or campaign
  has as many rules as at 10,000 rules over 200 products and 400 campaigns (``mean_matches_per_event``
  says how many rules an event triggers). Matching is a lookup per scope and then one predicate per
  rule of that scope: crowding ten times as many rules into the same scopes would make it that much
  slower, which is not measured here.
* ``rules_rss_mb``: the process's resident memory (VmRSS) once the rules are validated and indexed
  and their JSON records dropped, holding the compiled rules (each with its compact document,
  :mod:`consumer.rules.compact`) and the index, as the rule store of ``eventmail run`` does: it reads
  one record at a time (``json.loads``, validated, compiled, the document and validated model
  dropped), and so does the benchmark (``validate_rules_per_s`` times the validation alone,
  ``compile_and_index_ms`` the compiling and the index); ``rules_rss_growth_mb`` is that minus
  the RSS before the rules were made (the interpreter with eventmail imported). Neither includes
  the service's Kafka clients and buffers: the service with these rules needs about its own
  baseline (the pipeline's ``memory_rss_at_10pct_mb``) plus ``rules_rss_growth_mb``.
  ``peak_rss_mb`` (VmHWM) includes the records while they were read.

``python -m bench.matching [--quick]`` prints the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

from consumer.events.model import Event
from consumer.events.triggers import PRICE_RANGE_TRIGGERS, Platform, triggers_for
from consumer.rules.checks import RuleContext
from consumer.rules.matching import CompiledRule, RuleIndex, compile_rule
from consumer.rules.validation import validate_rule

RULES = 100_000
PRODUCTS = [f"p-{i}" for i in range(RULES // 50)]
CAMPAIGNS = [f"c-{i}" for i in range(RULES // 25)]
PUBLISHERS = [f"pub-{i}" for i in range(50)]
BUYERS = [f"buyer-{i}" for i in range(30)]
POOLS = [f"pool-{i}" for i in range(10)]


def _filters(rng: random.Random, platform: Platform, triggers: list[str]) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    if rng.random() < 0.3:
        filters["method"] = rng.choice(["POST", "FORM"])
    if rng.random() < 0.2:
        filters["tracking_strategy"] = rng.choice(["direct_sold_only", "pingback_only"])
    if rng.random() < 0.4:
        filters["publishers"] = {"include": rng.sample(PUBLISHERS, 5)}
    if rng.random() < 0.3:
        filters["buyers"] = {"exclude": rng.sample(BUYERS, 3)}
    if platform is Platform.CALL_LOGIC and rng.random() < 0.3:
        filters["call_tracking_pools"] = {"include": rng.sample(POOLS, 2)}
    if rng.random() < 0.4:
        if set(triggers) <= PRICE_RANGE_TRIGGERS and rng.random() < 0.5:
            low = rng.uniform(0, 50)
            filters["price"] = {"op": "range", "min": low, "max": low + rng.uniform(0, 100)}
        else:
            filters["price"] = {"op": rng.choice(["gt", "gte", "lt", "lte"]), "value": rng.uniform(0, 100)}
    return filters


def make_rules(count: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for n in range(count):
        platform = rng.choice(list(Platform))
        triggers = rng.sample(list(triggers_for(platform)), rng.choice([1, 1, 2]))
        level = rng.choice(["product", "campaign"])
        scope = (
            {"product_id": rng.choice(PRODUCTS)}
            if level == "product"
            else {"campaign_id": rng.choice(CAMPAIGNS)}
        )
        out.append(
            {
                "id": f"r-{n}",
                "platform": platform.value,
                "level": level,
                **scope,
                "triggers": triggers,
                "filters": _filters(rng, platform, triggers),
                "action": {
                    "connection": {"type": "esp", "name": "default"},
                    "sender": {"email": "from@example.com"},
                    "recipients": [{"email": f"ops{n % 10}@example.com"}],
                    "subject": "Lead {{ lead_id }} {{ trigger }}",
                    "body": "Price {{ price }} for {{ data.state }}",
                },
            }
        )
    return out


def make_events(count: int, seed: int = 11) -> list[Event]:
    rng = random.Random(seed)
    at = datetime(2026, 11, 1, tzinfo=UTC)
    events: list[Event] = []
    for n in range(count):
        platform = rng.choice(list(Platform))
        events.append(
            Event(
                platform=platform,
                event_id=f"ev-{n}",
                trigger=rng.choice(triggers_for(platform)),
                occurred_at=at,
                product_id=rng.choice(PRODUCTS),
                campaign_id=rng.choice(CAMPAIGNS),
                publisher_id=rng.choice(PUBLISHERS),
                buyer_id=rng.choice(BUYERS),
                call_tracking_pool_id=rng.choice(POOLS) if platform is Platform.CALL_LOGIC else None,
                method=rng.choice(["POST", "FORM", None]),
                tracking_strategy=rng.choice(["direct_sold", "pingback", None]),
                price=rng.choice([None, rng.uniform(0, 150)]),
            )
        )
    return events


def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MiB."""
    values = {"VmRSS": 0.0, "VmHWM": 0.0}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def run(quick: bool) -> dict[str, float]:
    """The figures, measured in a fresh process (see the module's docstring)."""
    command = [sys.executable, "-m", "bench.matching", "--json", *(["--quick"] if quick else [])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"bench.matching failed ({result.returncode}):\n{result.stderr[-2000:]}")
    figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def measure(quick: bool) -> dict[str, float]:
    gc.collect()
    rss_before, _ = rss_mb()
    # The rules as the records of the rules topic hold them (JSON), read one at a time as the rule store
    # reads them: decoded, validated, compiled; the document and the validated model dropped.
    records = [json.dumps(doc).encode() for doc in make_rules(RULES)]
    context = RuleContext(esp_connections=frozenset({"default"}))
    compiled: list[CompiledRule] = []
    validate_s = compile_s = 0.0
    for record in records:
        document = json.loads(record)
        t0 = time.perf_counter()
        rule = validate_rule(document, context)
        t1 = time.perf_counter()
        compiled.append(compile_rule(rule))
        validate_s += t1 - t0
        compile_s += time.perf_counter() - t1
    del rule, document
    t0 = time.perf_counter()
    index = RuleIndex(compiled)
    build_s = compile_s + time.perf_counter() - t0
    validated = len(compiled)
    del records, compiled
    gc.collect()
    rss_rules, _ = rss_mb()
    events = make_events(20_000)
    rounds = 10 if quick else 100
    matched = 0
    match = index.match
    for event in events[:2000]:  # warm-up
        match(event)
    t0 = time.perf_counter()
    for _ in range(rounds):
        for event in events:
            matched += len(match(event))
    match_s = time.perf_counter() - t0
    total = rounds * len(events)
    _, peak = rss_mb()
    return {
        "rules": float(len(index)),
        "products": float(len(PRODUCTS)),
        "campaigns": float(len(CAMPAIGNS)),
        "match_events_per_s": round(total / match_s, 1),
        "mean_matches_per_event": round(matched / total, 4),
        "validate_rules_per_s": round(validated / validate_s, 1),
        "compile_and_index_ms": round(build_s * 1000, 1),
        "rules_rss_mb": round(rss_rules, 1),
        "rules_rss_growth_mb": round(rss_rules - rss_before, 1),
        "peak_rss_mb": round(peak, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.matching")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--json", action="store_true", help="measure in this process; one JSON line")
    args = parser.parse_args()
    if args.json:
        print(json.dumps(measure(args.quick)))
        return
    figures = run(args.quick)
    print(json.dumps(figures, indent=2))
    print(f"matching: {figures['match_events_per_s']:,.0f} events/s against {figures['rules']:,.0f} rules")


if __name__ == "__main__":
    main()
