"""SMTP transport: messages per second through eventmail's pooled transport vs raw aiosmtplib.

Both sides use 8 persistent connections to the same SMTP sink (:mod:`bench.lean_sink`, in a separate
process, answering at once) and send the same pre-built messages in the same run, in
back-to-back pairs of rounds. The sink offers PIPELINING: eventmail's transport sends MAIL, RCPT
and DATA in one write (two round trips per mail), aiosmtplib does not pipeline (four). Raw
aiosmtplib is the best case of a client without it: 8 workers, each with its own connected client,
calling ``sendmail`` back to back. eventmail's transport is used as the pipeline uses it: many
concurrent ``send`` calls sharing one pool of 8. Both run on the event loop the service runs on
(:func:`bench.support.run_on_service_loop`).

``python -m bench.transport [--quick]`` prints the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

import aiosmtplib

from bench import lean_sink
from bench.support import run_on_service_loop
from consumer.mail import ConnectionParams, MailAddress, Rendered, Transport, build_message
from consumer.settings import Encryption, SmtpSettings

CONNECTIONS = 8
#: Concurrent ``send`` calls on eventmail's side (the pipeline keeps many mails in flight).
IN_FLIGHT = 64


@dataclass(frozen=True)
class _Mail:
    sender: str
    recipients: tuple[str, ...]
    data: bytes


def _messages(count: int) -> list[_Mail]:
    mails: list[_Mail] = []
    for n in range(count):
        built = build_message(
            Rendered(f"Lead lead-{n} sold for 12.50", f"Lead lead-{n} was sold.\n" * 8, None),
            sender=MailAddress("sales@example.com", "Sales"),
            to=[MailAddress("ops@example.com", "Ops")],
            event_id=f"ev-{n}",
            rule_id="r-bench",
        )
        mails.append(_Mail(built.sender, built.recipients, built.data))
    return mails


async def _raw(port: int, messages: list[_Mail]) -> float:
    clients = [
        aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, local_hostname="bench")
        for _ in range(CONNECTIONS)
    ]
    await asyncio.gather(*(client.connect() for client in clients))
    queue = iter(messages)

    async def worker(client: aiosmtplib.SMTP) -> None:
        for built in queue:
            await client.sendmail(built.sender, list(built.recipients), built.data)

    started = time.perf_counter()
    await asyncio.gather(*(worker(client) for client in clients))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(client.quit() for client in clients), return_exceptions=True)
    return len(messages) / elapsed


async def _eventmail(port: int, messages: list[_Mail]) -> float:
    params = ConnectionParams(
        name="bench", host="127.0.0.1", port=port, encryption=Encryption.NONE, max_connections=CONNECTIONS
    )
    async with Transport(SmtpSettings(), local_hostname="bench") as transport:
        # open the 8 sessions first, as the raw side does before its clock starts
        await asyncio.gather(*(_send(transport, params, built) for built in messages[:CONNECTIONS]))
        queue = iter(messages)

        async def caller() -> None:
            for built in queue:
                await _send(transport, params, built)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(IN_FLIGHT)))
        elapsed = time.perf_counter() - started
    return len(messages) / elapsed


async def _send(transport: Transport, params: ConnectionParams, built: _Mail) -> None:
    await transport.send(params, built.data, built.sender, built.recipients)


async def _measure(port: int, count: int, pairs: int) -> dict[str, float]:
    messages = _messages(count)
    raw: list[float] = []
    ours: list[float] = []
    await _raw(port, messages[: count // 4])  # warm up both paths
    await _eventmail(port, messages[: count // 4])
    for pair in range(pairs):
        # alternate which side goes first, so a slow stretch of the machine hits both alike
        if pair % 2 == 0:
            raw.append(await _raw(port, messages))
            ours.append(await _eventmail(port, messages))
        else:
            ours.append(await _eventmail(port, messages))
            raw.append(await _raw(port, messages))
    ratios = sorted(o / r for o, r in zip(ours, raw, strict=True))
    return {
        "eventmail_per_s": round(statistics.median(ours), 1),
        "raw_aiosmtplib_per_s": round(statistics.median(raw), 1),
        # the median of the per-pair ratios: robust to other load on the machine
        "eventmail_vs_raw": round(statistics.median(ratios), 3),
        "messages_per_round": float(count),
        "connections": float(CONNECTIONS),
    }


def run(quick: bool) -> dict[str, float]:
    """Rates of both senders through 8 connections to one sink process.

    Rates are the median round of each side; the ratio is the median of back-to-back pairs. The sink
    and both senders share this machine's cores, so other load shows up as noise in single rounds.
    """
    process, port = lean_sink.spawn()
    try:
        return run_on_service_loop(_measure(port, count=2_000, pairs=4 if quick else 12))
    finally:
        lean_sink.stop(process)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transport")
    parser.add_argument("--quick", action="store_true", help="fewer messages and rounds")
    args = parser.parse_args(argv)
    figures: dict[str, Any] = run(args.quick)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
