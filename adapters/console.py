"""A terminal chat on the same command registry: `/` lines are commands, others are chat.

Works interactively and with piped stdin (it exits at end of input), so it is scriptable.
Attachments (charts, variant JSON) are saved into the current directory under a fresh name and
their path is printed. A confirmation (/autosteer) reads the next input line as its y/n answer.
/compare streams the base column live and prints the steered column when both are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from bot.commands.confirmations import answer
from bot.commands.registry import CommandContext, Invocation
from bot.commands.render import render_reply_text
from bot.commands.replies import Attachment, Confirmation, Reply, StreamedColumns
from bot.commands.runner import run_text_command
from bot.domain.types import Actor, SessionKey
from bot.usecases.chat_turn import TurnOutcome, run_chat_turn
from bot.usecases.ratelimit import queued_message

PROMPT = "you> "
log = logging.getLogger(__name__)


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
        await self._show(await run_text_command(self._ctx, line, self._session, self._actor))

    async def _show(self, reply: Reply) -> None:
        prefix = "error: " if reply.is_error else ""
        if text := render_reply_text(reply):
            self._write(f"{prefix}{text}\n")
        if reply.attachment is not None:
            await self._save(reply.attachment)
        if reply.columns is not None:
            await self._columns(reply.columns)
        if reply.confirmation is not None:
            await self._confirm(reply.confirmation)

    async def _save(self, attachment: Attachment) -> None:
        try:
            path = await asyncio.to_thread(save_attachment, attachment, Path.cwd())
        except OSError as error:
            self._write(f"[could not save {attachment.filename}: {error.strerror or error}]\n")
            return
        self._write(f"[saved {path} · {len(attachment.content):,} bytes]\n")

    async def _columns(self, columns: StreamedColumns) -> None:
        """The first column streams live; the others print once every column is done."""
        self._write(f"── {columns.titles[0]} ──\n")

        async def show(column: int, delta: str) -> None:
            if column == 0:
                self._write(delta)

        results = await columns.run(show)
        for number, (title, (text, error)) in enumerate(zip(columns.titles, results, strict=True)):
            if number:
                self._write(f"── {title} ──\n{text}")
            if error is not None:
                self._write(f"\n[cut short] {error.user_message}")
            self._write("\n")

    async def _confirm(self, confirmation: Confirmation) -> None:
        self._write(f"{confirmation.prompt} [y/N] ")
        line = await read_in_daemon_thread(self._stdin)
        if not self._interactive:
            self._write(line if line.endswith("\n") else f"{line}\n")  # echo the scripted answer
        accept = line.strip().lower() in ("y", "yes")
        invocation = Invocation(self._session, self._actor, {}, can_steer=True)
        await self._show(await answer(self._ctx, confirmation.token, accept, invocation))

    async def _chat(self, text: str) -> None:
        self._write("bot> ")
        await run_chat_turn(
            self._ctx.service, self._session, self._actor, text, ConsoleTurn(self._write)
        )

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


class ConsoleTurn:
    """One chat turn shown in the terminal: the reply as it streams, then its footer."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write

    async def begin(self) -> None:
        pass

    async def queued(self, position: int) -> None:
        self._write(f"({queued_message(position)}) ")

    async def push(self, delta: str) -> None:
        self._write(delta)

    async def finish(self, outcome: TurnOutcome) -> None:
        if outcome.kind in ("refused", "failed"):
            self._write(f"\nerror: {outcome.note}\n")
            return
        if outcome.error is not None:
            self._write(f"\n[reply cut short] {outcome.error.user_message}")
        self._write(f"\n  — {outcome.footer}\n")


def save_attachment(attachment: Attachment, directory: Path) -> Path:
    """Write the attachment into `directory` without overwriting: inspect.png, inspect-1.png..."""
    name = Path(attachment.filename).name  # never a path from elsewhere
    stem, suffix = Path(name).stem, Path(name).suffix
    for number in range(1000):
        path = directory / (f"{stem}-{number}{suffix}" if number else name)
        try:
            with path.open("xb") as file:
                file.write(attachment.content)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"too many files named {stem}-*{suffix} in {directory}")


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
