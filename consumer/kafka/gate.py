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

    @property
    def ok(self) -> bool:
        return self.missing == []

    def details(self) -> dict[str, object]:
        """For the readiness answer, nothing once every permission is held; else
        ``kafka_permissions: false`` and, when the broker answered, which lack."""
        if self.ok:
            return {}
        out: dict[str, object] = {"kafka_permissions": False}
        if self.missing:
            out["kafka_permissions_missing"] = list(self.missing)
        return out

    async def wait(self, stop: asyncio.Event) -> bool:
        """True once every permission is held; False when ``stop`` was set first."""
        said: list[str] | None = None
        while not stop.is_set():
            try:
                missing = await asyncio.to_thread(missing_permissions, self.config, self.acls)
            except KafkaException as exc:
                missing = [f"cannot ask the brokers about permissions: {exc.args[0]}"]
            self.missing = missing
            if not missing:
                if said:
                    log.info("Kafka permissions granted", extra={"service": self.service})
                return True
            if missing != said:
                log.error(
                    "not ready: Kafka permissions missing (eventmail acls lists them)",
                    extra={"service": self.service, "missing": missing},
                )
                said = missing
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
        return False
