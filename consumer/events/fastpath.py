"""The fast path of event decoding: msgspec parses and type-checks a record in C.

It only ever accepts: a record it cannot prove valid gives None, and the caller runs the reference
path (:func:`consumer.events.codec.build_event`, pydantic), which returns the event or raises the
error of the DLQ. So errors are the reference path's by construction, and an event of the fast path
equals the reference path's (same field values, types and ``model_fields_set``): every constraint of
:class:`~consumer.events.model.Event` is checked here as strictly or more strictly, and the timestamp
goes through pydantic's own datetime validator. ``tests/test_decoder_equivalence.py`` proves it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import compress
from operator import is_
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType
from pydantic import TypeAdapter, ValidationError

from consumer.events.model import MAX_DATA_ENTRIES, MAX_FIELD_CHARS, Event
from consumer.events.triggers import CALL_LOGIC_TRIGGERS, LMS_TRIGGERS, Platform

_Text = Annotated[str, Meta(max_length=MAX_FIELD_CHARS)]
#: ``(platform, trigger, product_id, campaign_id) -> bool``: whether a rule may match such an event.
ScopeTest = Callable[[Platform, str, str | None, str | None], bool]
_Optional = _Text | UnsetType | None


class WireEvent(Struct, forbid_unknown_fields=True, kw_only=True):
    """The wire fields of an event, as the reference model constrains them (UNSET: absent).
    ``platform`` is not a wire field (a record with one is left to the reference path): it is here so
    that :func:`msgspec.structs.asdict` gives the fields in the model's order."""

    platform: Any = UNSET
    event_id: Annotated[str, Meta(min_length=1, max_length=min(256, MAX_FIELD_CHARS))]
    trigger: Annotated[str, Meta(min_length=1, max_length=64)]
    occurred_at: Any  # pydantic's datetime validator decides (ISO strings, timestamps, datetimes)
    product_id: _Optional = UNSET
    campaign_id: _Optional = UNSET
    lead_id: _Optional = UNSET
    publisher_id: _Optional = UNSET
    channel_id: _Optional = UNSET
    source_id: _Optional = UNSET
    buyer_id: _Optional = UNSET
    pingtree_id: _Optional = UNSET
    call_tracking_pool_id: _Optional = UNSET
    method: Literal["POST", "FORM"] | UnsetType | None = UNSET
    tracking_strategy: Literal["direct_sold", "pingback"] | UnsetType | None = UNSET
    price: float | UnsetType | None = UNSET
    currency: Annotated[str, Meta(min_length=1, max_length=8)] | UnsetType | None = UNSET
    data: Annotated[dict[_Text, _Text], Meta(max_length=MAX_DATA_ENTRIES)] | UnsetType = UNSET


_TRIGGERS: dict[Platform, frozenset[str]] = {
    Platform.LMS: frozenset(LMS_TRIGGERS),
    Platform.CALL_LOGIC: frozenset(CALL_LOGIC_TRIGGERS),
}
#: The fields, in the model's order.
_KEYS: tuple[str, ...] = WireEvent.__struct_fields__
_ALL_FIELDS = frozenset(_KEYS)
_UNSET_ROW = (UNSET,) * len(_KEYS)
#: The defaults of the optional fields (``data``'s is a new dict per event).
_DEFAULTS: dict[str, Any] = dict.fromkeys(_KEYS)
_DEFAULTS["currency"] = "USD"
_JSON = msgspec.json.Decoder(WireEvent)
_validate_datetime = TypeAdapter(datetime).validator.validate_python
_new_event = Event.__new__
_setattr = object.__setattr__
_isfinite = math.isfinite
_PLAIN = (str, float)
_astuple = msgspec.structs.astuple
_asdict = msgspec.structs.asdict
_LMS = Platform.LMS


