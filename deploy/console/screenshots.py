"""Screenshots of every console screen for docs/console.md (``make console-screenshots``).

Runs ``eventmail demo`` (local Kafka, SMTP sinks, the example rules, traffic, and the console with
``--local``) until its summary is written, drives Debian's chromium over each screen with Playwright,
saves ``docs/console/*.png`` and stops the demo. It also times the path of a new admin: from the
rules list through the Add Rule form (one invalid field first), the preview, to the saved rule.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "console"
SAMPLE = (ROOT / "config" / "rules" / "events" / "lead-sold.json").read_text()


def wait_for_console(output: Path, demo: subprocess.Popen[bytes], timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    log = output / "logs" / "console.log"
    while time.monotonic() < deadline:
        if demo.poll() is not None:
            raise SystemExit(f"the demo stopped (exit {demo.returncode}); see {output}/logs")
        if (output / "demo.env").exists() and log.exists() and "Uvicorn running on" in log.read_text():
            line = next(ln for ln in log.read_text().splitlines() if "Uvicorn running on" in ln)
            url = json.loads(line)["msg"].split("Uvicorn running on ")[1].split(" ")[0]
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as answer:  # noqa: S310 (local)
                if answer.status == 200:
                    return str(url).rstrip("/")
        time.sleep(0.5)
    raise SystemExit("the demo's console did not start")


def shoot(page: Page, name: str) -> None:
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)
    print(f"docs/console/{name}.png")


def new_rule(page: Page, base: str) -> float:
    """Add a rule as a new admin would; the seconds it took from the list to the saved rule."""
    began = time.monotonic()
    page.goto(f"{base}/rules")
    page.click("#add-rule")
    page.fill("input[name=id]", "r-console-demo")
    page.fill("input[name=name]", "Auto insurance sold (console)")
    page.locator("input[name=trigger][value=lead_sold]").first.check()
    page.fill("input[name=product_id]", "auto-insurance")
    page.fill("input[name=sender]", "Lead Desk <leads@example.com>")
    page.fill("input[name=recipients]", "sales team")  # not an address: the error appears next to it
    page.fill("input[name=subject]", "Lead {{ lead_id }} sold for {{ price }} {{ currency }}")
    page.fill("textarea[name=body]", "Buyer {{ buyer_id }} bought lead {{ lead_id }} ({{ data.state }}).")
    page.click("#save")
    shoot(page, "add-rule-error")
    page.fill("input[name=recipients]", "Sales <sales@example.com>")
    page.fill("textarea[name=sample_event]", SAMPLE)
    page.click("#preview")
    page.locator("#preview-result").wait_for()
    shoot(page, "add-rule-preview")
    page.click("#save")
    page.wait_for_url(f"{base}/rules/r-console-demo")
    return time.monotonic() - began


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    output = Path(tempfile.mkdtemp(prefix="eventmail-shots-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTMAIL_")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "consumer.cli.main", "demo", "--events", "120", "--output", str(output)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = wait_for_console(output, demo)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(30_000)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # until the traffic has produced outcomes
                page.goto(f"{base}/log?since=1h&live=0")
                if page.locator("#log tbody tr[data-status]").count() >= 20:
                    break
                time.sleep(1)
            shoot(page, "smtp-log")
            page.goto(f"{base}/rules")
            shoot(page, "rules")
            seconds = new_rule(page, base)
            shoot(page, "rule-details")
            for screen in ("alerts", "usage", "connections"):
                page.goto(f"{base}/{screen}")
                shoot(page, screen)
            browser.close()
        print(f"a new rule, from the list through an error and a preview to saved: {seconds:.1f} s of browser time")
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
        shutil.rmtree(output, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
