"""Shared pieces of the reliability tests: settings without rate limits, a recording message
sink, a chat turn driven the way adapters drive one, and whole-database snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from adapters.streaming import PlatformLimits, StreamingMessage
from bot.commands.registry import CommandContext
from bot.domain.errors import UserInputError
from bot.domain.summary import steering_footer
from bot.domain.types import Actor, SessionKey
from bot.ops.lifecycle import ShuttingDownError
from bot.settings import Settings
from bot.usecases.chat import ChatResult
from bot.usecases.ratelimit import QueueCallback

WRITING_MARKER = " ▌"
UNLIMITED = {
    "chat_user_per_minute": 0,
    "chat_channel_per_minute": 0,
    "steer_user_per_minute": 0,
    "steer_channel_per_minute": 0,
}


def relaxed(settings: Settings, **overrides: object) -> Settings:
    """`settings` without rate limits (and with `overrides`), for tests that load the bot."""
    return settings.model_copy(update={**UNLIMITED, **overrides})


def database_rows(path: Path) -> list[tuple]:
    """Every row of every table, to prove a refused command changed nothing."""
    with contextlib.closing(sqlite3.connect(path)) as raw:
        tables = [r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [(t, *row) for t in sorted(tables) for row in raw.execute(f"SELECT * FROM {t}")]


class RecordingSink:
    """A platform that keeps every message it was asked to post, as last edited, and each
    edit with the time `now` had when it was made."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.edits: list[tuple[int, str, float]] = []
        self.now = 0.0

    async def post(self, text: str) -> object:
        self.messages.append(text)
        return len(self.messages) - 1

    async def edit(self, handle: object, text: str) -> None:
        assert isinstance(handle, int)
        self.messages[handle] = text
        self.edits.append((handle, text, self.now))


@dataclass
class Turn:
    """One chat turn as a user saw it."""

    text: str
    sink: RecordingSink = field(default_factory=RecordingSink)
    result: ChatResult | None = None
    refusal: str = ""
    queued_at: list[int] = field(default_factory=list)


async def chat_turn(
    ctx: CommandContext,
    session: SessionKey,
    actor: Actor,
    text: str,
    *,
    edit_interval: float = 0,
    sink: RecordingSink | None = None,
) -> Turn:
    """Drive a turn the way the chat adapters do: placeholder, streamed edits, final edit."""
    turn = Turn(text, sink or RecordingSink())
    stream = StreamingMessage(
        turn.sink, PlatformLimits(max_length=100_000, edit_interval=edit_interval)
    )

    async def queued(position: int) -> None:
        turn.queued_at.append(position)

    try:
        async with ctx.service.lifecycle.track():  # a shutdown waits for the final edit too
            await stream.start()
            await _stream_turn(ctx, session, actor, turn, stream, queued)
    except ShuttingDownError as error:  # refused before it began
        turn.refusal = error.user_message
        await stream.finish(f"⚠ {turn.refusal}")
    return turn


async def _stream_turn(
    ctx: CommandContext,
    session: SessionKey,
    actor: Actor,
    turn: Turn,
    stream: StreamingMessage,
    queued: QueueCallback,
) -> None:
    note = footer = ""
    try:
        turn.result = await ctx.service.chat.turn(session, actor, turn.text, stream.push, queued)
    except UserInputError as error:  # refusals; anything else fails the test
        turn.refusal = error.user_message
        note = f"⚠ {turn.refusal}"
    else:
        if turn.result.error is not None:
            note = f"⚠ Reply cut short: {turn.result.error.user_message}"
        footer = steering_footer(turn.result.variant)
    await stream.finish(note, footer)


@contextlib.asynccontextmanager
async def loop_watch(interval: float = 0.005) -> AsyncIterator[list[float]]:
    """Run a ticker beside the block; yields the observed stalls (gap minus interval), in s."""
    stalls: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            stalls.append(now - last - interval)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        yield stalls
    finally:
        ticker.cancel()
