"""Twig-style renders off the event loop, in long-lived worker processes with a hard deadline and a
memory limit.

:class:`RenderService` is what the service renders mail with:

- plain templates (``use_twig: false``) are a regular-expression substitution: they render inline, as
  fast as :func:`consumer.mail.render.render`;
- Twig-style templates are sent to a worker process (``python -m consumer.mail.render_worker``) that
  renders them with the sandbox (:mod:`consumer.mail.sandbox`, whose limits are checked before values
  are built) and answers with the rendered mail or the error. The event loop only waits on a pipe, so
  every other mail, commit and heartbeat goes on meanwhile.

What the sandbox cannot stop in time (a C-level call that is slow, or memory the process takes past its
limit) the worker's bounds stop: a render that has not answered ``GRACE_SECONDS`` after its own time
limit is ended by killing the worker, and the worker runs under ``RLIMIT_AS`` of ``memory_bytes`` above
its size at start, so it fails with ``MemoryError`` (or dies) long before the service feels it. Either
way that rule gets a :class:`RenderError` naming the limit, and a fresh worker takes the next render.

Templates are rendered by one of two workers: ``trusted`` for templates that rendered quickly before
and never failed, ``probation`` for the others (new ones, and those that failed or ran slow). So a
hostile rule, whatever it does on every event, never makes the other rules' known templates wait: it
only shares a worker with templates that are not trusted yet.

A template that keeps failing the same way is held back: after ``HOLD_AFTER`` renders in a row that
ended in the same error (``HOLD_AFTER_EXPENSIVE`` when they cost the worker more than ``SLOW_SECONDS``
each: its time limit, its life), it is not rendered again for ``HOLD_SECONDS``; its rule's mail fails at
once with that error and a note saying so. Then one render is tried (a success ends the hold, a failure
starts another). So a hostile rule that fires on every event costs a worker a few renders, not one per
event, and the deliveries waiting for it cannot fill the pipeline's in-flight bound. (A template that
fails only for some events' data is rendered again as soon as one render of it ends differently.)

Frames on the pipes are a 4-byte big-endian length and UTF-8 JSON:

- request: ``{"subject", "body", "content_type", "values", "limits"}``;
- answer: ``{"rendered": [subject, text, html, empty_placeholders]}`` or ``{"error": message}``; the
  worker exits after an answer that says ``"restart": true`` (it ran out of memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import IO, Any

from consumer.events.model import Event
from consumer.mail.errors import RenderError
from consumer.mail.render import ContentType, Rendered, render, render_values, template_values
from consumer.mail.sandbox import DEFAULT_LIMITS, DataMap, RenderLimits

log = logging.getLogger(__name__)

#: Memory a worker may take above its size at start (``RLIMIT_AS``).
WORKER_MEMORY_BYTES = 256 * 1024 * 1024
#: Seconds past a render's own time limit before its worker is killed.
GRACE_SECONDS = 1.0
#: Seconds a worker may take to start.
START_SECONDS = 60.0
#: A Twig render slower than this is not trusted.
SLOW_SECONDS = 0.1
#: Templates remembered as trusted, and as failed.
MAX_REMEMBERED = 4096
#: Renders in a row ending in the same error after which a template is held back ...
HOLD_AFTER = 3
#: ... or as many that were also slower than SLOW_SECONDS ...
HOLD_AFTER_EXPENSIVE = 2
#: ... for this long.
HOLD_SECONDS = 60.0
_MEMORY_MESSAGE = "too much memory"
_NOT_STARTED = "template renderer could not start"


# -- the worker process --------------------------------------------------------------------------------
def _limit_memory(extra_bytes: int) -> None:
    import resource

    with open("/proc/self/status", encoding="ascii") as status:
        sizes = [line.split()[1] for line in status if line.startswith("VmSize:")]
    current = int(sizes[0]) * 1024 if sizes else 0
    limit = current + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _read_frame(stream: IO[bytes]) -> bytes | None:
    header = stream.read(4)
    if len(header) < 4:
        return None
    size = int.from_bytes(header, "big")
    payload = stream.read(size)
    return payload if len(payload) == size else None


def _write_frame(stream: IO[bytes], answer: dict[str, Any]) -> None:
    data = json.dumps(answer, ensure_ascii=False).encode()
    stream.write(len(data).to_bytes(4, "big") + data)
    stream.flush()


def _answer(payload: bytes) -> dict[str, Any]:
    try:
        request = json.loads(payload)
        values = dict(request["values"])
        values["data"] = DataMap(values.get("data") or {})
        rendered = render_values(
            values,
            subject=request["subject"],
            body=request["body"],
            use_twig=True,
            content_type=request["content_type"],
            limits=RenderLimits(**request["limits"]),
        )
    except RenderError as exc:
        return {"error": str(exc), "restart": _MEMORY_MESSAGE in str(exc)}
    except MemoryError:
        return {"error": f"template needs {_MEMORY_MESSAGE}", "restart": True}
    return {"rendered": [rendered.subject, rendered.text, rendered.html, list(rendered.empty_placeholders)]}


def serve(memory_bytes: int) -> int:
    """The worker's loop: one request, one answer, until the parent closes the pipe."""
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write to the answer pipe
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it (a Ctrl-C reaches the group)
    if memory_bytes > 0:
        _limit_memory(memory_bytes)
    _write_frame(answers, {"ready": os.getpid()})
    while (payload := _read_frame(requests)) is not None:
        answer = _answer(payload)
        _write_frame(answers, answer)
        if answer.get("restart"):
            return 0
    return 0


