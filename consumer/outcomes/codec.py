"""Outcome and alert records to and from Avro (``schemas/outcome.avsc``, ``schemas/alert.avsc``)."""

from __future__ import annotations

from pydantic import ValidationError

from consumer.avro import AvroRecordCodec
from consumer.errors import CodecError, describe_validation
from consumer.outcomes import fastcodec
from consumer.outcomes.model import Alert, Outcome

_OUTCOME = AvroRecordCodec("outcome", older=("outcome.v1",))
_ALERT = AvroRecordCodec("alert")


def encode_outcome(outcome: Outcome) -> bytes:
    """The outcome's Avro body: written directly (:mod:`consumer.outcomes.fastcodec`), else by
    fastavro (:func:`encode_outcome_reference`); the same bytes either way."""
    data = fastcodec.encode(outcome)
    return data if data is not None else encode_outcome_reference(outcome)


def encode_outcome_reference(outcome: Outcome) -> bytes:
    """The outcome's Avro body as fastavro writes it: the reference of the direct writer."""
    return _OUTCOME.encode(outcome.model_dump(mode="python"))


def decode_outcome(value: bytes) -> Outcome:
    try:
        return Outcome.model_validate(_OUTCOME.decode(value))
    except ValidationError as exc:
        field, message = describe_validation(exc)
        raise CodecError(message, field=field or None) from None


def encode_alert(alert: Alert) -> bytes:
    return _ALERT.encode(alert.model_dump(mode="python"))


def decode_alert(value: bytes) -> Alert:
    try:
        return Alert.model_validate(_ALERT.decode(value))
    except ValidationError as exc:
        field, message = describe_validation(exc)
        raise CodecError(message, field=field or None) from None
