"""Service-side pieces of the demo commands that need no state of their own: /compare's two
concurrent streams, and sorting per-token activations into the messages they belong to."""

from __future__ import annotations

import asyncio
import random
import re
from typing import TYPE_CHECKING

from bot.commands.replies import DeltaSink
from bot.domain.errors import EmberBotError
from bot.domain.types import ChatMessage, TokenActivation, VariantState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from bot.usecases.service import EmberService

ColumnResult = tuple[str, EmberBotError | None]

SPECIAL_TOKEN = re.compile(r"^<\|[^|]*\|>$")


def compare_run(
    service: EmberService, prompt: str, variant: VariantState, seed: int | None = None
) -> Callable[[DeltaSink], Awaitable[list[ColumnResult]]]:
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

            return await service.complete(prompt, steering, seed, forward)

        try:
            async with service.lifecycle.track(), asyncio.TaskGroup() as group:
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


def tokens_by_message(
    tokens: list[TokenActivation], messages: list[ChatMessage]
) -> list[tuple[str, list[TokenActivation]]]:
    """(role, that message's tokens) per message, leaving out the chat template's tokens.

    The server reads the conversation through its chat template; each message's text is found
    in the tokens' concatenation, in order. When a message cannot be found (a tokenizer whose
    pieces do not spell the text back), all tokens but special ones come back as one group.
    """
    text = "".join(t.token for t in tokens)
    spans, offset = [], 0
    for token in tokens:
        spans.append((offset, offset + len(token.token)))
        offset += len(token.token)
    groups: list[tuple[str, list[TokenActivation]]] = []
    cursor = 0
    for message in messages:
        start = text.find(message.content, cursor)
        if start < 0 or not message.content:
            return [("text", [t for t in tokens if not SPECIAL_TOKEN.match(t.token)])]
        end = cursor = start + len(message.content)
        inside = [
            t
            for t, (first, last) in zip(tokens, spans, strict=True)
            if first < end and last > start
        ]
        groups.append((message.role, inside))
    return groups
