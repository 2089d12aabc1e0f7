"""The hot path's cheaper forms say exactly what the plain ones say: the cached metric children are
the children ``labels()`` gives, and the per-mail log line is the record ``log.info`` makes."""

from __future__ import annotations

import io
import logging

import pytest

from consumer.observability.logging import JsonFormatter
from consumer.observability.metrics import MAILS_SENT, RULES_MATCHED, child
from consumer.pipeline import records


def test_a_cached_child_is_the_labelled_child() -> None:
    assert child(MAILS_SENT, "hot-path") is MAILS_SENT.labels(connection="hot-path")
    assert child(RULES_MATCHED, "lms", "lead_sold") is RULES_MATCHED.labels(
        platform="lms", trigger="lead_sold"
    )
    before = MAILS_SENT.labels(connection="hot-path")._value.get()
    child(MAILS_SENT, "hot-path").inc()
    assert MAILS_SENT.labels(connection="hot-path")._value.get() == before + 1


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_the_mail_sent_line_is_what_log_info_writes(monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logger = records.log
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "propagate", False)
    level = logger.level
    logger.setLevel(logging.INFO)
    monkeypatch.setattr(logging.time, "time", lambda: 1_700_000_000.123)  # type: ignore[attr-defined]
    extra = {"event_id": "e-1", "rule_id": "r-1", "attempts": 1, "message_id": "<m@x>", "code": 250}
    logger.info("mail sent", extra=extra)
    records._info("mail sent", dict(extra))
    first, second = stream.getvalue().splitlines()
    assert first == second
    assert "mail sent" in first
    logger.setLevel(logging.WARNING)
    try:
        records._info("mail sent", dict(extra))
    finally:
        logger.setLevel(level)
    assert len(stream.getvalue().splitlines()) == 2
