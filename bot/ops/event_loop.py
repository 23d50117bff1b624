"""The event loop the bot runs on: uvloop when it is installed (`pip install 'ember-bot[uvloop]'`),
else asyncio's own. uvloop does the same work for 10-20 % less CPU per streamed turn
(BENCHMARKS.md); nothing else changes."""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when uvloop can be imported; None (asyncio's default) otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def loop_name() -> str:
    """What `run` runs on, for the start-up line: "uvloop 0.21.0" or "asyncio"."""
    if loop_factory() is None:
        return "asyncio"
    return f"uvloop {importlib.metadata.version('uvloop')}"


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop `loop_factory` names."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
