"""The bot's event loop: uvloop when it is installed, asyncio's own otherwise."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from bot.ops import event_loop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_the_loop_the_bot_runs_on_is_the_one_the_start_up_line_names() -> None:
    module = event_loop.run(_loop_module())
    name = event_loop.loop_name()
    if importlib.util.find_spec("uvloop") is None:
        assert name == "asyncio" and module.startswith("asyncio")
    else:
        assert name.startswith("uvloop ") and module.startswith("uvloop")


def test_without_uvloop_it_is_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "uvloop", None)  # as if not installed
    assert event_loop.loop_factory() is None and event_loop.loop_name() == "asyncio"
    assert event_loop.run(_loop_module()).startswith("asyncio")
