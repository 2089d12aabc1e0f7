"""``eventmail logs`` reads the outcome topic: filters, time window, table and JSON lines."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from consumer.outcomes.codec import encode_outcome
from consumer.outcomes.model import Outcome, OutcomeStatus
from tests.clirun import run_cli
from tests.support.kafka import TopicFactory, produce


def _outcome(rule: str, status: OutcomeStatus, minutes_ago: float, **extra: object) -> Outcome:
    return Outcome(
        created=datetime.now(UTC) - timedelta(minutes=minutes_ago),
        event_id=f"ev-{rule}-{minutes_ago}",
        rule_id=rule,
        platform="lms",
        trigger="lead_sold",
        status=status,
        to=["Ops <ops@example.com>"],
        cc=["cc@example.com"],
        **{"subject": f"Lead sold ({rule})", **extra},  # type: ignore[arg-type]
    )


def test_logs_filters_and_formats(kafka_bootstrap: str, topic_factory: TopicFactory) -> None:
    topic = topic_factory("outcomes", partitions=2)
    outcomes = [
        _outcome("r-a", OutcomeStatus.SENT, 5),
        _outcome("r-a", OutcomeStatus.FAILED, 4, error="550 mailbox unavailable", smtp_code=550),
        _outcome("r-b", OutcomeStatus.SENT, 3),
    ]
    produce(kafka_bootstrap, topic, [(o.rule_id.encode(), encode_outcome(o)) for o in outcomes])
    env = {"EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap, "EVENTMAIL_TOPICS__OUTCOMES": topic}

    lines = run_cli(["logs", "--json"], env)
    assert lines.code == 0, lines.err
    parsed = [json.loads(line) for line in lines.out.splitlines()]
    assert [p["rule_id"] for p in parsed] == ["r-a", "r-a", "r-b"]  # oldest first
    assert parsed[1]["error"] == "550 mailbox unavailable"
    assert parsed[1]["smtp_code"] == 550

    failed = run_cli(["logs", "--json", "--status", "failed"], env)
    assert [json.loads(x)["status"] for x in failed.out.splitlines()] == ["failed"]

    only_b = run_cli(["logs", "--json", "--rule", "r-b"], env)
    assert [json.loads(x)["rule_id"] for x in only_b.out.splitlines()] == ["r-b"]

    table = run_cli(["logs", "--since", "1h"], {**env, "COLUMNS": "200"})
    assert table.code == 0
    assert "550 mailbox unavailable" in table.out
    assert "Subject: Lead sold (r-b)" in table.out
    assert "Cc: cc@example.com" in table.out


def test_logs_since_excludes_older_records(kafka_bootstrap: str, topic_factory: TopicFactory) -> None:
    topic = topic_factory("outcomes")
    produce(kafka_bootstrap, topic, [(b"r", encode_outcome(_outcome("r", OutcomeStatus.SENT, 1)))])
    env = {"EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap, "EVENTMAIL_TOPICS__OUTCOMES": topic}
    # The broker stamps records with the time they were produced, so "the last 0s" holds none.
    result = run_cli(["logs", "--json", "--since", "0s"], env)
    assert result.code == 0
    assert result.out == ""
    assert run_cli(["logs", "--json", "--since", "10m"], env).out.count("\n") == 1


def test_logs_usage_errors(kafka_bootstrap: str) -> None:
    bad = run_cli(["logs", "--since", "soon"])
    assert bad.code == 2
    assert "not a duration" in bad.err
    status = run_cli(["logs", "--status", "lost"])
    assert status.code == 2


def test_logs_on_a_missing_topic_is_one_clear_line(kafka_bootstrap: str) -> None:
    env = {
        "EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "EVENTMAIL_TOPICS__OUTCOMES": "no-such-topic-x",
    }
    result = run_cli(["logs"], env)
    assert result.code == 1
    assert result.err.strip() == "eventmail: topic no-such-topic-x does not exist"


def test_logs_print_outcome_text_as_text_not_markup(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory("outcomes")
    outcomes = [
        _outcome("r-m", OutcomeStatus.SENT, 2, subject="Order shipped [js-0073]"),
        _outcome(
            "r-m", OutcomeStatus.FAILED, 1, subject="[bold]loud[/bold] :smile:", error="bad field [/oops]"
        ),
    ]
    produce(kafka_bootstrap, topic, [(o.rule_id.encode(), encode_outcome(o)) for o in outcomes])
    env = {"EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap, "EVENTMAIL_TOPICS__OUTCOMES": topic}
    table = run_cli(["logs", "--since", "1h"], {**env, "COLUMNS": "250"})
    assert table.code == 0, table.err
    assert "Subject: Order shipped [js-0073]" in table.out
    assert "Subject: [bold]loud[/bold] :smile:" in table.out
    assert "bad field [/oops]" in table.out
