"""Start-up check of a service's Kafka permissions: no work is taken until the broker says the
principal holds every ACL the service needs (:mod:`consumer.kafka.acls`); until then the service is
not ready, its readiness names what is missing, and one error line says so (again only when the
answer changes). Asked again every ``interval`` seconds: granting the ACL is enough, no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from confluent_kafka import KafkaException

from consumer.kafka.acls import Acl
from consumer.kafka.permissions import missing_permissions

log = logging.getLogger(__name__)


class PermissionGate:
    def __init__(self, config: dict[str, Any], acls: list[Acl], service: str, interval: float = 5.0) -> None:
        self.config = config
        self.acls = acls
        self.service = service
        self.interval = interval
        #: None until the broker answered once; then what it says is missing.
        self.missing: list[str] | None = None
        #: Topics the service needs that do not exist (``eventmail topics create`` makes them).
        self.missing_topics: list[str] = []

    @property
    def ok(self) -> bool:
        return self.missing == [] and not self.missing_topics

    def details(self) -> dict[str, object]:
        """For the readiness answer, nothing once every permission is held; else
        ``kafka_permissions: false`` and, when the broker answered, which lack."""
        if self.ok:
            return {}
        if self.missing == [] and self.missing_topics:
            return {"topics": False, "topics_missing": list(self.missing_topics)}
        out: dict[str, object] = {"kafka_permissions": False}
        if self.missing:
            out["kafka_permissions_missing"] = list(self.missing)
        return out

    async def wait(self, stop: asyncio.Event) -> bool:
        """True once every permission is held; False when ``stop`` was set first."""
        said: list[str] | None = None
        said_topics: list[str] = []
        while not stop.is_set():
            unknown: list[str] = []
            try:
                missing = await asyncio.to_thread(missing_permissions, self.config, self.acls, 15.0, unknown)
            except (KafkaException, TimeoutError) as exc:
                # a broker that is restarting may not answer in time: not ready yet, asked again
                reason = exc.args[0] if exc.args else "no answer in time"
                missing = [f"cannot ask the brokers about permissions: {reason}"]
            self.missing, self.missing_topics = missing, sorted(unknown)
            if not missing and not unknown:
                if said or said_topics:
                    log.info("Kafka permissions and topics in place", extra={"service": self.service})
                return True
            if missing and missing != said:
                log.error(
                    "not ready: Kafka permissions missing (eventmail acls lists them)",
                    extra={"service": self.service, "missing": missing},
                )
                said = missing
            if not missing and self.missing_topics != said_topics:
                log.error(
                    "not ready: topics missing (eventmail topics create makes them)",
                    extra={"service": self.service, "topics": self.missing_topics},
                )
                said_topics = self.missing_topics
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
        return False
