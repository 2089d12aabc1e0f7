"""Producing many records as fast as the client takes them, for the tests and the benchmarks: wait for
room in the client's queue instead of failing when it is full, then wait for every acknowledgement."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from confluent_kafka import Producer

Headers = Sequence[tuple[str, bytes | str]]
#: (key, value, headers): what one record carries.
Record = tuple[bytes | None, bytes | None, Headers | None]


def produce_every(
    producer: Producer,
    topic: str,
    records: Iterable[Record],
    partition: int | None = None,
    flush_timeout: float = 120.0,
) -> int:
    """Produce every record to ``topic`` (to ``partition`` when given) and flush; the number produced.
    RuntimeError when a record was refused or is still unacknowledged after ``flush_timeout``."""
    failures: list[Any] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(err)

    count = 0
    for key, value, headers in records:
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": report}
        if headers:
            kwargs["headers"] = list(headers)
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:  # the queue is full: serve delivery reports until there is room
                producer.poll(0.05)
        count += 1
        if count % 1000 == 0:
            producer.poll(0)
    remaining = producer.flush(flush_timeout)
    if failures or remaining:
        raise RuntimeError(f"producing to {topic}: {remaining} unacknowledged, errors {failures[:3]}")
    return count
