"""Whether a group consumer is a member of its group, and whether it is stuck outside it.

A consumer out of its group consumes nothing. Usually that lasts a few seconds (a rebalance, a
broker restart), but librdkafka can also stay out for good: after a broker restart it may keep its
group coordinator pointed at a broker it has dropped from its broker list, and then nothing makes it
look for the coordinator again (no partitions, no mail, no error; only its coordinator requests time
out once a minute). The service must neither hang silently in that state nor be restarted during an
ordinary broker outage, so "stuck" is: not a member (librdkafka's ``cgrp`` statistics are not
``up``/``steady`` and no assignment came) for ``stuck_after`` seconds **while the brokers answer a
fresh client** (a metadata request). Out of the group while the brokers are away is an outage, not
a stuck service.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaException

#: How long one reachability probe (a metadata request by a fresh client) may take.
PROBE_TIMEOUT_SECONDS = 5.0


class GroupWatch:
    """Membership of one group consumer, from its statistics and its rebalance callbacks.

    Called from the consumer's thread (statistics and callbacks come from its poll), read from any
    thread (the health check)."""

    def __init__(self, stuck_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stuck_after = stuck_after
        self._clock = clock
        self.out_since: float | None = clock()  # a consumer starts outside its group
        #: The last reachability probe while out of the group: None (none yet), True or False.
        self.reachable: bool | None = None
        self.state = "init"

    def on_stats(self, stats: dict[str, Any]) -> None:
        cgrp = stats.get("cgrp")
        if not isinstance(cgrp, dict):
            return
        self.state = f"{cgrp.get('state')}/{cgrp.get('join_state')}"
        if cgrp.get("state") == "up" and cgrp.get("join_state") == "steady":
            self.joined()
        elif self.out_since is None:
            self.out_since = self._clock()

    def joined(self) -> None:
        """A successful join (an assignment, possibly empty) or a steady membership."""
        self.out_since = None
        self.reachable = None

    def out_for(self) -> float:
        since = self.out_since
        return 0.0 if since is None else self._clock() - since

    def overdue(self) -> bool:
        """Out of the group for ``stuck_after`` seconds (whether the brokers answer is not known)."""
        return self.out_for() >= self.stuck_after

    def stuck(self) -> bool:
        """Out of the group for ``stuck_after`` seconds while the brokers answer."""
        return self.overdue() and self.reachable is True

    def details(self) -> dict[str, object]:
        return {
            "group_state": self.state,
            "out_of_group_seconds": round(self.out_for(), 1),
            "group_stuck": self.stuck(),
        }


def brokers_answer(config: dict[str, Any], timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
    """True when a fresh client (same settings, no group membership) gets metadata with a broker."""
    probe_config = {k: v for k, v in config.items() if not k.endswith("_cb")}
    probe = Consumer(probe_config)
    try:
        metadata = probe.list_topics(timeout=timeout)
        return bool(metadata.brokers)
    except KafkaException:
        return False
    finally:
        probe.close()