def decode_json(platform: Platform, value: bytes) -> Event | None:
    """The event of a JSON record value, or None: the reference path decides."""
    try:
        wire = _JSON.decode(value)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return None
    return from_wire(platform, wire, exact=True)


def from_record(platform: Platform, record: dict[str, Any]) -> Event | None:
    """The event of a decoded record (Avro, a retry record), or None: the reference path decides."""
    try:
        wire = msgspec.convert(record, WireEvent)
    except (msgspec.ValidationError, RecursionError):
        return None
    return from_wire(platform, wire, exact=False)


def decode_json_scoped(platform: Platform, value: bytes, in_scope: ScopeTest) -> Event | str | None:
    """As :func:`decode_json`, except that a valid event for which ``in_scope(platform, trigger,
    product_id, campaign_id)`` is false comes back as its trigger alone, the event not built: the
    record is checked in full first, so only an event the reference path would accept is cut short."""
    try:
        wire = _JSON.decode(value)
    except (msgspec.DecodeError, RecursionError):
        return None
    occurred_at = _checked(platform, wire, exact=True)
    if occurred_at is None:
        return None
    product_id, campaign_id = wire.product_id, wire.campaign_id
    if not in_scope(
        platform,
        wire.trigger,
        None if product_id is UNSET else product_id,
        None if campaign_id is UNSET else campaign_id,
    ):
        return wire.trigger
    return _event(platform, wire, occurred_at)


def from_wire(platform: Platform, wire: WireEvent, *, exact: bool) -> Event | None:
    """The event of checked wire fields, or None. ``exact``: every str is a plain ``str`` (JSON);
    else str subclasses (records built in Python) are left to the reference path."""
    occurred_at = _checked(platform, wire, exact=exact)
    return None if occurred_at is None else _event(platform, wire, occurred_at)


def _checked(platform: Platform, wire: WireEvent, *, exact: bool) -> datetime | None:
    """The event's timestamp when the wire fields make a valid event, else None (the reference path
    decides)."""
    if wire.trigger not in _TRIGGERS[platform] or wire.platform is not UNSET:
        return None
    if platform is _LMS and wire.call_tracking_pool_id.__class__ is str:
        return None
    price = wire.price
    if price.__class__ is float and not _isfinite(price):
        return None
    if not exact and not _plain(wire):
        return None
    try:
        occurred_at: datetime = _validate_datetime(wire.occurred_at)
    except (ValidationError, RecursionError):
        return None
    if occurred_at.tzinfo is None:
        occurred_at = occurred_at.replace(tzinfo=UTC)
    return occurred_at


def _event(platform: Platform, wire: WireEvent, occurred_at: datetime) -> Event:
    """The event of wire fields that :func:`_checked` accepted, built without validating again."""
    values: dict[str, Any] = _asdict(wire)  # every field, in the model's order
    values["platform"] = platform
    values["occurred_at"] = occurred_at
    fields_set = set(_ALL_FIELDS)
    absent = tuple(compress(_KEYS, map(is_, values.values(), _UNSET_ROW)))  # not on the record
    if absent:
        fields_set.difference_update(absent)
        for name in absent:
            values[name] = {} if name == "data" else _DEFAULTS[name]
    if values["currency"] is None:
        values["currency"] = "USD"
    event = _new_event(Event)
    _setattr(event, "__dict__", values)
    _setattr(event, "__pydantic_fields_set__", fields_set)
    _setattr(event, "__pydantic_extra__", None)
    _setattr(event, "__pydantic_private__", None)
    return event


def _plain(wire: WireEvent) -> bool:
    """Every text of the record is a plain ``str`` (not a subclass), every number a ``float``."""
    for value in _astuple(wire)[4:]:
        if value is None or value is UNSET or value.__class__ in _PLAIN:
            continue
        if value.__class__ is not dict:
            return False
        for key, text in value.items():
            if key.__class__ is not str or text.__class__ is not str:
                return False
    return wire.event_id.__class__ is str and wire.trigger.__class__ is str
