"""Structured logs: JSON lines with the context fields, and repeated warnings held back."""

from __future__ import annotations

import io
import json
import logging

import pytest

from consumer.observability.logging import JsonFormatter, RepeatFilter


@pytest.fixture
def captured() -> tuple[logging.Logger, io.StringIO, RepeatFilter]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    repeats = RepeatFilter(interval=60.0)
    handler.addFilter(repeats)
    logger = logging.getLogger("test.repeats")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream, repeats


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_storm_of_one_warning_is_logged_once_then_with_its_count(
    captured: tuple[logging.Logger, io.StringIO, RepeatFilter],
) -> None:
    logger, stream, repeats = captured
    for ms in range(300):  # what librdkafka reports while the broker is down
        logger.warning("consumer error", extra={"kafka_error": f"refused (after {ms}ms in state CONNECT)"})
    logger.warning("consumer error", extra={"kafka_error": "Broker: Not coordinator"})
    assert [line["kafka_error"] for line in lines(stream)] == [
        "refused (after 0ms in state CONNECT)",
        "Broker: Not coordinator",
    ]
    repeats.interval = 0.0  # the interval is over: the next one goes out with the number held back
    logger.warning("consumer error", extra={"kafka_error": "refused (after 7ms in state CONNECT)"})
    assert lines(stream)[-1]["repeated"] == 299


def test_info_lines_are_never_held_back(captured: tuple[logging.Logger, io.StringIO, RepeatFilter]) -> None:
    logger, stream, _ = captured
    for _ in range(3):
        logger.info("partitions assigned", extra={"partitions": ["a[0]"]})
    assert len(lines(stream)) == 3
