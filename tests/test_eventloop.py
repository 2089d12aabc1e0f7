"""The event loop of ``eventmail run``: chosen by EVENTMAIL_PIPELINE__EVENT_LOOP, uvloop by default."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from consumer import eventloop
from consumer.errors import SettingsError
from consumer.eventloop import EventLoop
from consumer.settings import Settings, load_settings


async def _loop_type() -> type:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


def test_uvloop_is_the_default() -> None:
    assert Settings().pipeline.event_loop is EventLoop.UVLOOP
    assert issubclass(eventloop.run(_loop_type(), Settings().pipeline.event_loop), uvloop.Loop)


def test_asyncio_runs_the_standard_loop() -> None:
    kind = eventloop.run(_loop_type(), EventLoop.ASYNCIO)
    assert not issubclass(kind, uvloop.Loop)
    assert issubclass(kind, asyncio.BaseEventLoop)


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTMAIL_PIPELINE__EVENT_LOOP", "asyncio")
    assert load_settings().pipeline.event_loop is EventLoop.ASYNCIO


def test_an_unknown_loop_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTMAIL_PIPELINE__EVENT_LOOP", "trio")
    with pytest.raises(SettingsError, match="EVENTMAIL_PIPELINE__EVENT_LOOP"):
        load_settings()
