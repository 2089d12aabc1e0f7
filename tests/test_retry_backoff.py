"""Retries through the retry topic back off with the number of attempts, also while a circuit is open.

Unit side: the delays of a delivery that keeps failing grow with its attempts, so the default
deadline (an hour, first delay 5 s) holds about ten retries, never hundreds; a delay is never shorter
than an open circuit's remaining time. Service side (real broker, real SMTP server taken down): every
mail is retried a handful of times during the outage, each ``retrying`` outcome says when the next
attempt comes and it comes then, the attempt count grows by one per retry, and the final outcome
says the true count.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from consumer.outcomes.model import Outcome, OutcomeStatus, SourcePosition
from consumer.pipeline.retry import MAX_DELAY_SECONDS, next_delay, schedule
from tests.chaos_support import FAST, read_outcomes, wait_until
from tests.factories import make_event
from tests.pipeline_support import apply_rules, esp_env, publish, rule_doc
from tests.support.kafka import TopicFactory
from tests.support.service import Deployment, ServiceProcess
from tests.support.smtp import SMTPServerFactory

ORIGIN = SourcePosition(topic="lms", partition=0, offset=1)
NEXT_ATTEMPT = re.compile(r"next attempt in (\d+(?:\.\d+)?)s")


def _retries_until_deadline(deadline: float, base: float, not_before: float = 0.0) -> list[float]:
    """The delays of a delivery that fails at every attempt, as the pipeline schedules them."""
    event = make_event()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    first: datetime | None = None
    attempts = 0
    delays: list[float] = []
    while True:
        attempts += 1  # each hand-off follows at least one attempt (a refusal by an open circuit too)
        retry = schedule(
            event,
            "r",
            attempts,
            ORIGIN,
            "451",
            first,
            deadline,
            now=now,
            base_delay=base,
            not_before=not_before,
        )
        if retry is None:
            return delays
        delays.append((retry.due_at - now).total_seconds())
        first, now = retry.first_failed_at, retry.due_at


def test_the_delay_doubles_with_each_attempt_up_to_the_cap() -> None:
    for attempts in range(1, 12):
        step = min(MAX_DELAY_SECONDS, 5.0 * 2 ** (attempts - 1))
        for _ in range(50):
            assert step / 2 <= next_delay(attempts, base=5.0) <= step
    assert next_delay(10_000, base=5.0) <= MAX_DELAY_SECONDS  # no overflow for absurd counts


def test_about_ten_retries_over_the_default_deadline() -> None:
    for _ in range(30):
        delays = _retries_until_deadline(3600.0, 5.0)
        assert 8 <= len(delays) <= 16, delays
        assert delays[:6] == sorted(delays[:6])  # grows while below the cap (jitter never reverses it)
        assert sum(delays) <= 3600.0


def test_an_open_circuit_sets_the_shortest_delay() -> None:
    delays = _retries_until_deadline(600.0, 0.5, not_before=30.0)
    assert delays
    assert min(delays) >= 30.0
    assert len(delays) <= 20


@pytest.mark.timeout(240)
def test_an_outage_with_an_open_circuit_retries_each_mail_a_handful_of_times(
    kafka_bootstrap: str, topic_factory: TopicFactory, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    deployment = Deployment.create(kafka_bootstrap, topic_factory)
    server = smtp_server_factory("plain")
    deployment.extra_env.update(esp_env(deployment, {"default": server}))
    apply_rules(deployment, tmp_path, rule_doc("r-storm"))
    server.stop()  # down for the whole test: connections refused, the circuit opens
    deadline, base = 16.0, 0.5
    env = deployment.env(
        **FAST,
        EVENTMAIL_PIPELINE__RETRY_BASE_SECONDS=str(base),
        EVENTMAIL_PIPELINE__RETRY_DEADLINE_SECONDS=str(deadline),
        EVENTMAIL_SMTP__IN_PLACE_RETRIES="0",
        EVENTMAIL_SMTP__CIRCUIT_FAILURES="2",
        EVENTMAIL_SMTP__CIRCUIT_OPEN_SECONDS="1",
        EVENTMAIL_SMTP__CONNECT_TIMEOUT_SECONDS="1",
    )
    service = ServiceProcess("run", env, tmp_path).start()
    mails = 6
    try:
        service.wait_ready()
        publish(deployment, [make_event(lead_id=f"storm-{n}") for n in range(mails)])
        got: list[Outcome] = []

        def all_failed() -> bool:
            nonlocal got
            got = read_outcomes(deployment)
            return sum(o.status is OutcomeStatus.FAILED for o in got) >= mails

        wait_until(all_failed, 150, f"a final outcome for each of {mails} mails", running=[service])
        assert service.terminate() == 0
    finally:
        service.stop()
    by_event: dict[str, list[Outcome]] = {}
    for outcome in got:
        by_event.setdefault(outcome.event_id or "", []).append(outcome)
    assert len(by_event) == mails
    circuit_refusals = 0
    for event_id, chain in by_event.items():
        chain.sort(key=lambda o: o.attempts)
        retrying = [o for o in chain if o.status is OutcomeStatus.RETRYING]
        final = chain[-1]
        assert final.status is OutcomeStatus.FAILED, event_id
        assert chain[:-1] == retrying, event_id
        # backoff with the attempts: 0.25-0.5, 0.5-1, 1-2, 2-4, 4-8 ... s within a 16 s deadline
        assert 3 <= len(retrying) <= 7, [(o.attempts, o.error) for o in chain]
        # one attempt per delivery (no in-place retries): the count grows by one per retry
        assert [o.attempts for o in chain] == list(range(1, len(chain) + 1)), event_id
        assert final.error is not None
        assert final.error.startswith(f"gave up after {final.attempts} attempts")
        for this, following in zip(retrying, chain[1:], strict=True):
            stated = NEXT_ATTEMPT.search(this.error or "")
            assert stated is not None, this.error
            gap = (following.created - this.created).total_seconds()
            # the next attempt comes when the outcome says (plus the time the attempt itself takes)
            assert float(stated.group(1)) - 0.2 <= gap <= float(stated.group(1)) + 10.0, (this.error, gap)
            circuit_refusals += "circuit open" in (this.error or "")
        assert final.created - chain[0].created <= timedelta(seconds=deadline + 10)
    assert circuit_refusals > 0  # the open circuit's refusals were among the retries
