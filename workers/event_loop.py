"""The event loop the engine's request paths run on: uvloop by default, asyncio's own on request.

Why uvloop: a worker's cost per request on the identity model is a few hundred microseconds, and
a fair part of it is the event loop itself (a selector poll, callbacks, futures and transports
written in Python). uvloop, libuv under asyncio's API, does that work in C; the loop cost per
request drops without any change to the code that runs on it. The engine's own clients
(workers/wire/) and pyzmq run on any asyncio loop.

`asyncio` stays selectable ([workers] event_loop) for debugging with asyncio's debug mode and
for hosts where uvloop is not installed (it is a dependency on Linux, the platform the engine
supports; a missing module falls back to asyncio's loop rather than failing the run).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

EVENT_LOOPS = ("uvloop", "asyncio")
T = TypeVar("T")


def loop_factory(name: str = "uvloop") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for asyncio.Runner: uvloop's when asked for and installed, else None
    (asyncio's default loop)."""
    if name not in EVENT_LOOPS:
        raise ValueError(f"event loop {name!r}: choose one of {', '.join(EVENT_LOOPS)}")
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            return None
        return uvloop.new_event_loop
    return None


def run(main: Coroutine[Any, Any, T], name: str = "uvloop") -> T:
    """asyncio.run(main) on the named loop."""
    try:
        factory = loop_factory(name)
    except ValueError:
        main.close()  # never started: closed, so it is not reported as never awaited
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


__all__ = ["EVENT_LOOPS", "loop_factory", "run"]