# -- the service side ----------------------------------------------------------------------------------
def _exit_description(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class _Worker:
    """One worker process, started on first use and again after it broke a limit."""

    def __init__(self, name: str, memory_bytes: int) -> None:
        self.name = name
        self.memory_bytes = memory_bytes
        self.lock = asyncio.Lock()
        self.process: asyncio.subprocess.Process | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.starts = 0
        #: Requests answered or ended (a figure for tests and logs).
        self.requests = 0

    async def _started(self) -> asyncio.subprocess.Process:
        loop = asyncio.get_running_loop()
        if self.process is not None and (self.loop is not loop or self.process.returncode is not None):
            self._kill_now()
        if self.process is None:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "consumer.mail.render_worker",
                str(self.memory_bytes),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            self.process, self.loop = process, loop
            self.starts += 1
            try:
                await asyncio.wait_for(self._read(process), START_SECONDS)
            except BaseException:
                await self.stop()
                raise
        return self.process

    @staticmethod
    async def _read(process: asyncio.subprocess.Process) -> dict[str, Any]:
        assert process.stdout is not None
        header = await process.stdout.readexactly(4)
        answer: dict[str, Any] = json.loads(await process.stdout.readexactly(int.from_bytes(header, "big")))
        return answer

    async def ask(
        self,
        payload: bytes,
        seconds: float,
        grace: float,
        admit: Callable[[], str | None] = lambda: None,
    ) -> tuple[dict[str, Any], float]:
        """The worker's answer to one request and the seconds it took; raises RenderError when the
        worker had to be stopped (deadline) or died (memory)."""
        async with self.lock:
            refusal = admit()  # asked once it is this request's turn (what came before may change it)
            if refusal is not None:
                raise RenderError(refusal)
            try:
                process = await self._started()
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                raise RenderError(f"{_NOT_STARTED}: {type(exc).__name__}") from None
            assert process.stdin is not None
            self.requests += 1
            started = time.monotonic()
            try:
                process.stdin.write(len(payload).to_bytes(4, "big") + payload)
                await process.stdin.drain()
                answer = await asyncio.wait_for(self._read(process), seconds + grace)
            except TimeoutError:
                await self.stop()
                raise RenderError(
                    f"template took longer than {seconds:g}s to render (its renderer was stopped)"
                ) from None
            except (asyncio.IncompleteReadError, ConnectionError):
                code = await process.wait()
                self.process = None
                log.warning("template renderer %s exited (%s)", self.name, _exit_description(code))
                raise RenderError(
                    f"template needs {_MEMORY_MESSAGE}: its renderer exited ({_exit_description(code)})"
                ) from None
            except BaseException:  # cancelled: the answer would be read by the next request
                self._kill_now()
                raise
            elapsed = time.monotonic() - started
            if answer.get("restart"):
                await self.stop()
            return answer, elapsed

    def _kill_now(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        self.process = None

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 2.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


class RenderService:
    """Renders rules' mail for the service: plain templates inline, Twig-style ones in workers."""

    def __init__(
        self,
        limits: RenderLimits = DEFAULT_LIMITS,
        memory_bytes: int = WORKER_MEMORY_BYTES,
        grace_seconds: float = GRACE_SECONDS,
    ) -> None:
        self.limits = limits
        self.grace_seconds = grace_seconds
        self.trusted = _Worker("trusted", memory_bytes)
        self.probation = _Worker("probation", memory_bytes)
        self._trusted: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._failed: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        #: template -> (renders in a row ending in the same error, that error, held back until (monotonic);
        #: 0.0: not held; a negative count: they were slow)
        self._failing: OrderedDict[tuple[str, str, str], tuple[int, str, float]] = OrderedDict()
        self._limits_json = dataclasses.asdict(limits)

    def pids(self) -> list[int]:
        """The worker processes running now."""
        workers = (self.trusted, self.probation)
        return [w.process.pid for w in workers if w.process and w.process.returncode is None]

    @staticmethod
    def _remember(keys: OrderedDict[tuple[str, str, str], None], key: tuple[str, str, str]) -> None:
        keys[key] = None
        keys.move_to_end(key)
        while len(keys) > MAX_REMEMBERED:
            keys.popitem(last=False)

    def _distrust(self, key: tuple[str, str, str]) -> None:
        self._trusted.pop(key, None)
        self._remember(self._failed, key)

    def _held(self, key: tuple[str, str, str]) -> str | None:
        """The error to fail a held-back template with, or None when it may render."""
        entry = self._failing.get(key)
        if entry is None or entry[2] == 0.0:
            return None
        count, error, until = entry
        now = time.monotonic()
        if now >= until:  # this render is the one try; the others wait for its result
            self._failing[key] = (count, error, now + HOLD_SECONDS)
            return None
        return f"{error} (so did its last {abs(count)} renders: not rendered again for {HOLD_SECONDS:g}s)"

    def _note_failure(self, key: tuple[str, str, str], error: str, elapsed: float) -> None:
        count, last, _ = self._failing.get(key, (0, "", 0.0))
        expensive = elapsed > SLOW_SECONDS
        same = last == error and (count < 0) == expensive
        count = (abs(count) + 1 if same else 1) * (-1 if expensive else 1)
        held = abs(count) >= (HOLD_AFTER_EXPENSIVE if expensive else HOLD_AFTER)
        self._failing[key] = (count, error, time.monotonic() + HOLD_SECONDS if held else 0.0)
        self._failing.move_to_end(key)
        while len(self._failing) > MAX_REMEMBERED:
            self._failing.popitem(last=False)

    async def render(
        self,
        event: Event,
        *,
        subject: str,
        body: str,
        use_twig: bool,
        content_type: ContentType | str = ContentType.TEXT,
        rule_id: str,
        rule_name: str | None = None,
    ) -> Rendered:
        """See :func:`consumer.mail.render.render`; raises :class:`RenderError`."""
        kind = str(content_type.value if isinstance(content_type, ContentType) else content_type)
        if not use_twig:
            return render(
                event,
                subject=subject,
                body=body,
                use_twig=False,
                content_type=kind,
                rule_id=rule_id,
                rule_name=rule_name,
                limits=self.limits,
            )
        values = template_values(event, rule_id, rule_name)
        request = {
            "subject": subject,
            "body": body,
            "content_type": kind,
            "values": values,
            "limits": self._limits_json,
        }
        payload = json.dumps(request, ensure_ascii=False).encode()
        key = (subject, body, kind)
        worker = self.trusted if key in self._trusted else self.probation
        held: list[str] = []

        def admit() -> str | None:
            refusal = self._held(key)
            if refusal is not None:
                held.append(refusal)
            return refusal

        started = time.monotonic()
        try:
            answer, elapsed = await worker.ask(payload, self.limits.max_seconds, self.grace_seconds, admit)
        except RenderError as exc:  # held back, stopped at the deadline, or its worker died
            if held:
                raise
            self._distrust(key)
            if not str(exc).startswith(_NOT_STARTED):
                self._note_failure(key, str(exc), time.monotonic() - started)
            raise
        if "error" in answer:
            self._distrust(key)
            self._note_failure(key, str(answer["error"]), elapsed)
            raise RenderError(str(answer["error"]))
        self._failing.pop(key, None)
        if elapsed > SLOW_SECONDS:
            self._distrust(key)
        elif key not in self._failed:
            self._remember(self._trusted, key)
        subject_text, text, html, empties = answer["rendered"]
        return Rendered(subject_text, text, html, tuple(empties))

    async def close(self) -> None:
        await self.trusted.stop()
        await self.probation.stop()


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]) if len(sys.argv) > 1 else WORKER_MEMORY_BYTES))
