"""Readouts (readouts.py) as engine coroutines: each engine runs their forward passes where it
runs them (the transformers engine on its inference worker, the vLLM engine on reader threads
that wait on vLLM), never on the event loop."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from server.engine.readouts import Readouts

P = ParamSpec("P")
T = TypeVar("T")


class ReadoutHost(Protocol):
    def run_readout(self, call: Callable[[Readouts], T]) -> Awaitable[T]:
        """Run `call` on this engine's Readouts, off the event loop."""
        ...


def readout(
    read: Callable[Concatenate[Readouts, P], T],
) -> Callable[Concatenate[ReadoutHost, P], Coroutine[Any, Any, T]]:
    """An engine coroutine that runs the Readouts method `read` through `run_readout`."""

    @functools.wraps(read)
    async def run(host: ReadoutHost, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await host.run_readout(lambda readouts: read(readouts, *args, **kwargs))

    return run
