"""The outcome record's Avro body written directly (``schemas/outcome.avsc``), for the hot path.

:func:`encode` writes the bytes fastavro's ``schemaless_writer`` writes for the same outcome, without
its per-record work (a dictionary of the model, a writer set up per call): it was the largest single
cost of recording a mail. It covers outcomes whose values have the plain types the model gives
(``str``, ``int``, ``bool``, an aware ``datetime``, ints within Avro's ranges); for anything else it
returns None and :func:`consumer.outcomes.codec.encode_outcome` uses fastavro, which stays the
reference (a property test holds the two together). A change to the schema must be made here too:
the test fails until it is.
"""

from __future__ import annotations

from datetime import UTC, datetime

from consumer.outcomes.model import Outcome, OutcomeStatus

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STATUS = {status: index for index, status in enumerate(OutcomeStatus)}
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
#: The bytes of small longs (zig-zag varints), looked up instead of computed.
_SMALL = [bytes([(n << 1) if n >= 0 else ((-n << 1) - 1)]) for n in range(-64, 64)]


class _Unfit(Exception):
    """A value this writer does not cover: fastavro writes the record."""


def _long(n: int) -> bytes:
    if -64 <= n < 64:
        return _SMALL[n + 64]
    if not _LONG_MIN <= n <= _LONG_MAX:
        raise _Unfit
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _int(n: object) -> bytes:
    if type(n) is not int or not _INT_MIN <= n <= _INT_MAX:
        raise _Unfit
    return _long(n)


def _longv(n: object) -> bytes:
    if type(n) is not int:
        raise _Unfit
    return _long(n)


def _str(value: object) -> bytes:
    if type(value) is not str:
        raise _Unfit
    data = value.encode("utf-8")  # UnicodeEncodeError (a lone surrogate): fastavro decides
    return _long(len(data)) + data


_NULL = b"\x00"
_SOME = b"\x02"  # union branch 1


def _opt_str(value: object) -> bytes:
    return _NULL if value is None else _SOME + _str(value)


def _opt_int(value: object) -> bytes:
    return _NULL if value is None else _SOME + _int(value)


def _opt_long(value: object) -> bytes:
    return _NULL if value is None else _SOME + _longv(value)


def _strings(values: object) -> bytes:
    if type(values) is not list:
        raise _Unfit
    if not values:
        return _NULL
    return b"".join([_long(len(values)), *(_str(v) for v in values), _NULL])


def _millis(value: object) -> bytes:
    if type(value) is not datetime or value.tzinfo is None:
        raise _Unfit
    delta = value - _EPOCH
    return _long((delta.days * 86400 + delta.seconds) * 1000 + int(delta.microseconds / 1000))


def encode(outcome: Outcome) -> bytes | None:
    """The Avro body of ``outcome``; None when a value is outside what this writer covers."""
    try:
        status = _STATUS[outcome.status]
        source = outcome.source
        if source is None:
            where = _NULL
        else:
            where = b"".join([_SOME, _str(source.topic), _int(source.partition), _longv(source.offset)])
        warnings = outcome.warnings_enabled
        if type(warnings) is not bool:
            raise _Unfit
        return b"".join(
            [
                _millis(outcome.created),
                _opt_str(outcome.event_id),
                _str(outcome.rule_id),
                _opt_str(outcome.platform),
                _opt_str(outcome.trigger),
                _long(status),
                _strings(outcome.to),
                _strings(outcome.cc),
                _strings(outcome.bcc),
                _opt_str(outcome.subject),
                _opt_str(outcome.message_id),
                _opt_str(outcome.error),
                _opt_int(outcome.smtp_code),
                _int(outcome.attempts),
                _opt_long(outcome.latency_ms),
                where,
                _opt_str(outcome.connection),
                _strings(outcome.empty_placeholders),
                b"\x01" if warnings else b"\x00",
                _opt_long(outcome.rule_version),
            ]
        )
    except (_Unfit, KeyError, UnicodeError, OverflowError):
        return None
