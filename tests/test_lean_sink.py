"""The benchmarks' lean SMTP sink: it answers clients as the devtools sink does and logs the same
lines, so the benchmarks read either."""

from __future__ import annotations

import asyncio
import email.policy
import json
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import lean_sink
from consumer.devtools.smtp_sink import logged_headers, spawn_sink_process, stop_sink_process


class Sinks:
    """One lean sink and one devtools sink (profile fast), each logging to a file of its own."""

    def __init__(self, tmp: Path) -> None:
        self.lean_log, self.devtools_log = tmp / "lean.jsonl", tmp / "devtools.jsonl"
        self.stderr = (tmp / "lean.stderr").open("wb")
        self.lean, self.lean_port = lean_sink.spawn(self.lean_log, stderr=self.stderr)
        self.devtools, self.devtools_port = spawn_sink_process(profile="fast", log=self.devtools_log)

    def logs(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return read_log(self.lean_log), read_log(self.devtools_log)

    def close(self) -> None:
        lean_sink.stop(self.lean)
        stop_sink_process(self.devtools)
        self.stderr.close()


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def sinks(tmp_path: Path) -> Iterator[Sinks]:
    both = Sinks(tmp_path)
    try:
        yield both
    finally:
        both.close()


def message(subject: str | None, body: str, message_id: str | None = "<m@example.com>") -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "Sales <sales@example.com>"
    mail["To"] = "ops@example.com"
    if subject is not None:
        mail["Subject"] = subject
    if message_id is not None:
        mail["Message-ID"] = message_id
    mail.set_content(body)
    return mail


#: What the benchmarks send and more: folded and encoded subjects, 8-bit text, dot-stuffed lines,
#: a missing Message-ID and Subject, an empty body, several recipients.
MAILS: list[tuple[EmailMessage, list[str]]] = [
    (message("bench m-1", "Lead 1 sold.\n"), ["ops@example.com"]),
    (message("a subject long enough to be folded " + "x" * 80, "body\n"), ["ops@example.com"]),
    (message("Angebot für Müller", "Grüße\n"), ["ops@example.com"]),
    (message("dots", ".one dot\n..two dots\n.\nend\n"), ["ops@example.com"]),
    (message(None, "no subject\n", message_id=None), ["a@example.com", "b@example.com"]),
    (message("empty", ""), ["ops@example.com"]),
]


async def send_all(port: int) -> set[str]:
    """Send every mail of MAILS over one connection; the EHLO extensions the server advertised."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10)
    await client.connect()
    extensions = set(client.esmtp_extensions)
    for mail, recipients in MAILS:
        errors, reply = await client.send_message(mail, recipients=recipients)
        assert errors == {}
        assert reply.startswith("2.0.0"), reply
    assert (await client.noop()).code == 250
    await client.quit()
    return extensions


async def test_it_logs_what_the_devtools_sink_logs_and_advertises_the_same(sinks: Sinks) -> None:
    lean_extensions = await send_all(sinks.lean_port)
    devtools_extensions = await send_all(sinks.devtools_port)
    lean, devtools = sinks.logs()
    assert len(lean) == len(MAILS)
    for entry in lean + devtools:
        assert isinstance(entry.pop("ts"), float)
    assert lean == devtools
    assert lean_extensions == devtools_extensions
    assert lean[3]["size"] == len(MAILS[3][0].as_bytes(policy=email.policy.SMTP))  # dots unstuffed


async def exchange(port: int, chunks: list[bytes], replies: int) -> list[str]:
    """Write ``chunks`` one by one (each its own write) and read ``replies`` reply lines after the
    greeting."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        greeting = await asyncio.wait_for(reader.readline(), 10)
        assert greeting.startswith(b"220 ")
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        return [(await asyncio.wait_for(reader.readline(), 10)).decode().strip() for _ in range(replies)]
    finally:
        writer.close()


async def test_commands_out_of_order_are_refused_and_rset_forgets_the_transaction(sinks: Sinks) -> None:
    lines = await exchange(
        sinks.lean_port,
        [
            b"HELO client\r\nRCPT TO:<a@example.com>\r\nDATA\r\n",
            b"MAIL FROM:<s@example.com>\r\nRSET\r\nRCPT TO:<a@example.com>\r\n",
            b"WHAT\r\nQUIT\r\n",
        ],
        8,
    )
    assert [line[:3] for line in lines] == ["250", "503", "503", "250", "250", "503", "500", "221"]
    assert read_log(sinks.lean_log) == []


async def test_a_message_written_a_byte_at_a_time_is_received_whole(sinks: Sinks) -> None:
    data = b"Subject: split\r\nMessage-ID: <s@x>\r\n\r\n..dot\r\nlast\r\n.\r\n"
    commands = b"EHLO c\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n"
    # EHLO's lines (its name and each extension), MAIL, RCPT, then DATA's go-ahead, the mail's
    # acceptance and QUIT's reply
    ehlo = 1 + len(lean_sink.EHLO_LINES)
    lines = await exchange(sinks.lean_port, [commands] + [bytes([b]) for b in data] + [b"QUIT\r\n"], ehlo + 5)
    assert [line[:3] for line in lines[:ehlo]] == ["250"] * ehlo
    assert [line[:3] for line in lines[ehlo:]] == ["250", "250", "354", "250", "221"]
    (entry,) = read_log(sinks.lean_log)
    assert entry["subject"] == "split"
    assert entry["message_id"] == "<s@x>"
    assert entry["size"] == len(data) - len(b".\r\n") - 1  # the terminator and the stuffed dot


def test_it_stops_on_sigterm_with_a_summary(sinks: Sinks) -> None:
    asyncio.run(send_all(sinks.lean_port))
    assert lean_sink.stop(sinks.lean) == 0
    text = (sinks.lean_log.parent / "lean.stderr").read_text()
    assert f"{len(MAILS)} accepted, 1 connections" in text


_NAMES = st.sampled_from(["Subject", "subject", "SUBJECT", "Message-ID", "Message-Id", "X-Other", "To"])
_WORDS = st.sampled_from(
    [
        "bench",
        "m-1",
        "=?utf-8?q?M=C3=BCller?=",
        "=?utf-8?b?w7w=?=",
        "für",
        "<a@b>",
        "<a>",
        "<x.y@z.example>",
        "",
        " ",
    ]
)
_VALUES = st.lists(_WORDS, max_size=6).map(" ".join)


@st.composite
def header_blocks(draw: st.DrawFn) -> bytes:
    lines = []
    for name, value, fold in draw(st.lists(st.tuples(_NAMES, _VALUES, st.booleans()), max_size=6)):
        text = f"{name}: {value}"
        if fold and " " in value.strip():
            first, _, rest = value.strip().partition(" ")
            text = f"{name}: {first}\r\n {rest}"
        lines.append(text.encode())
    return b"\r\n".join(lines)


@settings(max_examples=400, deadline=None)
@given(header_blocks())
def test_headers_are_read_as_the_devtools_sink_reads_them(head: bytes) -> None:
    assert lean_sink.headers(head) == logged_headers(head + b"\r\n\r\n")


def test_the_cli_names_its_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.lean_sink", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert "--log" in result.stdout
    assert "--port" in result.stdout
