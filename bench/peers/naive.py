"""The naive peer: what a first hand-written Kafka-to-email bridge looks like.

A confluent-kafka poll loop; per record: ``json.loads``, ``str.format`` of a subject and a body, an
``EmailMessage``, a new ``smtplib.SMTP`` connection (banner, EHLO, MAIL, RCPT, DATA, QUIT) and a
synchronous commit of that record. No pooling, no concurrency, no outcomes, no DLQ.

    python -m bench.peers.naive --bootstrap HOST:PORT --topic T --group G \
        --smtp-host 127.0.0.1 --smtp-port 2525 --count 100

Prints one JSON line: ``{"count": N, "seconds": S, "per_s": R}``, timed from the first record received
(group join and start-up excluded) to the commit of the last one.
"""

from __future__ import annotations

import argparse
import json
import smtplib
import sys
import time
from email.message import EmailMessage

from confluent_kafka import Consumer

SUBJECT = "bench {event_id}"
BODY = "Lead {lead_id} sold for {price} ({first_name}).\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.naive")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--smtp-host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True, help="stop after this many mails")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([args.topic])
    sent = 0
    started: float | None = None
    deadline = time.monotonic() + args.timeout
    try:
        while sent < args.count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                print(f"naive: consume error: {msg.error()}", file=sys.stderr)
                continue
            if started is None:
                started = time.perf_counter()
            event = json.loads(msg.value() or b"{}")
            mail = EmailMessage()
            mail["From"] = "sales@example.com"
            mail["To"] = "ops@example.com"
            mail["Subject"] = SUBJECT.format(**event)
            mail.set_content(BODY.format(first_name=event.get("data", {}).get("first_name", ""), **event))
            with smtplib.SMTP(args.smtp_host, args.smtp_port, timeout=30) as smtp:
                smtp.send_message(mail)
            consumer.commit(message=msg, asynchronous=False)
            sent += 1
    finally:
        consumer.close()
    if started is None or sent < args.count:
        print(json.dumps({"count": sent, "error": "timed out"}))
        return 1
    elapsed = time.perf_counter() - started
    print(json.dumps({"count": sent, "seconds": round(elapsed, 3), "per_s": round(sent / elapsed, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
