"""The start-up permission gate waits out a broker that does not answer in time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from consumer.kafka import gate as gate_module
from consumer.kafka.acls import Acl
from consumer.kafka.gate import PermissionGate


def test_a_broker_answering_too_late_keeps_the_service_not_ready_and_it_asks_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # describe_topics' future.result(timeout=...) raises the built-in TimeoutError while a broker
    # restarts; the gate used to let it escape and the service exited with "unexpected error"
    answers: list[object] = [TimeoutError(), TimeoutError("describe_topics"), []]
    asked: list[int] = []

    def missing_permissions(*_: Any, **__: Any) -> list[str]:
        asked.append(1)
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, list)
        return answer

    monkeypatch.setattr(gate_module, "missing_permissions", missing_permissions)
    gate = PermissionGate({}, [Acl("topic", "t", "Read")], "run", interval=0.01)
    seen: list[dict[str, object]] = []

    async def main() -> bool:
        stop = asyncio.Event()
        task = asyncio.create_task(gate.wait(stop))
        while not task.done():
            seen.append(gate.details())
            await asyncio.sleep(0)
        return task.result()

    assert asyncio.run(main()) is True
    assert len(asked) == 3
    assert gate.ok
    assert gate.details() == {}
    reasons = [d.get("kafka_permissions_missing") for d in seen if d]
    assert ["cannot ask the brokers about permissions: no answer in time"] in reasons
    assert ["cannot ask the brokers about permissions: describe_topics"] in reasons
