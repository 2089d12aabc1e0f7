"""Structured logs: one JSON object per line on stderr (or plain text for humans).

Context such as ``event_id`` and ``rule_id`` is passed with ``extra=`` and lands as top-level keys.
Never pass secrets (passwords, keys, full connection settings): nothing here can redact them.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


#: ``json.dumps(value, default=str)`` without making an encoder per line: the same text.
_ENCODE = json.JSONEncoder(default=str).encode


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        #: The last second formatted and its text up to the seconds (the service logs a line per mail).
        self._second: tuple[float, str] = (-1.0, "")

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _ENCODE(out)

    def _timestamp(self, created: float) -> str:
        """``datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")``, the text of
        the second made once per second: the microseconds rounded half to even as ``datetime``
        does, then cut to milliseconds."""
        fraction, whole = math.modf(created)
        micros = round(fraction * 1e6)
        if micros >= 1_000_000:
            whole, micros = whole + 1.0, micros - 1_000_000
        elif micros < 0:
            whole, micros = whole - 1.0, micros + 1_000_000
        second, text = self._second
        if whole != second:
            text = datetime.fromtimestamp(whole, UTC).isoformat(timespec="seconds")[:-6]
            self._second = (whole, text)
        return f"{text}.{micros // 1000:03d}+00:00"


class RepeatFilter(logging.Filter):
    """Holds back repeats of a warning or error: the first goes out, then at most one per ``interval``
    seconds, carrying ``repeated`` (how many were held back). A broker restart makes librdkafka report
    the same refused connection hundreds of times a second; the log should say it, not drown in it.
    Repeats are told apart by logger, message and the error text with its numbers left out."""

    def __init__(self, interval: float = 10.0, max_keys: int = 1024) -> None:
        super().__init__()
        self.interval = interval
        self.max_keys = max_keys
        self._seen: dict[tuple[str, str, str], list[float]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        detail = str(
            getattr(record, "kafka_error", "")
            or getattr(record, "error", "")
            or getattr(record, "kafka_log", "")
        )
        key = (record.name, str(record.msg), _DIGITS.sub("#", detail))
        now = time.monotonic()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.interval:
                entry[1] += 1
                return False
            if len(self._seen) >= self.max_keys:
                self._seen.clear()
            self._seen[key] = [now, 0]
        if entry is not None and entry[1]:
            record.repeated = int(entry[1])
        return True


_DIGITS = re.compile(r"\d+")

#: librdkafka's own log lines (``%3|...|FAIL|...`` on stderr by default) come here instead, levels
#: mapped by confluent-kafka (syslog 0-2 critical, 3 error, 4 warning, 5-6 info, 7 debug).
LIBRDKAFKA_LOGGER = "librdkafka"


class _LibrdkafkaFields(logging.Filter):
    """confluent-kafka logs ``"%s [%s] %s" % (facility, client, text)``: make them fields, so that a
    line reads ``{"logger": "librdkafka", "msg": "librdkafka FAIL", "client": ..., "kafka_log": ...}``
    and repeats of one failure are held back like other warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 3 and record.msg == "%s [%s] %s":
            facility, client, text = args
            record.msg, record.args = f"librdkafka {facility}", ()
            record.client = str(client)
            record.kafka_log = str(text)
        return True


def librdkafka_logger() -> logging.Logger:
    """The logger every Kafka client of eventmail is given (librdkafka's ``logger`` option). Services
    write it as structured lines through the root handler of :func:`configure_logging`; a CLI command,
    which reports a failure as one stderr line of its own, shows none of it (a NullHandler keeps
    Python's last-resort handler from printing them)."""
    logger = logging.getLogger(LIBRDKAFKA_LOGGER)
    if not logger.filters:
        logger.addFilter(_LibrdkafkaFields())
        logger.addHandler(logging.NullHandler())
    return logger


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RepeatFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiosmtplib").setLevel(max(logging.WARNING, root.level))
