"""``eventmail console`` in a real browser (Debian's chromium driven by Playwright), on the real broker
and a real SMTP server: an editor adds a rule through the form (an invalid field first), previews and
saves it, ``eventmail run`` mails a matching event and the SMTP log shows it; a viewer cannot write;
proxy mode ignores the header from an untrusted address; user text is shown as text."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from consumer.console.auth import hash_password
from consumer.outcomes.codec import encode_alert, encode_outcome
from consumer.outcomes.model import Alert, AlertKind, Outcome, OutcomeStatus
from tests.chaos_support import wait_until
from tests.clirun import run_cli
from tests.support.kafka import TopicFactory, produce
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPTestServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
USERS = {
    "ada": {"password_hash": hash_password("ada-secret-1"), "role": "editor"},
    "vic": {"password_hash": hash_password("vic-secret-1"), "role": "viewer"},
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    opened = context.new_page()
    opened.set_default_timeout(20_000)
    try:
        yield opened
    finally:
        context.close()


@pytest.fixture
def deployment(kafka_bootstrap: str, topic_factory: TopicFactory, smtp_server: SMTPTestServer) -> Deployment:
    return Deployment.create(kafka_bootstrap, topic_factory, partitions=1).with_esp(
        {"default": {"host": "127.0.0.1", "port": smtp_server.port, "encryption": "none"}}
    )


def start_console(deployment: Deployment, tmp_path: Path, **settings: str) -> ServiceProcess:
    env = deployment.env(EVENTMAIL_CONSOLE__USERS=json.dumps(USERS), **settings)
    console = ServiceProcess("console", env, tmp_path, name="console")
    console.env["EVENTMAIL_CONSOLE__PORT"] = str(console.port)
    console.env["EVENTMAIL_CONSOLE__HOST"] = "127.0.0.1"
    console.start()
    console.wait_ready(timeout=90)
    return console


@pytest.fixture
def console(deployment: Deployment, tmp_path: Path) -> Iterator[ServiceProcess]:
    started = start_console(deployment, tmp_path, EVENTMAIL_CONSOLE__AUTH="password")
    try:
        yield started
    finally:
        started.stop()


def login(page: Page, console: ServiceProcess, user: str, password: str) -> None:
    page.goto(console.url("/rules"))
    assert page.url.startswith(console.url("/login"))
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(console.url("/rules"))


def fill_rule(page: Page, recipients: str) -> None:
    page.fill("input[name=id]", "r-console")
    page.fill("input[name=name]", "Sold from the console")
    page.select_option("select[name=platform]", "lms")
    page.locator("input[name=trigger][value=lead_sold]").first.check()
    page.select_option("select[name=level]", "product")
    page.fill("input[name=product_id]", "p-console")
    page.fill("input[name=sender]", "Sales <sales@example.com>")
    page.fill("input[name=recipients]", recipients)
    page.fill("input[name=subject]", "Lead {{ lead_id }} sold for {{ price }}")
    page.fill("textarea[name=body]", "Buyer {{ buyer_id }} bought {{ lead_id }}.")


def event(event_id: str, **changes: Any) -> bytes:
    values = {
        "event_id": event_id,
        "trigger": "lead_sold",
        "occurred_at": "2026-11-30T10:00:00Z",
        "product_id": "p-console",
        "lead_id": "L-77",
        "buyer_id": "buyer-9",
        "price": 99.5,
    }
    return json.dumps(values | changes).encode()


def test_editor_creates_previews_and_saves_a_rule_that_then_mails(
    page: Page,
    console: ServiceProcess,
    deployment: Deployment,
    smtp_server: SMTPTestServer,
    tmp_path: Path,
) -> None:
    login(page, console, "ada", "ada-secret-1")
    page.click("#add-rule")
    fill_rule(page, "not-an-address")
    page.click("#save")
    shown = [text.strip() for text in page.locator(".field-error[data-field=recipients]").all_inner_texts()]
    assert shown, "no error next to the recipients field"
    # The same text as `eventmail rules validate` for the same document.
    rule_file = tmp_path / "same.yaml"
    rule_file.write_text(
        json.dumps(
            {
                "id": "r-console",
                "platform": "lms",
                "level": "product",
                "product_id": "p-console",
                "triggers": ["lead_sold"],
                "action": {
                    "connection": {"type": "esp", "name": "default"},
                    "sender": {"email": "sales@example.com", "name": "Sales"},
                    "recipients": [{"email": "not-an-address"}],
                    "subject": "s",
                    "body": "b",
                },
            }
        )
    )
    cli = run_cli(["rules", "validate", str(rule_file)], deployment.env())
    prefix = f"{rule_file}: rule r-console: "
    cli_lines = [line.removeprefix(prefix) for line in cli.err.splitlines() if "action.recipients" in line]
    assert sorted(shown) == sorted(cli_lines)
    assert page.locator("input[name=recipients][aria-invalid=true]").count() == 1

    page.fill("input[name=recipients]", "Ops <ops@example.com>")
    page.fill("textarea[name=sample_event]", event("sample-1").decode())
    page.click("#preview")
    result = page.locator("#preview-result")
    assert "Lead L-77 sold for 99.5" in result.inner_text()
    assert "ops@example.com" in result.inner_text()
    page.click("#save")
    page.wait_for_url(console.url("/rules/r-console"))
    assert "by ada" in page.locator("#last-change").inner_text()
    assert "subject: Lead {{ lead_id }} sold for {{ price }}" in page.locator("#rule-yaml").inner_text()

    runner = ServiceProcess("run", deployment.env(), tmp_path, name="run").start()
    try:
        runner.wait_ready(timeout=90)
        produce(deployment.bootstrap, deployment.topics["lms"], [(b"e", event("ev-console-1"))])
        wait_until(lambda: len(smtp_server.messages) == 1, 60, "the mail of the console's rule", every=0.1)
        assert smtp_server.messages[0].message["Subject"] == "Lead L-77 sold for 99.5"
        page.goto(console.url("/log?since=1h&rule=r-console"))
        wait_until(
            lambda: _log_has(page, console, "Lead L-77 sold for 99.5"), 60, "the SMTP log row", every=0.1
        )
        row = page.locator("#log tbody tr[data-rule=r-console]").first
        assert row.get_attribute("data-status") == "sent"
        assert "ops@example.com" in row.inner_text()
    finally:
        runner.stop()


def _log_has(page: Page, console: ServiceProcess, text: str) -> bool:
    page.goto(console.url("/log?since=1h&rule=r-console&live=0"))
    return text in page.locator("#log").inner_text()


def test_a_viewer_sees_no_edit_controls_and_cannot_write(page: Page, console: ServiceProcess) -> None:
    login(page, console, "vic", "vic-secret-1")
    assert page.locator("#add-rule").count() == 0
    assert page.locator("form[action$='/enabled']").count() == 0
    page.goto(console.url("/rules/new"))
    assert page.locator("#save").count() == 0
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    answer = page.request.post(console.url("/rules/save"), form={"csrf": csrf or "", "id": "r-x"})
    assert answer.status == 403
    deleted = page.request.post(console.url("/rules/r-x/delete"), form={"csrf": csrf or ""})
    assert deleted.status == 403


def test_unauthenticated_csrf_and_headers(page: Page, console: ServiceProcess) -> None:
    anonymous = page.request.get(console.url("/log"), max_redirects=0)
    assert anonymous.status == 303
    assert anonymous.headers["location"].startswith("/login")
    assert page.request.post(console.url("/rules/save"), form={"id": "x"}).status == 401
    response = page.goto(console.url("/login"))
    assert response is not None
    headers = response.all_headers()
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    cookie = headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    login(page, console, "ada", "ada-secret-1")
    no_token = page.request.post(console.url("/rules/r-x/delete"), form={})
    assert no_token.status == 403
    wrong = page.request.post(console.url("/rules/r-x/delete"), form={"csrf": "forged"})
    assert wrong.status == 403


def test_failed_logins_are_throttled(page: Page, console: ServiceProcess) -> None:
    for _ in range(5):
        page.goto(console.url("/login"))
        page.fill("input[name=username]", "ada")
        page.fill("input[name=password]", "wrong")
        page.click("button[type=submit]")
        assert page.locator("#login-error").inner_text() == "unknown user or wrong password"
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", "ada-secret-1")  # right, but throttled now
    page.click("button[type=submit]")
    assert page.locator("#login-error").inner_text().startswith("too many failed logins")


def test_script_in_a_subject_is_shown_as_text(
    page: Page, console: ServiceProcess, deployment: Deployment
) -> None:
    hostile = "<script>alert('x')</script><img src=x onerror=alert(2)>"
    outcome = Outcome(
        event_id="ev-hostile",
        rule_id="r-hostile",
        status=OutcomeStatus.FAILED,
        to=["ops@example.com"],
        subject=hostile,
        error="550 <b>refused</b>",
    )
    produce(deployment.bootstrap, deployment.topics["outcomes"], [(b"r-hostile", encode_outcome(outcome))])
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    login(page, console, "ada", "ada-secret-1")
    page.goto(console.url("/log?since=1h&live=0"))
    row = page.locator("#log tbody tr[data-rule=r-hostile]")
    assert row.locator(".subject").inner_text() == hostile
    assert row.locator("script, img, b").count() == 0
    assert "550 <b>refused</b>" in row.inner_text()
    assert dialogs == []


def test_proxy_mode_trusts_the_header_only_from_trusted_addresses(
    page: Page, deployment: Deployment, tmp_path: Path
) -> None:
    untrusted = start_console(
        deployment,
        tmp_path,
        EVENTMAIL_CONSOLE__AUTH="proxy",
        EVENTMAIL_CONSOLE__TRUSTED_PROXIES='["10.0.0.0/8"]',
        EVENTMAIL_CONSOLE__EDITORS='["ada"]',
    )
    try:
        answer = page.request.get(untrusted.url("/rules"), headers={"X-Forwarded-User": "ada"})
        assert answer.status == 401
    finally:
        untrusted.stop()
    trusted = start_console(
        deployment,
        tmp_path,
        EVENTMAIL_CONSOLE__AUTH="proxy",
        EVENTMAIL_CONSOLE__EDITORS='["ada"]',
    )
    try:
        page.set_extra_http_headers({"X-Forwarded-User": "bob"})
        page.goto(trusted.url("/rules"))
        assert page.locator(".user").inner_text() == "bob (viewer)"
        assert page.locator("#add-rule").count() == 0
        page.set_extra_http_headers({"X-Forwarded-User": "ada"})
        page.goto(trusted.url("/rules"))
        assert page.locator(".user").inner_text() == "ada (editor)"
        assert page.locator("#add-rule").count() == 1
    finally:
        trusted.stop()


def test_console_refuses_to_start_without_an_auth_mode(deployment: Deployment) -> None:
    result = run_cli(["console"], deployment.env())
    assert result.code == 1
    assert (
        "EVENTMAIL_CONSOLE__AUTH is not set: set it to password or proxy, or run with --local" in result.err
    )
    empty = run_cli(["console"], deployment.env(EVENTMAIL_CONSOLE__AUTH="password"))
    assert empty.code == 1
    assert "EVENTMAIL_CONSOLE__USERS is empty" in empty.err


def test_enable_disable_delete_alerts_and_usage(
    page: Page, console: ServiceProcess, deployment: Deployment, tmp_path: Path
) -> None:
    rule_file = tmp_path / "rule.yaml"
    rule_file.write_text(
        json.dumps(
            {
                "id": "r-listed",
                "name": "Listed <b>rule</b>",
                "platform": "lms",
                "level": "campaign",
                "campaign_id": "c-9",
                "triggers": ["lead_sold"],
                "action": {
                    "connection": {"type": "esp", "name": "default"},
                    "sender": {"email": "sales@example.com"},
                    "recipients": [{"email": "ops@example.com"}],
                    "subject": "s",
                    "body": "b",
                },
            }
        )
    )
    applied = run_cli(["rules", "apply", "--author", "cli@desk", str(rule_file)], deployment.env())
    assert applied.code == 0, applied.err
    now = datetime.now(UTC)
    outcomes = [
        Outcome(created=now, event_id=f"e{i}", rule_id="r-listed", status=status, warnings_enabled=True)
        for i, status in enumerate([OutcomeStatus.SENT, OutcomeStatus.SENT, OutcomeStatus.FAILED])
    ]
    produce(
        deployment.bootstrap,
        deployment.topics["outcomes"],
        [(b"r-listed", encode_outcome(o)) for o in outcomes],
    )
    alert = Alert(
        rule_id="r-listed",
        kind=AlertKind.FIRED,
        timeframe="1h",
        window_start=now,
        window_end=now,
        events=3,
        warnings=1,
        percent=33.3,
        reason="1 warnings, over the limit of 0",
        recipients=["ops@example.com"],
    )
    produce(deployment.bootstrap, deployment.topics["alerts"], [(b"r-listed", encode_alert(alert))])

    login(page, console, "ada", "ada-secret-1")
    wait_until(
        lambda: _rules_row(page, console, "r-listed") is not None,
        60,
        "the applied rule in the list",
        every=0.1,
    )
    row = _rules_row(page, console, "r-listed")
    assert row is not None
    assert row["Name"] == "Listed <b>rule</b>"
    assert (row["Enabled"], row["Sent 24h"], row["Failed 24h"]) == ("yes", "2", "1")
    assert row["Product / campaign"] == "c-9"

    page.locator("tr[data-rule=r-listed] form[action$='/enabled'] button").click()
    page.wait_for_url(console.url("/rules"))
    assert page.locator("tr[data-rule=r-listed] td").nth(6).inner_text() == "no"
    page.goto(console.url("/rules/r-listed"))
    assert "by ada" in page.locator("#last-change").inner_text()
    assert "enabled: false" in page.locator("#rule-yaml").inner_text()
    download = page.request.get(console.url("/rules/r-listed/yaml"))
    assert download.headers["content-disposition"] == 'attachment; filename="r-listed.yaml"'
    assert "id: r-listed" in download.text()
    history = run_cli(["rules", "history", "r-listed", "--json"], deployment.env())
    assert [json.loads(line)["author"] for line in history.out.splitlines()] == ["cli@desk", "ada"]

    page.goto(console.url("/alerts"))
    assert "1 warnings, over the limit of 0" in page.locator("#alerts").inner_text()
    page.goto(console.url("/usage"))
    usage = page.locator("#usage").inner_text()
    assert "r-listed" in usage
    assert "$0.0003" in usage
    page.goto(console.url("/connections"))
    assert "127.0.0.1" in page.locator("#connections").inner_text()

    page.goto(console.url("/rules/r-listed/delete"))
    page.click("#confirm-delete")
    page.wait_for_url(console.url("/rules"))
    assert page.locator("tr[data-rule=r-listed]").count() == 0


def _rules_row(page: Page, console: ServiceProcess, rule_id: str) -> dict[str, str] | None:
    page.goto(console.url("/rules"))
    headers = [h.strip() for h in page.locator("#rules thead th").all_inner_texts()]
    row = page.locator(f"#rules tr[data-rule='{rule_id}']")
    if row.count() == 0:
        return None
    cells = [c.strip() for c in row.locator("td").all_inner_texts()]
    return dict(zip(headers, cells, strict=False))


def test_an_absent_broker_is_a_banner_not_a_stack_trace(page: Page, tmp_path: Path) -> None:
    dead = Deployment(
        "127.0.0.1:1",
        {name: f"t-{name}" for name in ("lms", "call_logic", "rules", "outcomes", "alerts", "dlq", "retry")},
        "g",
    )
    env = dead.env(EVENTMAIL_CONSOLE__AUTH="password", EVENTMAIL_CONSOLE__USERS=json.dumps(USERS))
    console = ServiceProcess("console", env, tmp_path, name="console-dead")
    console.env["EVENTMAIL_CONSOLE__PORT"] = str(console.port)
    console.env["EVENTMAIL_CONSOLE__HOST"] = "127.0.0.1"
    console.start()
    try:
        wait_until(lambda: _answers(console), 90, "the console's /healthz", every=0.1)
        assert console.get("/readyz")[0] == 503
        login(page, console, "ada", "ada-secret-1")
        banner = page.locator(".banner")
        assert "the rules topic t-rules is not read yet" in banner.inner_text()
        assert "Traceback" not in page.content()
    finally:
        console.stop()


def _answers(console: ServiceProcess) -> bool:
    try:
        return console.get("/healthz")[0] == 200
    except OSError:
        return False


def test_the_test_email_form_shows_each_step(
    page: Page, console: ServiceProcess, smtp_server: SMTPTestServer
) -> None:
    login(page, console, "ada", "ada-secret-1")
    page.goto(console.url("/connections"))
    page.select_option("select[name=connection]", "default")
    page.fill("input[name=sender]", "tester@example.com")
    page.fill("input[name=to]", "you@example.com")
    page.click("#send-test")
    assert page.locator("#test-outcome").inner_text().startswith("sent <")
    steps = page.locator("#test-result .steps").inner_text()
    assert f"127.0.0.1:{smtp_server.port}" in steps
    assert len(smtp_server.messages) == 1
    assert smtp_server.messages[0].rcpt_tos == ["you@example.com"]
    page.select_option("select[name=connection]", "manual")
    page.fill("input[name=host]", "127.0.0.1")
    page.fill("input[name=port]", "1")
    page.select_option("select[name=encryption]", "none")
    page.fill("input[name=to]", "you@example.com")
    page.click("#send-test")
    assert page.locator("#test-outcome").inner_text().startswith("smtp test failed: ")


def test_the_form_shows_only_the_fields_that_apply(page: Page, console: ServiceProcess) -> None:
    login(page, console, "ada", "ada-secret-1")
    page.goto(console.url("/rules/new"))
    pools = page.locator("input[name=pools_include]")
    call_logic_group = page.locator(".triggers > div[data-platform=call_logic]")
    assert not pools.is_visible()
    assert not call_logic_group.is_visible()
    page.select_option("select[name=platform]", "call_logic")
    assert pools.is_visible()
    assert call_logic_group.is_visible()
    assert not page.locator(".triggers > div[data-platform=lms]").is_visible()
    # The price range only for lead sold / campaign sold.
    page.locator("div[data-platform=call_logic] input[value=buyer_response]").check()
    assert page.locator("select[name=price_op] option[value=range]").is_disabled()
    page.locator("div[data-platform=call_logic] input[value=buyer_response]").uncheck()
    page.locator("div[data-platform=call_logic] input[value=lead_sold]").check()
    assert not page.locator("select[name=price_op] option[value=range]").is_disabled()
    page.select_option("select[name=price_op]", "range")
    assert page.locator("input[name=price_min]").is_visible()
    assert not page.locator("input[name=price_value]").is_visible()
    # Manual server fields only for a manual connection; campaign id only at campaign level.
    assert not page.locator("input[name=host]").is_visible()
    page.select_option("select[name=connection_type]", "manual")
    assert page.locator("input[name=host]").is_visible()
    assert not page.locator("input[name=campaign_id]").is_visible()
    page.select_option("select[name=level]", "campaign")
    assert page.locator("input[name=campaign_id]").is_visible()
    assert not page.locator("input[name=product_id]").is_visible()
