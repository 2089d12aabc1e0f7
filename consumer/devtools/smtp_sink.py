"""An SMTP sink: a real SMTP server that accepts mail and keeps it locally, for the demo and benchmarks.

It answers like a mail relay -- immediately (profile ``fast``) or with the latency of a remote ESP
(profile ``esp``: 20 ms before each reply, 100 ms before the reply to the end of DATA) -- and can
fail a share of the messages (``--fail-rate`` with ``--fail-code``), drop the connection instead of
answering (``--drop-rate``) or refuse recipients (``--reject-rcpt``). It offers PIPELINING (RFC 2920)
as MTAs and ESPs do, unless ``--no-pipelining``. Every accepted message can be
written as a ``.eml`` file (``--maildir``) and as one JSON line in a log (``--log``), flushed per
line, so another process can count the mails received and their distinct Message-IDs::

    python -m consumer.devtools.smtp_sink --host 127.0.0.1 --port 2525 --profile esp --log sink.jsonl

It prints ``smtp-sink: listening on HOST:PORT`` once it accepts connections (``--port 0`` picks a
free port, the line tells which) and stops cleanly on SIGTERM or SIGINT.

From Python: :class:`SinkServer` runs the same server in-process (``async with`` in a running loop,
or ``with`` / :meth:`SinkServer.start` in a thread of its own), and :func:`spawn_sink_process` starts
it as a child process and returns once it is listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.parser
import email.policy
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Literal, TextIO

from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = [
    "PROFILES",
    "READY_PREFIX",
    "Profile",
    "SinkConfig",
    "SinkServer",
    "SinkStats",
    "build_parser",
    "ehlo_reply",
    "logged_headers",
    "main",
    "spawn_sink_process",
    "start_sink_command",
    "stop_sink_process",
]

#: The line printed to stdout once the sink accepts connections: ``smtp-sink: listening on HOST:PORT``.
READY_PREFIX = "smtp-sink: listening on "
DEFAULT_PORT = 2525
SERVER_HOSTNAME = "smtp-sink.localhost"


@dataclass(frozen=True)
class Profile:
    """How long the sink waits before its replies, in seconds."""

    reply_delay: float
    data_reply_delay: float


PROFILES: dict[str, Profile] = {
    "fast": Profile(reply_delay=0.0, data_reply_delay=0.0),
    "esp": Profile(reply_delay=0.020, data_reply_delay=0.100),
}

_REPLIES = {
    421: "421 4.3.2 Service not available, closing transmission channel",
    450: "450 4.2.1 Mailbox busy, try again later",
    451: "451 4.3.0 Temporary local problem, try again later",
    452: "452 4.3.1 Insufficient system storage",
    550: "550 5.7.1 Message rejected",
    552: "552 5.3.4 Message too big",
    554: "554 5.7.1 Transaction failed",
}


def failure_reply(code: int) -> str:
    """The reply line the sink sends for an injected failure with ``code``."""
    return _REPLIES.get(code, f"{code} {code // 100}.0.0 Failure injected by smtp-sink")


@dataclass(frozen=True)
class SinkConfig:
    """Everything the sink can be told; the CLI options map one to one onto these fields."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    profile: Literal["fast", "esp"] = "fast"
    maildir: Path | None = None
    log: Path | None = None
    #: Share of messages (0..1) answered with ``fail_code`` at the end of DATA.
    fail_rate: float = 0.0
    fail_code: int = 451
    #: Share of messages (0..1) whose connection is aborted at the end of DATA, without a reply.
    drop_rate: float = 0.0
    #: Recipients refused with ``550 5.1.1`` (case-insensitive).
    reject_rcpt: frozenset[str] = frozenset()
    #: Seed of the draw that decides failures and drops: message k (in arrival order) is dropped if
    #: the k-th ``random.Random(seed).random()`` is below ``drop_rate``, else failed if it is below
    #: ``drop_rate + fail_rate``.
    seed: int | None = None
    #: Offer PIPELINING (RFC 2920) in the EHLO reply, as MTAs and ESPs do (aiosmtpd reads pipelined
    #: commands either way; off, clients send one command at a time).
    pipelining: bool = True

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; one of {', '.join(PROFILES)}")
        for name in ("fail_rate", "drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")
        if self.fail_rate + self.drop_rate > 1.0:
            raise ValueError("fail_rate + drop_rate must not exceed 1")
        if not 400 <= self.fail_code <= 599:
            raise ValueError(f"fail_code must be a 4xx or 5xx SMTP code, not {self.fail_code}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port}")
        object.__setattr__(self, "reject_rcpt", frozenset(a.lower() for a in self.reject_rcpt))


