"""Issue #9 against the self-hosted server's tiny preset: a real model with planted features.

The guard acceptance test lives here: generation stops at the token where the guarded planted
feature ("pirate speech") fires.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from bot.app import open_context
from bot.backend.gateway import EmberGateway
from bot.commands.confirmations import answer
from bot.commands.registry import CommandContext, Invocation
from bot.commands.runner import run_text_command
from bot.domain.errors import GenerationAbortedError
from bot.domain.types import ChatMessage, FeatureEdit, Guard, SamplingOptions
from bot.settings import Settings
from server.model.presets import TINY_PLANTED
from tests.bot.test_more_commands import assert_png

PIRATE_INDEX, PIRATE_WORDS = TINY_PLANTED["pirate speech"]


@pytest.fixture
async def tiny_ctx(tmp_path, tiny_server) -> AsyncIterator[CommandContext]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        goodfire_base_url=tiny_server.base_url,
        goodfire_api_key="",
        database_url=f"sqlite:///{tmp_path / 'bot.db'}",
        temperature=0,
        max_completion_tokens=24,
    )
    async with open_context(settings) as context:
        yield context


async def reply_text(
    gateway: EmberGateway, edits: list[FeatureEdit], seed: int, guards: list[Guard]
) -> tuple[str, GenerationAbortedError | None]:
    parts: list[str] = []
    sampling = SamplingOptions(max_tokens=30, temperature=0.8, top_p=0.95, seed=seed)
    stream = gateway.stream_chat(
        [ChatMessage("user", "Tell me about your day")], edits, sampling, guards
    )
    try:
        async with aclosing(stream):
            async for delta in stream:
                parts.append(delta)
    except GenerationAbortedError as error:
        return "".join(parts), error
    return "".join(parts), None


def first_pirate_word_end(text: str) -> int | None:
    """Where the first planted pirate word ends in `text`, if one comes after two other words."""
    words = list(re.finditer(r"[A-Za-z]+", text))
    for position, word in enumerate(words):
        if word.group().lower() in PIRATE_WORDS:
            return word.end() if position >= 2 else None
    return None


async def test_a_guard_stops_generation_at_the_token_where_its_feature_fires(tiny_server):
    async with EmberGateway(tiny_server.base_url, "") as gateway:
        [pirate] = await gateway.lookup_features([PIRATE_INDEX])
        edits = [FeatureEdit(pirate, 0.3)]  # mild: pirate words turn up mid-sentence
        # Activations of the planted feature: ~2 on its words, ~0.15 elsewhere at this nudge.
        guard = Guard(pirate, 1.0)
        for seed in range(40):
            unguarded, error = await reply_text(gateway, edits, seed, [])
            assert error is None
            if (end := first_pirate_word_end(unguarded)) is not None:
                break
        else:
            pytest.fail("no seed put a pirate word mid-reply")
        guarded, error = await reply_text(gateway, edits, seed, [guard])
    assert guarded == unguarded[:end]  # a strict prefix, ending with the first pirate word
    assert len(guarded) < len(unguarded.rstrip())
    assert isinstance(error, GenerationAbortedError)
    assert error.user_message == ('Generation stopped: the guard on "pirate speech" (> 1) fired.')


async def test_a_guarded_chat_turn_ends_with_the_note_and_keeps_the_partial_reply(
    tiny_ctx, session, alice
):
    for line in ("/steer #37 1", "/guard #37 1"):
        assert not (await run_text_command(tiny_ctx, line, session, alice)).is_error

    async def ignore(delta: str) -> None:
        pass

    result = await tiny_ctx.service.chat.turn(session, alice, "Tell me a story", ignore)
    assert isinstance(result.error, GenerationAbortedError)
    assert 'the guard on "pirate speech" (> 1) fired' in result.error.user_message
    assert result.text.strip().lower() in PIRATE_WORDS  # stopped right after the first word
    history = await tiny_ctx.service._store.recent_messages(str(session), 2)
    assert history[-1].content == result.text


async def test_autosteer_proposal_applied_through_the_steering_path(tiny_ctx, session, alice):
    reply = await run_text_command(tiny_ctx, "/autosteer talk like a pirate", session, alice)
    assert reply.confirmation is not None and reply.table is not None
    assert reply.confirmation.prompt == "Apply these edits?"
    proposed = {row.note: row.value for row in reply.table.rows}
    assert f"#{PIRATE_INDEX}" in proposed and all(-1 <= v <= 1 for v in proposed.values())
    assert (await tiny_ctx.service.variants.active(session)).edits == {}  # nothing until Apply
    applied = await answer(tiny_ctx, reply.confirmation.token, True, Invocation(session, alice, {}))
    assert not applied.is_error and "pirate speech" in applied.text
    edits = (await tiny_ctx.service.variants.active(session)).edits
    assert {f"#{i}": e.value for i, e in edits.items()} == proposed


async def test_inspect_feature_on_a_real_chat_template(tiny_ctx, session, alice):
    await run_text_command(tiny_ctx, "/steer #37 1", session, alice)

    async def ignore(delta: str) -> None:
        pass

    result = await tiny_ctx.service.chat.turn(session, alice, "Hello there", ignore)
    assert result.error is None and "arr" in result.text.lower()
    reply = await run_text_command(tiny_ctx, "/inspect chart feature:#37", session, alice)
    lines = reply.text.splitlines()
    assert lines[0].startswith('Where "pirate speech" (#37) fired in the last exchange')
    assert lines[1] == "user: Hello there"  # only the nudge's even shift there: nothing marked
    assert lines[2].startswith("bot: ")
    marks = re.findall(r"([A-Za-z]+)(⁽[⁰¹²³⁴⁵⁶⁷⁸⁹·]+⁾)?", lines[2].removeprefix("bot: "))
    assert marks and any(mark for _, mark in marks)
    assert all(bool(mark) == (word.lower() in PIRATE_WORDS) for word, mark in marks)
    assert lines[3].startswith('Variant "default" steers this feature')
    assert "<|" not in reply.text and "assistant" not in reply.text  # no template tokens
    assert reply.attachment is not None
    assert_png(reply.attachment.content)
