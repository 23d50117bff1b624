"""/compare's use case: one prompt streamed through the base model and a variant at once."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from bot.domain.errors import EmberBotError
from bot.domain.types import VariantState

if TYPE_CHECKING:
    from bot.ops.lifecycle import Lifecycle
    from bot.usecases.chat import Chat

DeltaSink = Callable[[int, str], Awaitable[None]]  # (column index, text delta)
ColumnResult = tuple[str, EmberBotError | None]  # a column's text, and what cut it short
ColumnsRun = Callable[[DeltaSink], Awaitable[list[ColumnResult]]]


def compare_run(
    chat: Chat,
    lifecycle: Lifecycle,
    prompt: str,
    variant: VariantState,
    seed: int | None = None,
) -> ColumnsRun:
    """Stream `prompt` through the base model (column 0) and `variant` (column 1) at once,
    with one seed for both, so that the steering is the only difference.

    Each column takes its own backend slot; a column's failure ends only that column. If
    `on_delta` raises, the other column is cancelled and the error propagates.
    """
    seed = random.randrange(2**31) if seed is None else seed

    async def run(on_delta: DeltaSink) -> list[ColumnResult]:
        async def column(index: int, steering: VariantState | None) -> ColumnResult:
            async def forward(delta: str) -> None:
                await on_delta(index, delta)

            return await chat.complete(prompt, steering, seed, forward)

        try:
            async with lifecycle.track(), asyncio.TaskGroup() as group:
                columns = [
                    group.create_task(column(0, None)),
                    group.create_task(column(1, variant)),
                ]
        except EmberBotError as error:  # shutting down: nothing started
            return [("", error), ("", error)]
        except ExceptionGroup as failed:  # on_delta raised: hand its error on, unwrapped
            raise failed.exceptions[0] from None
        return [task.result() for task in columns]

    return run