@dataclass
class SinkStats:
    """Counters of one sink run (updated in the sink's event loop)."""

    connections: int = 0
    accepted: int = 0
    failed: int = 0
    dropped: int = 0
    refused_rcpts: int = 0
    message_ids: list[str] = field(default_factory=list)


class _SinkSMTP(SMTP):
    """aiosmtpd's SMTP session with reply latency; counts connections."""

    def __init__(self, sink: SinkServer, handler: _SinkHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sink = sink
        self.next_reply_delay: float | None = None
        self._in_multiline_reply = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        upgrade = self._original_transport is not None
        super().connection_made(transport)
        if not upgrade:
            self.sink._connected(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.sink._disconnected(self)
        super().connection_lost(error)

    async def push(self, status: str | bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # dropped on purpose, or the client left: nothing to answer
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        if not self._in_multiline_reply:  # the delay comes before a reply, not between its lines
            delay = self.sink.profile.reply_delay if self.next_reply_delay is None else self.next_reply_delay
            self.next_reply_delay = None
            if delay > 0:
                await asyncio.sleep(delay)
        self._in_multiline_reply = text[3:4] == "-"
        if isinstance(status, bytes):
            await super().push(status)
        else:
            await super().push(status)

    def abort(self) -> None:
        if isinstance(self.transport, asyncio.Transport):
            self.transport.abort()


class _SinkHandler:
    """aiosmtpd handler hooks: refuse listed recipients, fail / drop by draw, keep the rest."""

    def __init__(self, sink: SinkServer) -> None:
        self.sink = sink

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        return ehlo_reply(session, hostname, responses, self.sink.config.pipelining)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() in self.sink.config.reject_rcpt:
            self.sink.stats.refused_rcpts += 1
            return f"550 5.1.1 <{address}>: Recipient address rejected"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(server, _SinkSMTP)
        sink = self.sink
        server.next_reply_delay = sink.profile.data_reply_delay
        outcome = sink._draw()
        if outcome == "drop":
            sink.stats.dropped += 1
            server.abort()
            return "451 4.4.2 Connection dropped"  # never sent: the connection is gone
        if outcome == "fail":
            sink.stats.failed += 1
            return failure_reply(sink.config.fail_code)
        sink._keep(envelope)
        return "250 2.0.0 OK: queued"


def ehlo_reply(session: Session, hostname: str, responses: list[str], pipelining: bool) -> list[str]:
    """What an aiosmtpd ``handle_EHLO`` hook returns: aiosmtpd's reply (``responses``), PIPELINING
    offered in it when ``pipelining``; the session keeps the name the client greeted with (with such
    a hook aiosmtpd leaves that to it)."""
    session.host_name = hostname
    if pipelining:
        responses.insert(-1, "250-PIPELINING")  # before the last line, "250 HELP"
    return responses


_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.default)


def logged_headers(data: bytes) -> tuple[str | None, str | None]:
    """``(Message-ID, Subject)`` of a message as the sink logs them: ``email.policy.default``'s
    values, the id stripped; None for an absent header."""
    headers = _HEADER_PARSER.parsebytes(data)
    message_id, subject = headers["Message-ID"], headers["Subject"]
    return None if message_id is None else str(message_id).strip(), None if subject is None else str(subject)


class SinkServer:
    """The sink in this process.

    In a running event loop: ``async with SinkServer(config) as sink`` (or :meth:`open` / :meth:`close`).
    From synchronous code: ``with SinkServer(config) as sink`` (or :meth:`start` / :meth:`stop`), which
    runs the server's loop in a daemon thread. ``sink.port`` is the bound port (useful with ``port=0``).
    """

    def __init__(self, config: SinkConfig | None = None, **options: Any) -> None:
        self.config = replace(config or SinkConfig(), **options)
        self.profile = PROFILES[self.config.profile]
        self.host = self.config.host
        self.port = self.config.port
        self.stats = SinkStats()
        self._rng = random.Random(self.config.seed)  # not for security: a reproducible failure pattern
        self._sequence = 0
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[_SinkSMTP] = set()
        self._log: TextIO | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- in a running loop ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Listen on ``host:port``; returns once connections are accepted."""
        if self._server is not None:
            raise RuntimeError("the SMTP sink is already open")
        if self.config.maildir is not None:
            self.config.maildir.mkdir(parents=True, exist_ok=True)
        if self.config.log is not None:
            self.config.log.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.config.log.open("a", encoding="utf-8")
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(self._session, self.host, self.port)
        except BaseException:
            self._close_log()
            raise
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening, abort open sessions, close the log."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for session in list(self._sessions):
            session.abort()
        await asyncio.sleep(0)
        self._close_log()

    async def __aenter__(self) -> SinkServer:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- in a thread of its own ----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> SinkServer:
        """Run the sink in a daemon thread with its own event loop; returns once it listens."""
        if self._thread is not None:
            raise RuntimeError("the SMTP sink is already running")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        errors: list[BaseException] = []
        thread = threading.Thread(target=self._run, args=(loop, ready, errors), name="smtp-sink", daemon=True)
        thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"the SMTP sink did not start within {timeout} s")
        if errors:
            thread.join(timeout)
            raise errors[0]
        self._loop, self._thread = loop, thread
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the sink started by :meth:`start` (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(self.close(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._loop = self._thread = None

    def __enter__(self) -> SinkServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(
        self, loop: asyncio.AbstractEventLoop, ready: threading.Event, errors: list[BaseException]
    ) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.open())
        except BaseException as error:  # handed to start()
            errors.append(error)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    # -- sessions and messages -----------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _session(self) -> _SinkSMTP:
        return _SinkSMTP(
            self,
            _SinkHandler(self),
            hostname=SERVER_HOSTNAME,
            ident="eventmail smtp-sink",
            enable_SMTPUTF8=True,
            loop=asyncio.get_running_loop(),
        )

    def _connected(self, session: _SinkSMTP) -> None:
        self._sessions.add(session)
        self.stats.connections += 1

    def _disconnected(self, session: _SinkSMTP) -> None:
        self._sessions.discard(session)

    def _draw(self) -> Literal["accept", "fail", "drop"]:
        config = self.config
        if config.fail_rate == 0.0 and config.drop_rate == 0.0:
            return "accept"
        draw = self._rng.random()
        if draw < config.drop_rate:
            return "drop"
        if draw < config.drop_rate + config.fail_rate:
            return "fail"
        return "accept"

    def _keep(self, envelope: Envelope) -> None:
        data = envelope.original_content or b""
        message_id, subject = logged_headers(data)
        now = time.time()
        self._sequence += 1
        self.stats.accepted += 1
        if message_id is not None:
            self.stats.message_ids.append(message_id)
        if self.config.maildir is not None:
            name = f"{time.time_ns()}.{os.getpid()}.{self._sequence:08d}"
            partial = self.config.maildir / f".{name}.tmp"
            partial.write_bytes(data)
            partial.replace(self.config.maildir / f"{name}.eml")  # readers never see half a file
        if self._log is not None:
            record = {
                "ts": now,
                "message_id": message_id,
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "subject": subject,
                "size": len(data),
            }
            self._log.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._log.flush()

    def _close_log(self) -> None:
        log, self._log = self._log, None
        if log is not None:
            log.close()


# -- the process -------------------------------------------------------------------------------------


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {text}")
    return value


def _code(text: str) -> int:
    if not text.isdigit() or not 400 <= int(text) <= 599:
        raise argparse.ArgumentTypeError(f"not a 4xx or 5xx SMTP code: {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m consumer.devtools.smtp_sink",
        description="An SMTP server that accepts mail and keeps it locally (for the demo and benchmarks).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)"
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="fast",
        help="fast: answer at once; esp: 20 ms before each reply, 100 ms before the end-of-DATA reply",
    )
    parser.add_argument("--maildir", type=Path, help="write each accepted message here as a .eml file")
    parser.add_argument("--log", type=Path, help="append one JSON line per accepted message to this file")
    parser.add_argument("--fail-rate", type=_rate, default=0.0, help="share of messages failed (0..1)")
    parser.add_argument("--fail-code", type=_code, default=451, help="reply code of failed messages (451)")
    parser.add_argument(
        "--drop-rate", type=_rate, default=0.0, help="share of messages whose connection is dropped (0..1)"
    )
    parser.add_argument(
        "--reject-rcpt",
        action="append",
        default=[],
        metavar="ADDR",
        help="refuse this recipient with 550 (repeatable)",
    )
    parser.add_argument("--seed", type=int, help="seed of the fail/drop draw, for a reproducible pattern")
    parser.add_argument(
        "--no-pipelining",
        dest="pipelining",
        action="store_false",
        help="do not offer PIPELINING in the EHLO reply (clients then send one command at a time)",
    )
    return parser


async def serve(config: SinkConfig, ready: IO[str] | None = None) -> SinkStats:
    """Run the sink until SIGTERM or SIGINT; print the ready line to ``ready`` (stdout)."""
    out = sys.stdout if ready is None else ready
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    sink = SinkServer(config)
    async with sink:
        print(f"{READY_PREFIX}{sink.address}", file=out, flush=True)
        await stop.wait()
    return sink.stats


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = SinkConfig(
            host=args.host,
            port=args.port,
            profile=args.profile,
            maildir=args.maildir,
            log=args.log,
            fail_rate=args.fail_rate,
            fail_code=args.fail_code,
            drop_rate=args.drop_rate,
            reject_rcpt=frozenset(args.reject_rcpt),
            seed=args.seed,
            pipelining=args.pipelining,
        )
    except ValueError as error:
        parser.error(str(error))
    try:
        stats = asyncio.run(serve(config))
        for signum in (signal.SIGTERM, signal.SIGINT):  # a second signal does not cut the summary short
            signal.signal(signum, signal.SIG_IGN)
    except OSError as error:
        print(
            f"smtp-sink: cannot listen on {config.host}:{config.port}: {error.strerror or error}",
            file=sys.stderr,
        )
        return 1
    print(
        f"smtp-sink: stopped; {stats.accepted} accepted, {stats.failed} failed, {stats.dropped} dropped, "
        f"{stats.connections} connections",
        file=sys.stderr,
    )
    return 0


# -- a child process ---------------------------------------------------------------------------------


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def sink_command(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    profile: str = "fast",
    maildir: Path | str | None = None,
    log: Path | str | None = None,
    fail_rate: float = 0.0,
    fail_code: int = 451,
    drop_rate: float = 0.0,
    reject_rcpt: Iterable[str] = (),
    seed: int | None = None,
    pipelining: bool = True,
    python: str = sys.executable,
) -> list[str]:
    """The command line that runs the sink with these options."""
    command = [python, "-m", "consumer.devtools.smtp_sink", "--host", host, "--port", str(port)]
    command += ["--profile", profile]
    if maildir is not None:
        command += ["--maildir", str(maildir)]
    if log is not None:
        command += ["--log", str(log)]
    if fail_rate:
        command += ["--fail-rate", repr(fail_rate), "--fail-code", str(fail_code)]
    if drop_rate:
        command += ["--drop-rate", repr(drop_rate)]
    for address in reject_rcpt:
        command += ["--reject-rcpt", address]
    if seed is not None:
        command += ["--seed", str(seed)]
    if not pipelining:
        command.append("--no-pipelining")
    return command


def spawn_sink_process(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    profile: str = "fast",
    maildir: Path | str | None = None,
    log: Path | str | None = None,
    fail_rate: float = 0.0,
    fail_code: int = 451,
    drop_rate: float = 0.0,
    reject_rcpt: Iterable[str] = (),
    seed: int | None = None,
    pipelining: bool = True,
    python: str = sys.executable,
    ready_timeout: float = 15.0,
    stderr: int | IO[Any] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the sink as a child process; return it and its port once it prints the ready line.

    ``port=0`` (the default) lets the sink pick a free port. The child's stderr goes to ``stderr``
    (inherited by default). Stop it with :func:`stop_sink_process` (SIGTERM).
    """
    command = sink_command(
        host=host,
        port=port,
        profile=profile,
        maildir=maildir,
        log=log,
        fail_rate=fail_rate,
        fail_code=fail_code,
        drop_rate=drop_rate,
        reject_rcpt=reject_rcpt,
        seed=seed,
        pipelining=pipelining,
        python=python,
    )
    return start_sink_command(command, ready_timeout=ready_timeout, stderr=stderr, env=env)


def start_sink_command(
    command: list[str],
    *,
    ready_timeout: float = 15.0,
    stderr: int | IO[Any] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``command``, a sink that prints the ready line (this one, or another server speaking
    its protocol), with this package importable; return it and its port once it is ready."""
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [_package_root(), child_env.get("PYTHONPATH")]))
    child_env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=child_env, bufsize=0)
    try:
        listening = _wait_ready(process, ready_timeout)
    except BaseException:
        stop_sink_process(process)
        raise
    return process, int(listening.rpartition(":")[2])


def _wait_ready(process: subprocess.Popen[bytes], timeout: float) -> str:
    """Read a child's stdout until a line starting with ``READY_PREFIX``; the address it names."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    buffer = b""
    while True:
        newline = buffer.find(b"\n")
        while newline >= 0:
            line, buffer = buffer[:newline].decode("utf-8", "replace").strip(), buffer[newline + 1 :]
            if line.startswith(READY_PREFIX):
                return line[len(READY_PREFIX) :]
            newline = buffer.find(b"\n")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the SMTP sink did not report ready within {timeout} s")
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            code = process.wait(timeout=5)
            raise RuntimeError(f"the SMTP sink exited with code {code} before it was ready")
        buffer += chunk


def stop_sink_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM the sink and wait for it (SIGKILL after ``timeout``); its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
