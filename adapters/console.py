"""A terminal chat on the same command registry: `/` lines are commands, others are chat.

Works interactively and with piped stdin (it exits at end of input), so it is scriptable.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import sys
import threading
from typing import TextIO

from bot.commands import CommandContext, run_text_command
from bot.errors import EmberBotError
from bot.handlers import steering_footer
from bot.ratelimit import queued_message
from bot.render import render_reply_text
from bot.service import Actor, SessionKey

PROMPT = "you> "


class ConsoleChat:
    def __init__(
        self, ctx: CommandContext, session_name: str, stdin: TextIO, stdout: TextIO
    ) -> None:
        self._ctx = ctx
        self._session = SessionKey("console", "local", session_name)
        self._actor = Actor(f"console:{getpass.getuser()}", getpass.getuser())
        self._stdin = stdin
        self._out = stdout
        self._interactive = stdin.isatty()

    async def run(self) -> None:
        self._write("ember-bot console — type /help for commands, Ctrl-D to quit.\n")
        while (line := await self._read_line()) is not None:
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                await self._command(line)
            else:
                await self._chat(line)

    async def _read_line(self) -> str | None:
        if self._interactive:
            self._write(PROMPT)
        line = await read_in_daemon_thread(self._stdin)
        return line or None

    async def _command(self, line: str) -> None:
        reply = await run_text_command(self._ctx, line, self._session, self._actor)
        prefix = "error: " if reply.is_error else ""
        self._write(f"{prefix}{render_reply_text(reply)}\n")

    async def _chat(self, text: str) -> None:
        self._write("bot> ")

        async def show(delta: str) -> None:
            self._write(delta)

        async def queued(position: int) -> None:
            self._write(f"({queued_message(position)}) ")

        service = self._ctx.service
        try:
            async with service.lifecycle.track():  # a shutdown waits for the footer too
                result = await service.chat(self._session, self._actor, text, show, queued)
                if result.error is not None:
                    self._write(f"\n[reply cut short] {result.error.user_message}")
                self._write(f"\n  — {steering_footer(result.variant)}\n")
        except EmberBotError as error:
            self._write(f"\nerror: {error.user_message}\n")

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


async def read_in_daemon_thread(stream: TextIO) -> str:
    """`stream.readline()` off the loop, in a daemon thread: unlike `asyncio.to_thread`, a read
    still blocked at shutdown does not keep the process alive."""
    loop = asyncio.get_running_loop()
    line: asyncio.Future[str] = loop.create_future()

    def deliver(text: str) -> None:
        if not line.done():
            line.set_result(text)

    def read() -> None:
        text = stream.readline()
        with contextlib.suppress(RuntimeError):  # the loop closed while we were reading
            loop.call_soon_threadsafe(deliver, text)

    threading.Thread(target=read, name="console-stdin", daemon=True).start()
    return await line


async def run_console(ctx: CommandContext, session_name: str = "default") -> None:
    await ConsoleChat(ctx, session_name, sys.stdin, sys.stdout).run()
