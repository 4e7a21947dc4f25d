"""The workers' event loop: uvloop by default, asyncio's own when the config asks for it."""

from __future__ import annotations

import asyncio

import pytest

from engine.config import ConfigError, config_from_dict
from workers import event_loop

uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (it is a dependency on Linux)")


async def _loop_type() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_the_default_loop_is_uvloop_and_asyncio_stays_selectable() -> None:
    assert event_loop.run(_loop_type()) == "uvloop"
    assert event_loop.run(_loop_type(), "asyncio") == "asyncio"
    with pytest.raises(ValueError, match="choose one of uvloop, asyncio"):
        event_loop.run(_loop_type(), "trio")


def test_the_config_names_the_loop_and_refuses_an_unknown_one() -> None:
    assert config_from_dict({}).workers.event_loop == "uvloop"
    assert config_from_dict({"workers": {"event_loop": "asyncio"}}).workers.event_loop == "asyncio"
    with pytest.raises(ConfigError, match="event_loop"):
        config_from_dict({"workers": {"event_loop": "trio"}})
