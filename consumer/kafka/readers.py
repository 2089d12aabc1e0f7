"""Readers that only ``assign()`` partitions (the rule store, the outcome read-back, ``logs``,
``usage``, the aggregator's alert read-back) and never join, commit or fetch offsets.

librdkafka needs a ``group.id`` for any consumer, and with one it looks up the group's coordinator
even when nothing uses the group; on a cluster where the principal has no ACL on that throwaway
group, the lookup fails with ``GROUP_AUTHORIZATION_FAILED``. That error says nothing about the
reading: such readers ignore it, and need no group ACL.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError


def unused_group_error(error: Any) -> bool:
    """True for the error an assign-only reader gets about the group it never uses."""
    code = error.code() if hasattr(error, "code") else None
    return code == KafkaError.GROUP_AUTHORIZATION_FAILED
