"""Fuzz: hostile text and numbers through every command's arguments, typed and structured.

Whatever comes in, a command answers (success or a specific error, never the generic "Something
went wrong") and an error leaves every database row as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.app import open_context
from bot.commands.catalog import build_registry
from bot.commands.parsing import coerce_options
from bot.commands.registry import Command, CommandContext, Invocation
from bot.commands.runner import run_command, run_text_command
from bot.domain.errors import UserInputError
from bot.domain.types import Actor, SessionKey
from bot.settings import Settings
from tests.support.fake_ember import FakeEmber
from tests.support.reliability_helpers import database_rows, relaxed

GENERIC = "Something went wrong on our side; it has been logged."
COMMANDS = list(build_registry())
SPECIALS = [
    "NaN", "nan", "-nan", "inf", "-Infinity", "1e309", "-1e309", "1e-400", "-0", "-0.0", "0x10",
    "1_000", "٠.٥", "1e20", "9" * 400, "", " ", "\t\n", '"', "'", '"unclosed',
    "'; DROP TABLE variants; --", 'x" OR "1"="1', "<script>alert(1)</script>", "${jndi:ldap://x/a}",
    "{{7*7}}", "%s%s%n", "\x00", "../../etc/passwd", "@everyone", "<!channel>", "<@U123>", "a=b=c",
    "=0.5", "pirate=", "pirate=nan",
    "#99999999999999999999999", "#-1", "#", "\\", "`rm -rf /`", "\u202e\u200b", "🏴\u200d☠️",
    "\ud800", "a\udfffb", "default", "DEFAULT", "all", "history", '{"edits": [[[[]]]]}',
    '{"base_model": "m", "edits": [{"index_in_sae": 1e999, "value": NaN}]}',
    '{"base_model": "m\ud800", "edits": [{"index_in_sae": 1, "value": 0.5}]}',
    '{"base_model": "m", "edits": [{"index_in_sae": 2, "value": 0.5, "feature_label": "\\udfff"}]}',
]  # fmt: skip

hostile_text = st.one_of(
    st.sampled_from(SPECIALS),
    st.text(st.characters(exclude_categories=()), max_size=60),
    st.builds(
        lambda unit, count: unit * count,
        st.sampled_from(["x", "é", "🏴\u200d☠️", " ", '"', "=", "[", "#1 "]),
        st.integers(100, 20_000),
    ),
)
raw_option = st.one_of(
    hostile_text,
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.booleans(),
    st.none(),
)


@dataclass
class Bot:
    run: Any  # runs a coroutine on the bot's loop
    ctx: CommandContext
    session: SessionKey
    actor: Actor


@pytest.fixture
def bot(tmp_path) -> Iterator[Bot]:
    """The real bot on a loop of its own, so hypothesis can drive it from a plain test."""
    with asyncio.Runner() as runner, contextlib.ExitStack() as stack:
        fake = runner.run(FakeEmber().__aenter__())
        stack.callback(lambda: runner.run(fake.__aexit__(None, None, None)))
        config = relaxed(
            Settings(
                _env_file=None,  # type: ignore[call-arg]
                goodfire_base_url=fake.base_url,
                goodfire_api_key=fake.api_key,
                database_url=f"sqlite:///{tmp_path / 'fuzz.db'}",
            )
        )
        opened = open_context(config)
        ctx = runner.run(opened.__aenter__())
        stack.callback(lambda: runner.run(opened.__aexit__(None, None, None)))
        bot = Bot(runner.run, ctx, SessionKey("fuzz", "w", "c"), Actor("u1", "Alice"))
        bot.run(ctx.service.variants.active(bot.session))  # the session exists up front
        yield bot


def check_line(bot: Bot, line: str) -> None:
    before = database_rows(bot.ctx.settings.database_path)
    reply = bot.run(run_text_command(bot.ctx, line, bot.session, bot.actor))
    assert reply.text != GENERIC, line[:200]
    if reply.is_error:
        assert database_rows(bot.ctx.settings.database_path) == before, (line[:200], reply.text)


def check_chat(bot: Bot, text: str) -> None:
    before = database_rows(bot.ctx.settings.database_path)
    try:
        result = bot.run(bot.ctx.service.chat.turn(bot.session, bot.actor, text, _ignore))
    except UserInputError:
        assert database_rows(bot.ctx.settings.database_path) == before
    else:  # a reply, or a backend error the user is told about
        assert result.text or result.error is not None


async def _ignore(_: str) -> None:
    pass


def check_options(bot: Bot, command: Command, options: dict[str, Any]) -> None:
    """The structured path (Discord options): coerce, then run."""
    before = database_rows(bot.ctx.settings.database_path)
    try:
        args = coerce_options(command, options)
    except UserInputError:
        return
    invocation = Invocation(bot.session, bot.actor, args)
    reply = bot.run(run_command(bot.ctx, command, invocation))
    assert reply.text != GENERIC, (command.name, options)
    if reply.is_error:
        assert database_rows(bot.ctx.settings.database_path) == before, (command.name, reply.text)


def test_every_command_and_chat_survive_every_special_value_in_every_position(bot):
    for command in COMMANDS:
        for special in SPECIALS:
            quoted = f'"{special}"'
            for args in ([special], ["pirate", special], [special, quoted], [quoted, "0.5"]):
                check_line(bot, f"/{command.name} " + " ".join(args[: len(command.args) + 1]))
            check_options(bot, command, {arg.name: special for arg in command.args})
    for special in SPECIALS:
        check_chat(bot, special)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_hostile_arguments_never_crash_or_half_apply(bot, data):
    command = data.draw(st.sampled_from(COMMANDS))
    words = data.draw(st.lists(hostile_text, max_size=len(command.args) + 1))
    check_line(bot, " ".join([f"/{command.name}", *words]))
    options = data.draw(st.fixed_dictionaries({arg.name: raw_option for arg in command.args}))
    check_options(bot, command, options)
    check_chat(bot, data.draw(hostile_text))
