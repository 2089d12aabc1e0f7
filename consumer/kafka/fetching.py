"""How the service's consumers fetch: librdkafka's pre-fetch queue without its one-second stalls.

librdkafka pre-fetches messages into a local queue per partition and stops fetching a partition
while its queue holds ``queued.min.messages`` (100,000) or ``queued.max.messages.kbytes`` (64 MiB);
it then looks again only after ``fetch.queue.backoff.ms``, 1,000 ms by default (librdkafka issue
#2879). A consumer reading a backlog faster than about 100,000 records a second empties that queue
before the second is up and waits for the rest of it with nothing to do: a plain consumer that
decodes each event with :class:`~consumer.events.codec.EventDecoder` read a backlog at 113,000 a
second with the default and at 276,000 with 10 ms on the same broker. The pre-fetched queue stays
as bounded as before; only the wait between looks is shorter.

Every consumer that reads a backlog (the event source, the outcome read-back after a rebalance, the
aggregator, the readers of ``logs``, ``usage`` and ``rules backtest``, the rule store) starts from
:data:`FETCH_DEFAULTS`; ``EVENTMAIL_KAFKA__EXTRA`` still wins over them.
"""

from __future__ import annotations

from typing import Any

#: librdkafka settings every consumer of the service starts from (the deployment's own win).
FETCH_DEFAULTS: dict[str, Any] = {"fetch.queue.backoff.ms": 10}
