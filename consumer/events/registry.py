"""The Schema Registry side of the Confluent wire format.

:func:`registry_lookup` gives :class:`~consumer.events.codec.EventDecoder` its writer-schema lookup:
schema id -> the Avro schema registered under it, fetched once through Confluent's
``SchemaRegistryClient``, parsed with fastavro (schema references included) and kept in a bounded
cache. Every failure -- registry unreachable, unknown id, a schema that is not Avro or does not parse --
raises :class:`CodecError` naming the schema id and carrying the registry's own message; credentials
(``basic_auth``, or user info in the URL) never appear in it. When the registry itself is at fault
(unreachable, a timeout, 5xx, 408, 429, or refusing our credentials for every request) the error is
the subclass :class:`RegistryUnavailableError`, so a caller may tell a registry outage from a bad
record. Every other answer about the id (404, any other 4xx, and 401/403 for this id while the
registry answers our other requests) is the record's fault: a plain :class:`CodecError`.

:func:`register_event_schema` is the producers' side (demo, benchmarks, tests): it registers a shipped
event schema under a subject and returns its id. Subjects follow Confluent's TopicNameStrategy,
``<topic>-value`` (:func:`value_subject`).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any
from urllib.parse import unquote, urlsplit

import fastavro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from consumer.errors import CodecError, SettingsError
from consumer.events.codec import SCHEMA_NAMES, WriterSchemaLookup
from consumer.events.triggers import Platform
from consumer.schemas import raw_schema
from consumer.settings import SchemaRegistrySettings

#: Parsed writer schemas kept per lookup; ids beyond it evict the least recently used.
DEFAULT_CACHE_SIZE = 256
#: Nesting of schema references followed before giving up (a cycle, or an absurd chain).
MAX_REFERENCE_DEPTH = 16
#: Longest registry message quoted in an error.
MAX_MESSAGE_CHARS = 300

_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")


class RegistryUnavailableError(CodecError):
    """The registry could not answer (network, server error, credentials): not the record's fault."""


def value_subject(topic: str) -> str:
    """The subject of a topic's record values under TopicNameStrategy."""
    return f"{topic}-value"


def registry_client(settings: SchemaRegistrySettings) -> SchemaRegistryClient:
    """A client of the configured registry; fails fast rather than retrying for long.

    Settings the client refuses (a URL that is not http(s), basic auth without ``user:``) raise
    :class:`SettingsError`.
    """
    if settings.url is None:
        raise SettingsError("EVENTMAIL_SCHEMA_REGISTRY__URL: not set")
    config: dict[str, Any] = {
        "url": settings.url,
        "timeout": 10,
        "max.retries": 2,
        "retries.wait.ms": 200,
        "retries.max.wait.ms": 2000,
    }
    if settings.basic_auth is not None:
        config["basic.auth.user.info"] = settings.basic_auth.get_secret_value()
    try:
        return SchemaRegistryClient(config)
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"EVENTMAIL_SCHEMA_REGISTRY: {_redact(str(exc), _secrets(settings))}") from None


def registry_lookup(
    settings: SchemaRegistrySettings, cache_size: int = DEFAULT_CACHE_SIZE
) -> WriterSchemaLookup | None:
    """The writer-schema lookup of :class:`EventDecoder`, or None when no registry is configured."""
    if settings.url is None:
        return None
    return RegistryLookup(registry_client(settings), cache_size, _secrets(settings))


