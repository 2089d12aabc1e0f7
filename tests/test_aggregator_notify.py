"""Alert emails: their text, their recipients, and retries that end in a count, never an exception."""

from __future__ import annotations

from email.message import EmailMessage

from consumer.aggregator.config import WarningConfig, split_emails
from consumer.aggregator.notify import AlertMailer, RetryPolicy, body, build_message, subject
from consumer.aggregator.smtp import alert_sender
from consumer.aggregator.state import AlertDecision
from consumer.aggregator.thresholds import Thresholds
from consumer.aggregator.windows import Timeframe
from consumer.mail import is_transient
from consumer.observability.metrics import ALERT_SEND_FAILURES
from consumer.outcomes.model import AlertKind
from consumer.settings import Settings
from tests.support.smtp import SMTPServerFactory


def _decision(kind: AlertKind = AlertKind.FIRED) -> AlertDecision:
    config = WarningConfig(
        "r-1",
        Timeframe.H3,
        Thresholds(percent=10, count=100),
        frequency_minutes=45,
        users=("u-1", "u-2", "u-9"),
        emails=split_emails("ops@example.com, Owner@Example.com ,"),
        rule_name="High-value sales",
    )
    return AlertDecision(
        kind=kind,
        config=config,
        at_ms=1_800_000_000_000,
        window_start_ms=1_800_000_000_000 - 3 * 3600_000,
        window_end_ms=1_800_000_020_000,
        events=40,
        warnings=12,
        reason="12 warnings are 30.0% of 40 events, over 10%",
        top_errors=(("550 mailbox unavailable", 9), ("timeout", 3)),
    )


def test_the_alert_names_everything_needed_to_investigate() -> None:
    decision = _decision()
    assert subject(decision) == (
        "[eventmail] Warning alert: rule High-value sales (r-1): 12 warnings in 3h (30.0% of 40 events)"
    )
    text = body(decision)
    for expected in [
        "Rule:        High-value sales (r-1)",
        "Timeframe:   3h (2027-01-15 05:00:00 UTC to 2027-01-15 08:00:20 UTC)",
        "Events:      40 (sent + failed)",
        "Warnings:    12 (failed + config_error)",
        "Share:       30.0% of events",
        "Alert when:  more than 10% of events or more than 100 warnings",
        "       9 x 550 mailbox unavailable",
        "       3 x timeout",
        "  eventmail logs --rule r-1 --status failed --since 3h",
        "At most one alert per 45 minutes",
    ]:
        assert expected in text
    resolved = _decision(AlertKind.RESOLVED)
    assert subject(resolved).startswith("[eventmail] Resolved: rule High-value sales (r-1)")
    assert body(resolved).startswith("The rule is back under its warning thresholds.")


def test_recipients_are_the_emails_then_known_users_without_duplicates() -> None:
    config = _decision().config
    users = {"u-1": "owner@example.com", "u-2": "cfo@example.com"}
    assert config.recipients(users) == ["ops@example.com", "Owner@Example.com", "cfo@example.com"]
    assert config.unknown_users(users) == ["u-9"]
    message = build_message(_decision(), "alerts@eventmail.test", config.recipients(users))
    assert message["From"] == "alerts@eventmail.test"
    assert message["X-Eventmail-Rule"] == "r-1"
    assert message["Message-ID"].endswith("@eventmail.test>")


class FlakySender:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.closed = False

    async def send(self, message: EmailMessage, sender: str, recipients: list[str]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionRefusedError("connection refused")

    async def close(self) -> None:
        self.closed = True


async def test_a_send_failure_is_retried_and_counted_once_when_given_up() -> None:
    policy = RetryPolicy(attempts=3, base_seconds=0.001)
    before = ALERT_SEND_FAILURES._value.get()

    recovers = FlakySender(failures=2)
    assert await AlertMailer("a@x.test", recovers, policy).deliver(_decision(), ["ops@example.com"]) is True
    assert recovers.calls == 3
    assert ALERT_SEND_FAILURES._value.get() == before

    broken = FlakySender(failures=10)
    mailer = AlertMailer("a@x.test", broken, policy)
    assert await mailer.deliver(_decision(), ["ops@example.com"]) is False
    assert broken.calls == 3
    assert ALERT_SEND_FAILURES._value.get() == before + 1
    await mailer.close()
    assert broken.closed


async def test_no_recipients_or_no_connection_is_not_an_exception() -> None:
    assert await AlertMailer("a@x.test", FlakySender(0), RetryPolicy()).deliver(_decision(), []) is False
    before = ALERT_SEND_FAILURES._value.get()
    assert await AlertMailer("a@x.test", None, RetryPolicy()).deliver(_decision(), ["o@example.com"]) is False
    assert ALERT_SEND_FAILURES._value.get() == before + 1


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(attempts=5, base_seconds=0.5, max_seconds=1.5)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 1.5, 1.5]


def _esp_mailer(port: int) -> AlertMailer:
    settings = Settings(
        esp_connections={"alerts": {"host": "127.0.0.1", "port": port, "encryption": "none"}},
        alerts={"connection": "alerts", "sender": "alerts@eventmail.test"},
        smtp={"in_place_retries": 0, "retry_base_seconds": 0.01},
    )
    sender = alert_sender(settings)
    assert sender is not None
    return AlertMailer(
        settings.alerts.sender, sender, RetryPolicy(attempts=3, base_seconds=0.01), retryable=is_transient
    )


async def test_a_transient_refusal_is_retried_through_the_transport(
    smtp_server_factory: SMTPServerFactory,
) -> None:
    server = smtp_server_factory("flaky", fail_code=451, fail_times=1)
    mailer = _esp_mailer(server.port)
    try:
        assert await mailer.deliver(_decision(), ["ops@example.com"]) is True
    finally:
        await mailer.close()
    (received,) = server.messages
    assert received.mail_from == "alerts@eventmail.test"
    assert received.message["X-Eventmail-Alert"] == "fired"
    assert server.attempts == 2


async def test_a_permanent_refusal_is_not_retried(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory("reject")
    mailer = _esp_mailer(server.port)
    before = ALERT_SEND_FAILURES._value.get()
    try:
        assert await mailer.deliver(_decision(), ["ops@example.com"]) is False
    finally:
        await mailer.close()
    assert server.attempts == 1
    assert server.messages == []
    assert ALERT_SEND_FAILURES._value.get() == before + 1


def test_no_sender_without_the_alert_connection() -> None:
    assert alert_sender(Settings(alerts={"connection": "missing"})) is None
