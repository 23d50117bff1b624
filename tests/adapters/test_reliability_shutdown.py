"""Graceful shutdown: drain, refuse new work, finalise what runs past the grace period."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys

from bot.app import open_context
from bot.commands.runner import run_text_command
from bot.domain.types import Actor, SessionKey
from bot.ops.lifecycle import Lifecycle, ShuttingDownError
from tests.support.fake_ember import Fault
from tests.support.reliability_helpers import WRITING_MARKER, RecordingSink, chat_turn, relaxed

RESTARTING = "The bot is restarting — try again in a minute."
BOB = Actor("u2", "Bob")


class SlowSink(RecordingSink):
    """A platform whose edits take a while, so a reply is still streaming at shutdown."""

    async def edit(self, handle: object, text: str) -> None:
        await asyncio.sleep(0.1)
        await super().edit(handle, text)


async def test_drain_lets_running_turns_finish_and_refuses_new_work(ctx, fake_ember, alice):
    a, b = SessionKey("t", "w", "a"), SessionKey("t", "w", "b")
    fake_ember.fail_next("/chat/completions", Fault(delay=0.3))
    running = asyncio.create_task(chat_turn(ctx, a, alice, "slow one"))
    await asyncio.sleep(0.1)
    drain = asyncio.create_task(ctx.service.lifecycle.drain(grace=5))
    await asyncio.sleep(0)
    late = await chat_turn(ctx, b, alice, "too late")
    command = await run_text_command(ctx, "/steer pirate 0.5", b, alice)
    assert late.refusal == RESTARTING and late.sink.messages == [f"⚠ {RESTARTING}"]
    assert command.is_error and command.text == RESTARTING
    assert await drain == 0
    finished = await running
    assert finished.result.error is None
    assert finished.sink.messages[0].startswith("You said: Alice: slow one")


async def test_drain_cuts_late_turns_short_with_a_note_and_keeps_their_text(
    settings, fake_ember, alice
):
    fake_ember.reply_text = " ".join(f"word{i}" for i in range(40))
    one_slot = relaxed(settings, backend_max_concurrency=1)
    a, b = SessionKey("t", "w", "a"), SessionKey("t", "w", "b")
    async with open_context(one_slot) as ctx:
        streaming = asyncio.create_task(chat_turn(ctx, a, alice, "long", sink=SlowSink()))
        await asyncio.sleep(0.35)
        queued = asyncio.create_task(chat_turn(ctx, b, BOB, "waiting"))
        await asyncio.sleep(0.05)
        assert await ctx.service.lifecycle.drain(grace=0.2) == 0
        cut, waited = await streaming, await queued
        history = await ctx.service._store.recent_messages(str(a), 10)
    assert isinstance(cut.result.error, ShuttingDownError)
    assert 0 < len(cut.result.text) < len(fake_ember.reply_text)
    final = cut.sink.messages[-1]
    assert f"⚠ Reply cut short: {RESTARTING}" in final and not final.endswith(WRITING_MARKER)
    assert [m.role for m in history] == ["user", "assistant"]
    assert history[1].content == cut.result.text
    assert waited.queued_at == [1] and waited.refusal == RESTARTING
    assert waited.sink.messages == [f"⚠ {RESTARTING}"]


async def test_second_stop_request_skips_the_grace_period():
    lifecycle = Lifecycle()
    outcome: list[str] = []

    async def stuck_job() -> None:
        async with lifecycle.track():
            try:
                async with lifecycle.interruptible():
                    await asyncio.sleep(3600)
            except ShuttingDownError as error:
                outcome.append(error.user_message)

    job = asyncio.create_task(stuck_job())
    runner = asyncio.create_task(lifecycle.run(asyncio.Event().wait(), grace=3600))
    await asyncio.sleep(0.01)
    lifecycle.request_stop()
    await asyncio.sleep(0.01)
    assert not runner.done() and not lifecycle.accepting
    lifecycle.request_stop()
    await asyncio.wait_for(runner, timeout=10)
    await job
    assert outcome == [RESTARTING]


CHILD = """
import asyncio
from adapters.console import run_console
from bot.app import run_app
from bot.ops.logs import configure_logging
from bot.settings import load_settings

settings = load_settings()
configure_logging(settings)
asyncio.run(run_app(settings, run_console))
"""


async def test_sigterm_finalises_the_reply_closes_the_database_and_exits(tmp_path, fake_ember):
    database = tmp_path / "console.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOODFIRE_", "EMBER_"))}
    env |= {
        "GOODFIRE_BASE_URL": fake_ember.base_url,
        "GOODFIRE_API_KEY": fake_ember.api_key,
        "DATABASE_URL": f"sqlite:///{database}",
        "SHUTDOWN_GRACE_SECONDS": "0.3",
    }
    fake_ember.fail_next("/chat/completions", Fault(delay=30))
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert child.stdin and child.stdout
    child.stdin.write(b"hello there\n")  # stdin stays open: the console is still reading
    await child.stdin.drain()
    output = await asyncio.wait_for(child.stdout.readuntil(b"bot> "), timeout=30)
    await asyncio.sleep(0.2)  # the turn is now waiting for the (slow) backend
    child.send_signal(signal.SIGTERM)
    rest, errors = await asyncio.wait_for(child.communicate(), timeout=15)
    output += rest
    assert child.returncode == 0, errors.decode()
    assert f"[reply cut short] {RESTARTING}" in output.decode()
    assert "Shutting down: grace period of 0.3 s over" in errors.decode()
    assert not (tmp_path / "console.db-wal").exists()  # closed cleanly: WAL checkpointed
    with contextlib.closing(sqlite3.connect(database)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = db.execute("SELECT role, content FROM messages").fetchall()
    assert rows == [("user", "hello there")]
