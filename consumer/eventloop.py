"""The event loop a long-running service runs on: one place that chooses it.

``EVENTMAIL_PIPELINE__EVENT_LOOP`` picks it: ``uvloop`` (the default; libuv's loop, whose callbacks,
futures and socket transports cost less CPU per mail than the standard library's) or ``asyncio``
(the standard library's selector loop). Both run the same code with the same guarantees; the choice
changes only what the loop itself costs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from enum import StrEnum
from typing import Any, TypeVar

T = TypeVar("T")


class EventLoop(StrEnum):
    UVLOOP = "uvloop"
    ASYNCIO = "asyncio"


def loop_factory(kind: EventLoop | str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function making a new loop of ``kind``; ValueError naming the setting when it cannot."""
    if EventLoop(kind) is EventLoop.ASYNCIO:
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError as exc:  # a dependency of the package: only a broken install lacks it
        raise ValueError(
            f"EVENTMAIL_PIPELINE__EVENT_LOOP=uvloop, but uvloop cannot be imported ({exc}); "
            "install it or set EVENTMAIL_PIPELINE__EVENT_LOOP=asyncio"
        ) from None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], kind: EventLoop | str = EventLoop.UVLOOP) -> T:
    """``asyncio.run(main)`` on a new loop of ``kind``."""
    try:
        factory = loop_factory(kind)
    except ValueError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
