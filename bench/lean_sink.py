"""The benchmarks' fast SMTP server: accepts every mail at once and logs it, at a small fraction of
the CPU of :mod:`consumer.devtools.smtp_sink` (aiosmtpd), so the sink is not what bounds a mail
scenario on a 2-core machine.

The devtools sink costs about 1 ms of CPU per mail: raw aiosmtplib kept it 95-98 % of a core busy,
so ``raw_smtp_per_s`` measured the sink rather than the SMTP client, and at 500 mails/s the sink,
the broker and the service shared the machine's two cores with little headroom left. This one is an
``asyncio.Protocol`` on the service's event loop that answers the commands a mail client sends
(EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) and writes the devtools sink's log lines (``ts``,
``message_id``, ``mail_from``, ``rcpt_tos``, ``subject``, ``size``), so the benchmarks read either.
Its EHLO reply advertises what the devtools sink's does (SIZE, 8BITMIME, SMTPUTF8, PIPELINING,
HELP), and it reads pipelined commands (RFC 2920), so a client speaks to it exactly as to the
devtools sink. No TLS, no AUTH, no failures: it is an instrument.

``python -m bench.lean_sink --port 0 --log FILE`` prints the devtools sink's ready line and, on
SIGTERM, its summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, cast

from consumer.devtools.smtp_sink import READY_PREFIX, logged_headers, start_sink_command, stop_sink_process

HOSTNAME = "lean-sink.localhost"
#: The devtools sink's EHLO reply: aiosmtpd 1.4's defaults (``data_size_limit`` 32 MiB, SMTPUTF8 on)
#: and PIPELINING.
EHLO_LINES = ("SIZE 33554432", "8BITMIME", "SMTPUTF8", "PIPELINING", "HELP")
GREETING = f"220 {HOSTNAME} ESMTP lean sink\r\n".encode()
EHLO_REPLY = (
    f"250-{HOSTNAME}\r\n"
    + "".join(f"250-{line}\r\n" for line in EHLO_LINES[:-1])
    + f"250 {EHLO_LINES[-1]}\r\n"
).encode()
OK = b"250 OK\r\n"
QUEUED = b"250 2.0.0 OK: queued\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
BYE = b"221 Bye\r\n"
NO_SENDER = b"503 Error: need MAIL command\r\n"
NO_RECIPIENT = b"503 Error: need RCPT command\r\n"
UNKNOWN = b"500 Error: command not recognized\r\n"
END_OF_DATA = b"\r\n.\r\n"


def headers(head: bytes) -> tuple[str | None, str | None]:
    """``(Message-ID, Subject)`` of a message's header block as the devtools sink logs them
    (:func:`~consumer.devtools.smtp_sink.logged_headers`). Plain one-line ASCII values are read
    directly; anything else (folded, encoded words, 8-bit) goes through that function."""
    found: dict[bytes, str] = {}
    lines = head.split(b"\r\n")
    for n, line in enumerate(lines):
        name, colon, value = line.partition(b":")
        key = name.lower()
        if not colon or key not in (b"message-id", b"subject") or key in found:
            continue
        folded = n + 1 < len(lines) and lines[n + 1][:1] in (b" ", b"\t")
        if folded or b"=?" in value or not value.isascii() or (key == b"message-id" and not _plain_id(value)):
            return logged_headers(head + b"\r\n\r\n")
        text = value.decode("ascii").lstrip(" \t")
        found[key] = text.rstrip() if key == b"message-id" else text  # the devtools sink strips only the id
    return found.get(b"message-id"), found.get(b"subject")


_ID_SPECIALS = frozenset(b'<>@ \t()[]\\",;:')


def _plain_id(value: bytes) -> bool:
    """A Message-ID value the parser returns as it is: ``<left@right>`` between spaces, no specials."""
    text = value.strip()
    if text[:1] != b"<" or text[-1:] != b">":
        return False
    left, at, right = text[1:-1].partition(b"@")
    return bool(left and at and right) and not _ID_SPECIALS.intersection(left + right)


class Stats:
    def __init__(self) -> None:
        self.accepted = 0
        self.connections = 0


class Session(asyncio.Protocol):
    """One client connection: a line parser outside DATA, an end-of-data search inside it."""

    def __init__(self, log: IO[str] | None, stats: Stats) -> None:
        self.log = log
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.in_data = False
        self.mail_from: str | None = None
        self.rcpt_tos: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass of it
        self.stats.connections += 1
        self.transport.write(GREETING)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and not self.transport.is_closing():
            if self.in_data:
                # the terminating line may be the first one of the data: "DATA" then ".\r\n"
                found = (b"\r\n" + self.buffer).find(END_OF_DATA)
                if found < 0:
                    return
                content, self.buffer = self.buffer[: max(0, found)], self.buffer[found + 3 :]
                self.in_data = False
                self.accept(content.replace(b"\r\n..", b"\r\n.").removeprefix(b".."))
                continue
            newline = self.buffer.find(b"\r\n")
            if newline < 0:
                return
            line, self.buffer = self.buffer[:newline], self.buffer[newline + 2 :]
            self.transport.write(self.command(line))

    def command(self, line: bytes) -> bytes:
        verb = line[:4].upper()
        if verb == b"MAIL":
            self.mail_from = _address(line)
            self.rcpt_tos = []
            return OK
        if verb == b"RCPT":
            if self.mail_from is None:
                return NO_SENDER
            self.rcpt_tos.append(_address(line))
            return OK
        if verb == b"DATA":
            if not self.rcpt_tos:
                return NO_RECIPIENT
            self.in_data = True
            return GO_AHEAD
        if verb == b"EHLO":
            return EHLO_REPLY
        if verb == b"HELO":
            return f"250 {HOSTNAME}\r\n".encode()
        if verb in (b"RSET", b"NOOP"):
            if verb == b"RSET":
                self.mail_from, self.rcpt_tos = None, []
            return OK
        if verb == b"QUIT":
            assert self.transport is not None
            self.transport.write(BYE)
            self.transport.close()
            return b""
        return UNKNOWN

    def accept(self, content: bytes) -> None:
        assert self.transport is not None
        now = time.time()
        self.stats.accepted += 1
        if self.log is not None:
            message_id, subject = headers(content.partition(b"\r\n\r\n")[0])
            record = {
                "ts": now,
                "message_id": message_id,
                "mail_from": self.mail_from,
                "rcpt_tos": self.rcpt_tos,
                "subject": subject,
                "size": len(content),
            }
            self.log.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.log.flush()
        self.mail_from, self.rcpt_tos = None, []
        self.transport.write(QUEUED)


def _address(line: bytes) -> str:
    """The address of ``MAIL FROM:<a> ...`` or ``RCPT TO:<a> ...``, without the brackets."""
    path = line.partition(b":")[2].strip()
    path = path[1:].partition(b">")[0] if path.startswith(b"<") else path.partition(b" ")[0]
    return path.decode("utf-8", "replace")


async def serve(host: str, port: int, log_path: Path | None, ready: IO[str]) -> Stats:
    """Serve until SIGTERM or SIGINT, after printing the ready line to ``ready``."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stats = Stats()
    log = None if log_path is None else log_path.open("a", encoding="utf-8")
    try:
        server = await loop.create_server(lambda: Session(log, stats), host, port)
        address = server.sockets[0].getsockname()
        print(f"{READY_PREFIX}{address[0]}:{address[1]}", file=ready, flush=True)
        async with server:
            await stop.wait()
    finally:
        if log is not None:
            log.close()
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lean_sink", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port, named in the ready line")
    parser.add_argument("--log", type=Path, help="append a JSON line per accepted mail")
    args = parser.parse_args(argv)
    from bench.support import run_on_service_loop

    stats = run_on_service_loop(serve(args.host, args.port, args.log, sys.stdout))
    print(f"lean-sink: stopped; {stats.accepted} accepted, {stats.connections} connections", file=sys.stderr)
    return 0


def spawn(
    log: Path | None = None, ready_timeout: float = 15.0, stderr: int | IO[Any] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """The sink as a child process on a free port: the process and the port, once it is ready.
    Its stderr (the summary line) goes to ``stderr``, inherited by default. Stop it with
    :func:`stop` (SIGTERM)."""
    command = [sys.executable, "-m", "bench.lean_sink", "--port", "0"]
    if log is not None:
        command += ["--log", str(log)]
    return start_sink_command(command, ready_timeout=ready_timeout, stderr=stderr)


stop = stop_sink_process

if __name__ == "__main__":
    sys.exit(main())
