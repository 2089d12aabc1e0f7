"""The SMTP sink of the demo and benchmarks: as a process (CLI) and in-process (SinkServer)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from consumer.devtools.smtp_sink import (
    READY_PREFIX,
    SinkConfig,
    SinkServer,
    spawn_sink_process,
    stop_sink_process,
)

SENDER = "sales@example.com"


def make_message(subject: str, to: str = "ops@example.com") -> EmailMessage:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="eventmail.test")
    message.set_content(f"{subject}\n")
    return message


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class SinkProcess:
    def __init__(self, tmp_path: Path, **options: Any) -> None:
        self.stderr_path = tmp_path / "sink.stderr"
        self.stderr = self.stderr_path.open("wb")
        self.process, self.port = spawn_sink_process(stderr=self.stderr, **options)

    def stop(self, signum: signal.Signals | None = None) -> int:
        if signum is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(10)
        code = stop_sink_process(self.process)  # SIGTERM, unless it already exited
        self.stderr.close()
        return code

    @property
    def stderr_text(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def sink_process(tmp_path: Path) -> Iterator[Callable[..., SinkProcess]]:
    started: list[SinkProcess] = []

    def start(**options: Any) -> SinkProcess:
        sink = SinkProcess(tmp_path, **options)
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.stop()


async def test_process_keeps_eml_files_and_a_json_log(
    tmp_path: Path, sink_process: Callable[..., SinkProcess]
) -> None:
    maildir, log = tmp_path / "mail", tmp_path / "sink.jsonl"
    sink = sink_process(maildir=maildir, log=log)
    sent = [make_message(f"Lead {index} sold") for index in range(3)]
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=sink.port, timeout=5) as client:
        for message in sent[:2]:
            await client.send_message(message)
        await client.send_message(sent[2], recipients=["ops@example.com", "cfo@example.com"])

    records = read_log(log)  # written and flushed before the 250, so complete now
    assert [record["message_id"] for record in records] == [m["Message-ID"] for m in sent]
    assert [record["subject"] for record in records] == ["Lead 0 sold", "Lead 1 sold", "Lead 2 sold"]
    assert {record["mail_from"] for record in records} == {SENDER}
    assert [record["rcpt_tos"] for record in records] == [
        ["ops@example.com"],
        ["ops@example.com"],
        ["ops@example.com", "cfo@example.com"],
    ]
    assert all(isinstance(record["ts"], float) and record["size"] > 0 for record in records)

    files = sorted(maildir.glob("*.eml"))
    assert len(files) == 3
    parsed = [email.message_from_bytes(path.read_bytes(), policy=email.policy.default) for path in files]
    assert sorted(str(m["Message-ID"]) for m in parsed) == sorted(m["Message-ID"] for m in sent)
    assert not list(maildir.glob(".*.tmp"))

    assert sink.stop() == 0
    assert "3 accepted" in sink.stderr_text


async def test_fail_rate_is_reproducible_with_a_seed(
    tmp_path: Path, sink_process: Callable[..., SinkProcess]
) -> None:
    log = tmp_path / "sink.jsonl"
    sink = sink_process(log=log, fail_rate=0.3, fail_code=451, seed=7)
    draws = random.Random(7)
    expected = [451 if draws.random() < 0.3 else 250 for _ in range(20)]
    assert 451 in expected
    assert 250 in expected

    codes, accepted = [], []
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=sink.port, timeout=5) as client:
        for index in range(20):
            message = make_message(f"mail {index}")
            try:
                await client.send_message(message)
            except aiosmtplib.SMTPDataError as error:
                codes.append(error.code)
            else:
                codes.append(250)
                accepted.append(message["Message-ID"])

    assert codes == expected
    assert [record["message_id"] for record in read_log(log)] == accepted
    assert sink.stop() == 0


async def test_esp_profile_waits_before_the_data_reply(sink_process: Callable[..., SinkProcess]) -> None:
    sink = sink_process(profile="esp")
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=sink.port, timeout=5) as client:
        started = time.monotonic()
        await client.noop()
        assert time.monotonic() - started >= 0.020
        await client.mail(SENDER)
        await client.rcpt("ops@example.com")
        started = time.monotonic()
        response = await client.data(make_message("slow").as_bytes())
        assert time.monotonic() - started >= 0.100
        assert response.code == 250


@pytest.mark.parametrize("pipelining", [True, False])
async def test_pipelining_is_offered_unless_turned_off(
    sink_process: Callable[..., SinkProcess], pipelining: bool
) -> None:
    sink = sink_process(pipelining=pipelining)
    reader, writer = await asyncio.open_connection("127.0.0.1", sink.port)
    try:
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"220 ")
        writer.write(b"EHLO client.test\r\n")
        ehlo = [await asyncio.wait_for(reader.readline(), 5)]
        while ehlo[-1][3:4] == b"-":
            ehlo.append(await asyncio.wait_for(reader.readline(), 5))
        assert (b"250-PIPELINING\r\n" in ehlo) is pipelining
        assert b"250-8BITMIME\r\n" in ehlo
        # commands written together are answered one after the other either way
        writer.write(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRSET\r\n")
        replies = [await asyncio.wait_for(reader.readline(), 5) for _ in range(3)]
        assert [reply[:4] for reply in replies] == [b"250 "] * 3
    finally:
        writer.close()
        await writer.wait_closed()


async def test_sigint_stops_the_process_cleanly(sink_process: Callable[..., SinkProcess]) -> None:
    sink = sink_process()
    await aiosmtplib.send(make_message("one"), hostname="127.0.0.1", port=sink.port, timeout=5)
    assert sink.stop(signal.SIGINT) == 0
    assert "1 accepted" in sink.stderr_text


def test_ready_line_names_the_port(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "consumer.devtools.smtp_sink", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
    finally:
        process.terminate()
        assert process.wait(10) == 0
        assert process.stdout is not None
        process.stdout.close()
    assert line.startswith(READY_PREFIX + "127.0.0.1:")
    assert int(line.rpartition(":")[2]) > 0


def test_usage_errors_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "consumer.devtools.smtp_sink", "--fail-rate", "1.5"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--fail-rate: must be between 0 and 1" in result.stderr


async def test_in_process_sink_refuses_listed_recipients(tmp_path: Path) -> None:
    log = tmp_path / "sink.jsonl"
    async with SinkServer(SinkConfig(port=0, log=log, reject_rcpt=frozenset({"Bounce@Example.com"}))) as sink:
        errors, _ = await aiosmtplib.send(
            make_message("partly"),
            recipients=["ops@example.com", "bounce@example.com"],
            hostname=sink.host,
            port=sink.port,
            timeout=5,
        )
        assert errors["bounce@example.com"].code == 550
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await aiosmtplib.send(
                make_message("nobody"),
                hostname=sink.host,
                port=sink.port,
                timeout=5,
                recipients=["bounce@example.com"],
            )

    assert [record["rcpt_tos"] for record in read_log(log)] == [["ops@example.com"]]
    assert sink.stats.accepted == 1
    assert sink.stats.refused_rcpts == 2


async def test_drop_rate_aborts_the_connection(tmp_path: Path) -> None:
    with SinkServer(port=0, drop_rate=1.0, maildir=tmp_path / "mail") as sink:  # in a thread of its own
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await aiosmtplib.send(make_message("lost"), hostname=sink.host, port=sink.port, timeout=5)
        assert sink.stats.dropped == 1
    assert sink.stats.accepted == 0
    assert list((tmp_path / "mail").iterdir()) == []


async def test_threaded_sink_counts_message_ids() -> None:
    sink = SinkServer(port=0, profile="fast").start()
    try:
        sent = [make_message(f"m{index}") for index in range(2)]
        for message in sent:
            await aiosmtplib.send(message, hostname=sink.host, port=sink.port, timeout=5)
        assert sink.stats.message_ids == [m["Message-ID"] for m in sent]
        assert sink.stats.connections == 2
    finally:
        sink.stop()


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        SinkConfig(profile="slow")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not exceed 1"):
        SinkConfig(fail_rate=0.7, drop_rate=0.7)
