"""Structured logs: JSON lines with the context fields, and repeated warnings held back."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.observability.logging import _STANDARD, JsonFormatter, RepeatFilter


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


def _as_before(line: str, created: float) -> str:
    """The line as the formatter wrote it before it kept the text of the second: ``json.dumps`` of
    the same fields, with the timestamp ``datetime`` makes of ``created``."""
    ts = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return json.dumps({**json.loads(line), "ts": ts}, default=str)


#: Moments near the edges where rounding to microseconds carries into the next second.
_FRACTIONS = st.sampled_from([0.0, 5e-7, 0.0004999, 0.0005, 0.9994999, 0.9995, 0.9999994, 0.9999995])
_EDGES = st.builds(lambda second, fraction: second + fraction, st.integers(0, 4_000_000_000), _FRACTIONS)


@settings(max_examples=3000, deadline=None)
@given(
    created=st.floats(0, 4e9) | _EDGES,
    extra=st.dictionaries(
        st.text("abcdefghij_", min_size=1, max_size=8).filter(lambda k: k not in _STANDARD and k[0] != "_"),
        st.none() | st.integers() | st.text() | st.floats(allow_nan=False) | st.datetimes(),
        max_size=4,
    ),
)
def test_a_line_is_the_text_it_always_was(created: float, extra: dict[str, object]) -> None:
    """Lines are byte for byte what ``json.dumps`` of the fields with an ISO timestamp gives, at any
    moment (the text of each second is kept for the next lines of that second)."""
    formatter = JsonFormatter()
    for moment in (created, created + 0.25, created):
        record = logging.LogRecord("consumer.x", logging.INFO, "", 0, "mail %s", ("sent",), None)
        record.__dict__.update(extra)
        record.created = moment
        line = formatter.format(record)
        assert line == _as_before(line, moment)
        fields = list(json.loads(line).items())
        assert fields[0][0] == "ts"
        assert fields[1:4] == [("level", "info"), ("logger", "consumer.x"), ("msg", "mail sent")]
        assert fields[4:] == list(json.loads(json.dumps(extra, default=str)).items())