class RegistryLookup:
    """Schema id -> parsed Avro writer schema, through the registry, with a bounded LRU cache.

    Thread-safe. Failures are not cached: the next record with the same id asks the registry again.
    """

    def __init__(
        self,
        client: SchemaRegistryClient,
        cache_size: int = DEFAULT_CACHE_SIZE,
        secrets: tuple[str, ...] = (),
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._client = client
        self._cache_size = cache_size
        self._secrets = secrets
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, schema_id: int) -> Any | None:
        """The parsed schema of ``schema_id`` if it is cached, else None (never asks the registry)."""
        with self._lock:
            cached = self._cache.get(schema_id)
            if cached is not None:
                self._cache.move_to_end(schema_id)
            return cached

    def __call__(self, schema_id: int) -> Any:
        with self._lock:
            cached = self._cache.get(schema_id)
            if cached is not None:
                self._cache.move_to_end(schema_id)
                return cached
        parsed = self._fetch(schema_id)
        with self._lock:
            self._cache[schema_id] = parsed
            self._cache.move_to_end(schema_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return parsed

    def _fetch(self, schema_id: int) -> Any:
        try:
            schema = self._client.get_schema(schema_id)
        except Exception as exc:
            raise self._error(schema_id, "cannot fetch from the registry", exc) from None
        named: dict[str, Any] = {}
        self._parse_references(schema_id, schema, named, depth=0)
        return _parse_avro(schema_id, schema, named)

    def _parse_references(self, schema_id: int, schema: Any, named: dict[str, Any], depth: int) -> None:
        """Parse the named types a schema references (depth first) into ``named``."""
        for reference in schema.references or ():
            if depth >= MAX_REFERENCE_DEPTH:
                raise CodecError(
                    f"schema id {schema_id}: references nested deeper than {MAX_REFERENCE_DEPTH}"
                )
            if reference.name in named:
                continue
            try:
                registered = self._client.get_version(reference.subject, reference.version)
            except Exception as exc:
                what = f"cannot fetch reference {reference.name!r} ({reference.subject} v{reference.version})"
                raise self._error(schema_id, what, exc) from None
            self._parse_references(schema_id, registered.schema, named, depth + 1)
            _parse_avro(schema_id, registered.schema, named)

    def _error(self, schema_id: int, what: str, exc: Exception) -> CodecError:
        detail = _redact(str(exc) or type(exc).__name__, self._secrets)
        status = exc.http_status_code if isinstance(exc, SchemaRegistryError) else None
        if status in (401, 403):
            # Refused: our credentials for the whole registry (an outage of ours to fix), or this one
            # schema (the record's fault: a producer used a schema we may not read)? Ask the registry
            # something any client may read with our credentials.
            if self._answers_us():
                return CodecError(f"schema id {schema_id}: {what}: refused for this schema id: {detail}")
            return RegistryUnavailableError(
                f"schema id {schema_id}: {what}: the registry refuses our credentials: {detail}"
            )
        kind = RegistryUnavailableError if _registry_at_fault(status) else CodecError
        return kind(f"schema id {schema_id}: {what}: {detail}")

    def _answers_us(self) -> bool:
        """True when the registry answers a request every reader may make (``GET /schemas/types``)."""
        try:
            self._client.get_schema_types()
        except Exception:
            return False
        return True


def _registry_at_fault(status: int | None) -> bool:
    """True when the registry could not answer (no HTTP answer, 5xx, 408, 429); False when it answered
    that the request itself is wrong (unknown id, bad path, any other 4xx)."""
    if status is None or status < 0:
        return True
    return status >= 500 or status in (408, 429)


def _parse_avro(schema_id: int, schema: Any, named: dict[str, Any]) -> Any:
    schema_type = (schema.schema_type or "AVRO").upper()
    if schema_type != "AVRO":
        raise CodecError(f"schema id {schema_id}: a {schema_type} schema, not Avro")
    try:
        document = json.loads(schema.schema_str or "")
    except ValueError as exc:
        raise CodecError(f"schema id {schema_id}: the registry's schema is not JSON: {exc}") from None
    try:
        return fastavro.parse_schema(document, named_schemas=named)
    except Exception as exc:  # SchemaParseException, UnknownType, ValueError ...
        raise CodecError(f"schema id {schema_id}: not a valid Avro schema: {exc}") from None


def register_event_schema(client: SchemaRegistryClient, subject: str, platform: Platform | str) -> int:
    """Register the shipped schema of ``platform``'s events under ``subject``; returns its schema id.

    Registering the same schema again returns the same id.
    """
    document = json.dumps(raw_schema(SCHEMA_NAMES[Platform(platform)]))
    try:
        schema_id: int = client.register_schema(subject, Schema(document, "AVRO"))
    except Exception as exc:
        raise CodecError(
            f"cannot register the schema of subject {subject}: {_redact(str(exc), ())}"
        ) from None
    return schema_id


def _secrets(settings: SchemaRegistrySettings) -> tuple[str, ...]:
    """Every string that must not appear in an error: the basic-auth value, its password, URL user info."""
    found: list[str] = []
    if settings.basic_auth is not None:
        value = settings.basic_auth.get_secret_value()
        found.append(value)
        if ":" in value:
            found.append(value.split(":", 1)[1])
    if settings.url:
        for url in settings.url.split(","):
            parts = urlsplit(url.strip())
            if parts.password:
                found.extend([parts.password, unquote(parts.password)])
    return tuple(sorted({s for s in found if s}, key=len, reverse=True))


def _redact(message: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        message = message.replace(secret, "***")
    message = _URL_USERINFO.sub(r"\1***@", message)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    return message
