"""A pool of persistent SMTP sessions to one server (one :class:`ConnectionParams`).

At most ``max_connections`` sessions exist at once (idle or in use); a caller waits for a free one.
The most recently used idle session is reused first, so a quiet period lets the others expire. A
session idle for longer than ``noop_after`` seconds is checked with NOOP before reuse, one idle for
longer than ``idle_timeout`` is closed (by a reaper task, or when met). A session that failed is
discarded by the caller (``release(..., reusable=False)``), never handed out again.
This module never sends mail itself and never opens more sessions than allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib import SMTP

QUIT_TIMEOUT_SECONDS = 2.0


@dataclass(eq=False)
class PooledSession:
    client: SMTP
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    uses: int = 0


class SessionPool:
    def __init__(
        self,
        opener: Callable[[], Awaitable[SMTP]],
        *,
        max_size: int,
        idle_timeout: float,
        noop_after: float,
        command_timeout: float,
    ) -> None:
        self._open = opener
        self.max_size = max_size
        self.idle_timeout = idle_timeout
        self.noop_after = noop_after
        self.command_timeout = command_timeout
        self._slots = asyncio.Semaphore(max_size)
        self._idle: list[PooledSession] = []  # most recently used last
        self._in_use = 0
        self._closed = False
        self._reaper: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def size(self) -> int:
        """Sessions open now (idle + in use)."""
        return len(self._idle) + self._in_use

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def acquire(self) -> PooledSession:
        """A live session; opens one when none is idle (errors of opening propagate)."""
        if self._closed:
            raise RuntimeError("the SMTP pool is closed")
        await self._slots.acquire()
        try:
            session = await self._reuse()
            if session is None:
                session = PooledSession(await self._open())
        except BaseException:
            self._slots.release()
            raise
        self._in_use += 1
        return session

    async def _reuse(self) -> PooledSession | None:
        while self._idle:
            session = self._idle.pop()
            idle_for = time.monotonic() - session.last_used
            if not session.client.is_connected or idle_for > self.idle_timeout:
                self._discard(session)
                continue
            if idle_for > self.noop_after and not await self._healthy(session):
                self._discard(session)
                continue
            return session
        return None

    async def _healthy(self, session: PooledSession) -> bool:
        try:
            response = await session.client.noop(timeout=self.command_timeout)
        except (aiosmtplib.SMTPException, OSError):
            return False
        return response.code == 250 and session.client.is_connected

    def release(self, session: PooledSession, *, reusable: bool) -> None:
        """Give a session back; a session that is not reusable (or no longer connected) is closed."""
        self._in_use -= 1
        try:
            if reusable and not self._closed and session.client.is_connected:
                session.last_used = time.monotonic()
                session.uses += 1
                self._idle.append(session)
                self._ensure_reaper()
            else:
                self._discard(session)
        finally:
            self._slots.release()

    def _discard(self, session: PooledSession) -> None:
        session.client.close()

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        interval = max(0.05, min(self.idle_timeout / 2, 30.0))
        while self._idle and not self._closed:
            await asyncio.sleep(interval)
            now = time.monotonic()
            expired = [s for s in self._idle if now - s.last_used > self.idle_timeout]
            for session in expired:
                self._idle.remove(session)
                self._quit_later(session)

    def _quit_later(self, session: PooledSession) -> None:
        task = asyncio.get_running_loop().create_task(_quit(session))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every idle session (politely, with QUIT) and stop handing out sessions."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(s) for s in idle), *self._closing, return_exceptions=True)


async def _quit(session: PooledSession) -> None:
    try:
        if session.client.is_connected:
            await session.client.quit(timeout=QUIT_TIMEOUT_SECONDS)
    except (aiosmtplib.SMTPException, OSError):
        pass
    finally:
        session.client.close()
