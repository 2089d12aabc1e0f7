"""Schema Registry look-ups off the event loop.

A writer schema not yet cached is fetched in a thread of its own (at most :data:`MAX_FETCHES` at
once; daemon threads, so a hanging look-up never holds up the process's exit), with its own deadline,
so mail, outcomes and heartbeats never wait for the registry's HTTP. Concurrent records with the same
schema id share one fetch. While the registry is unavailable (5xx, timeouts, connection errors, our
credentials refused everywhere) the fetch is tried again with a growing delay and the record waits:
its partition's commit stays put, nothing goes to the DLQ. An answer that is about this schema id
alone (unknown id, 401/403/404 for it while the registry answers us otherwise, a schema that is not
Avro) is a :class:`CodecError`: the record goes to the DLQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

from consumer.events.codec import WriterSchemaLookup
from consumer.events.registry import RegistryUnavailableError

log = logging.getLogger(__name__)

#: Longest wait for one fetch (the registry client's own timeout and retries fit inside).
FETCH_TIMEOUT_SECONDS = 45.0
FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 30.0
#: The "registry unavailable" warning is logged at most once per this many seconds.
WARN_EVERY_SECONDS = 10.0
#: Look-ups running at once.
MAX_FETCHES = 2


class OffLoopSchemas:
    def __init__(
        self,
        lookup: WriterSchemaLookup,
        timeout: float = FETCH_TIMEOUT_SECONDS,
        first_retry: float = FIRST_RETRY_SECONDS,
        max_retry: float = MAX_RETRY_SECONDS,
    ) -> None:
        self._lookup = lookup
        self._timeout = timeout
        self._first_retry = first_retry
        self._max_retry = max_retry
        self._slots = asyncio.Semaphore(MAX_FETCHES)
        self._fetching: dict[int, asyncio.Future[Any]] = {}
        self._warned_at = 0.0
        self._held_back = 0

    async def get(self, schema_id: int) -> Any:
        """The parsed writer schema of ``schema_id``; waits out a registry outage, raises CodecError
        for an answer about this id."""
        delay = self._first_retry
        while True:
            try:
                return await self._fetch_once(schema_id)
            except RegistryUnavailableError as exc:
                self._warn(schema_id, str(exc), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_retry)

    async def _fetch_once(self, schema_id: int) -> Any:
        shared = self._fetching.get(schema_id)
        if shared is None:
            loop = asyncio.get_running_loop()
            shared = asyncio.ensure_future(self._call(loop, schema_id))
            self._fetching[schema_id] = shared
            shared.add_done_callback(lambda _f: self._fetching.pop(schema_id, None))
        return await asyncio.shield(shared)

    async def _call(self, loop: asyncio.AbstractEventLoop, schema_id: int) -> Any:
        async with self._slots:
            future: asyncio.Future[Any] = loop.create_future()

            def fetch() -> None:
                try:
                    schema = self._lookup(schema_id)
                except BaseException as exc:  # handed to the waiting record, whatever it is
                    _settle(loop, future, None, exc)
                else:
                    _settle(loop, future, schema, None)

            threading.Thread(target=fetch, name=f"schema-registry-{schema_id}", daemon=True).start()
            try:
                return await asyncio.wait_for(future, self._timeout)
            except TimeoutError:
                raise RegistryUnavailableError(
                    f"schema id {schema_id}: no answer from the registry within {self._timeout:.0f}s"
                ) from None

    def _warn(self, schema_id: int, error: str, delay: float) -> None:
        now = time.monotonic()
        if now - self._warned_at < WARN_EVERY_SECONDS:
            self._held_back += 1
            return
        log.warning(
            "schema registry unavailable; the record waits and is decoded when it answers",
            extra={
                "schema_id": schema_id,
                "error": error[:300],
                "next_attempt_seconds": delay,
                "held_back": self._held_back,
            },
        )
        self._warned_at, self._held_back = now, 0


def _settle(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, error: BaseException | None
) -> None:
    def settle() -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
        loop.call_soon_threadsafe(settle)
