"""EmberService through the real gateway and goodfire SDK against the loopback fake Ember."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import goodfire
import pytest

from bot.commands.registry import CommandContext
from bot.commands.runner import run_text_command
from bot.domain.errors import BackendUnavailableError, DeliveryFailedError, UserInputError
from bot.domain.types import Actor, SessionKey
from tests.support.fake_ember import Fault


def database_rows(ctx: CommandContext) -> list[tuple]:
    """Every row of every table, to prove a failed command changed nothing."""
    path = ctx.settings.database_path
    with sqlite3.connect(path) as raw:
        tables = [r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [(t, *row) for t in sorted(tables) for row in raw.execute(f"SELECT * FROM {t}")]


async def collect(ctx, session, actor, text):
    parts: list[str] = []

    async def on_delta(delta: str) -> None:
        parts.append(delta)

    result = await ctx.service.chat.turn(session, actor, text, on_delta)
    return result, "".join(parts)


async def test_steer_then_chat_sends_nudge_on_the_feature(ctx, fake_ember, session, alice):
    reply = await run_text_command(ctx, "/steer pirate 0.5", session, alice)
    assert not reply.is_error and '"pirate speech" (#1201) +0.50' in reply.text
    result, streamed = await collect(ctx, session, alice, "hello there")
    assert result.error is None and result.text == streamed != ""
    request = fake_ember.last_chat_request()
    assert fake_ember.controller_nudges(request) == {1201: 0.5}
    sent = request.json["messages"]
    assert sent[0] == {"role": "system", "content": ctx.settings.system_prompt}
    assert sum(m["role"] == "system" for m in sent) == 1
    assert sent[-1] == {"role": "user", "content": "Alice: hello there"}


async def test_batch_steering_is_all_or_nothing(ctx, session, alice):
    reply = await run_text_command(ctx, '/steer pirate=0.5 "formal writing"=-0.3', session, alice)
    assert not reply.is_error
    edits = (await ctx.service.variants.active(session)).edits
    assert {i: e.value for i, e in edits.items()} == {1201: 0.5, 2048: -0.3}
    before = database_rows(ctx)
    reply = await run_text_command(ctx, "/steer cats=0.2 qqqzzz=0.1", session, alice)
    assert reply.is_error and "qqqzzz" in reply.text
    assert database_rows(ctx) == before


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/steer pirate 5", "Value must be between -1 and 1, got 5."),
        ("/steer pirate abc", "Value must be a number, got 'abc'."),
        ("/steer", "Say what to steer, e.g. /steer pirate 0.5"),
        ("/variant use nope", 'No variant named "nope" in this channel. Variants: default.'),
        ("/features search", "Missing <query>. Usage: /features search <query> [top]"),
        ("/features search xyzzy", 'No features match "xyzzy".'),
        ("/steer xyzzy 0.5", 'No feature matches "xyzzy". Try /features search <words>.'),
    ],
)
async def test_bad_commands_answer_one_line_and_change_nothing(ctx, session, alice, line, expected):
    await ctx.service.variants.active(session)  # the session exists before the bad command
    before = database_rows(ctx)
    reply = await run_text_command(ctx, line, session, alice)
    assert reply.text == expected and "\n" not in reply.text
    assert database_rows(ctx) == before


async def test_same_feature_from_search_and_from_reload_is_one_edit(ctx, settings, session, alice):
    await ctx.service.steering.steer(session, [("pirate", 0.5)], alice)
    from bot.app import open_context

    async with open_context(settings) as reopened:
        await reopened.service.steering.steer(session, [("#1201", -0.2)], alice)
        variant = await reopened.service.variants.active(session)
    assert list(variant.edits) == [1201] and variant.edits[1201].value == -0.2


async def test_variants_copy_switch_delete_and_keep_their_own_steering(ctx, session, alice):
    await ctx.service.steering.steer(session, [("pirate", 0.5)], alice)
    await ctx.service.variants.create(session, "Formal", alice, base="default")
    await ctx.service.steering.steer(session, [("formal", 0.4)], alice)
    listing = await ctx.service.variants.list(session)
    assert listing.active == "formal"
    assert {v.name: sorted(v.edits) for v in listing.variants} == {
        "default": [1201],
        "formal": [1201, 2048],
    }
    assert await ctx.service.variants.delete(session, "formal", alice) == "default"
    with pytest.raises(UserInputError, match="cannot be deleted"):
        await ctx.service.variants.delete(session, "default", alice)
    with pytest.raises(UserInputError, match="Variant names are 1-32 characters"):
        await ctx.service.variants.create(session, "no spaces", alice)


async def test_export_loads_in_goodfire_and_imports_back(ctx, session, alice):
    await ctx.service.steering.steer(session, [("pirate", 0.5), ("cats", -0.25)], alice)
    exported = await ctx.service.variants.export_json(session)
    sdk_variant = goodfire.Variant.from_json(json.dumps(exported))
    assert sorted(f.index_in_sae for f in sdk_variant.edits._edits) == [1201, 3001]
    imported = await ctx.service.variants.import_json(session, "copy", json.dumps(exported), alice)
    assert {i: e.value for i, e in imported.edits.items()} == {1201: 0.5, 3001: -0.25}
    before = database_rows(ctx)
    for bad in (
        "{",
        '{"edits": 1}',
        '{"base_model": "m", "edits": [{"index_in_sae": 1, "value": 9}]}',
    ):
        with pytest.raises(UserInputError):
            await ctx.service.variants.import_json(session, "bad", bad, alice)
    assert database_rows(ctx) == before


async def test_reset_scopes(ctx, session, alice):
    await ctx.service.steering.steer(session, [("pirate", 0.5)], alice)
    await collect(ctx, session, alice, "hello")
    await ctx.service.variants.create(session, "other", alice)
    assert "steering" in await ctx.service.steering.reset(session, "steering", alice)
    assert (await ctx.service.variants.active(session)).edits == {}
    summary = await ctx.service.steering.reset(session, "all", alice)
    assert summary == "Reset everything: steering, variants and 2 messages of history."
    listing = await ctx.service.variants.list(session)
    assert [v.name for v in listing.variants] == ["default"] and listing.active == "default"
    actions = [e.action for e in await ctx.service.steering.audit_log(session)]
    assert actions[0] == "steer.reset" and "history.clear" in actions and "steer" in actions


async def test_stream_dying_halfway_keeps_partial_reply_and_reports(
    ctx, fake_ember, session, alice
):
    fake_ember.reply_text = "one two three four five six seven"
    fake_ember.fail_next("/chat/completions", Fault(die_after_tokens=3))
    result, streamed = await collect(ctx, session, alice, "count")
    assert isinstance(result.error, BackendUnavailableError)
    assert result.text == streamed and 0 < len(streamed) < len(fake_ember.reply_text)
    history = await ctx.service._store.recent_messages(session, 10)
    assert [m.role for m in history] == ["user", "assistant"] and history[1].content == streamed


async def test_turns_in_one_channel_are_serialized_other_channels_run_concurrently(
    ctx, fake_ember, alice
):
    a, b = SessionKey("t", "w", "a"), SessionKey("t", "w", "b")
    for key in (a, b):
        await ctx.service.variants.active(key)
    fake_ember.fail_next("/chat/completions", *[Fault(delay=0.3)] * 3)
    started = asyncio.get_running_loop().time()
    await asyncio.gather(
        collect(ctx, a, alice, "x"), collect(ctx, a, alice, "y"), collect(ctx, b, alice, "z")
    )
    elapsed = asyncio.get_running_loop().time() - started
    assert 0.6 <= elapsed < 0.85  # two serialized turns in a, b alongside
    history_a = await ctx.service._store.recent_messages(a, 10)
    assert [m.role for m in history_a] == ["user", "assistant", "user", "assistant"]


async def test_inspect_ranks_features_of_last_exchange(ctx, fake_ember, session, alice):
    with pytest.raises(UserInputError, match="Nothing to inspect yet"):
        await ctx.service.inspection.top_features(session)
    fake_ember.reply_text = "Arr matey, the pirate ship sets sail!"
    await collect(ctx, session, alice, "talk like a pirate")
    activations, exchange = await ctx.service.inspection.top_features(session, 3)
    assert [m.role for m in exchange] == ["user", "assistant"]
    assert activations[0].feature.label == "pirate speech"
    strengths = [a.activation for a in activations]
    assert strengths == sorted(strengths, reverse=True)


async def test_oversized_and_empty_messages_are_refused(ctx, session, alice):
    with pytest.raises(UserInputError, match="limited to 4000 characters"):
        await collect(ctx, session, alice, "x" * 4001)
    with pytest.raises(UserInputError, match="Say something"):
        await collect(ctx, session, alice, "   ")


async def test_steer_permission_is_enforced_in_code(ctx, session):
    bob = Actor("u2", "Bob")
    reply = await run_text_command(ctx, "/steer pirate 0.5", session, bob, can_steer=False)
    assert reply.is_error and "permission" in reply.text
    assert (await ctx.service.variants.active(session)).edits == {}


async def test_concurrent_steering_in_one_channel_keeps_every_confirmed_change(ctx, session, alice):
    bob = Actor("u2", "Bob")
    replies = await asyncio.gather(
        run_text_command(ctx, "/steer pirate 0.5", session, alice),
        run_text_command(ctx, "/steer formal 0.3", session, bob),
        run_text_command(ctx, "/steer cats -0.2", session, alice),
    )
    assert not any(reply.is_error for reply in replies)
    edits = (await ctx.service.variants.active(session)).edits
    assert {i: e.value for i, e in edits.items()} == {1201: 0.5, 2048: 0.3, 3001: -0.2}


async def test_channel_locks_are_forgotten_when_idle():
    from bot.usecases.keyed_locks import KeyedLocks

    locks = KeyedLocks()
    order: list[str] = []

    async def hold(name: str) -> None:
        async with locks.hold("channel"):
            order.append(f"{name} in")
            await asyncio.sleep(0.01)
            order.append(f"{name} out")

    await asyncio.gather(hold("a"), hold("b"))
    assert order == ["a in", "a out", "b in", "b out"] and len(locks) == 0


async def test_platform_failing_mid_reply_ends_the_turn_and_keeps_what_was_shown(
    ctx, fake_ember, session, alice
):
    fake_ember.reply_text = "one two three four five six"
    shown: list[str] = []

    async def flaky_platform(delta: str) -> None:
        if len(shown) == 2:
            raise ConnectionError("platform API down")
        shown.append(delta)

    result = await ctx.service.chat.turn(session, alice, "count", flaky_platform)
    assert isinstance(result.error, DeliveryFailedError)
    assert result.text.startswith("".join(shown)) and result.text != fake_ember.reply_text
    history = await ctx.service._store.recent_messages(session, 10)
    assert [m.role for m in history] == ["user", "assistant"]


async def test_history_too_long_for_the_model_falls_back_to_the_new_message(
    tmp_path, tiny_server, session, alice
):
    from bot.app import open_context
    from bot.settings import Settings

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        goodfire_base_url=tiny_server.base_url,
        database_url=f"sqlite:///{tmp_path / 'long.db'}",
        history_max_chars=200_000,
        max_completion_tokens=8,
    )
    async with open_context(settings) as context:
        await context.service.variants.active(session)
        store = context.service._store
        for _ in range(12):  # far beyond the tiny model's 2,048-token context
            await store.append_message(session, "user", "the cat sat " * 80, "Ann")
            await store.append_message(session, "assistant", "on the mat " * 80)
        result, _ = await collect(context, session, alice, "hello")
    assert result.error is None and result.text


async def test_a_vague_steer_offers_choices_instead_of_guessing(ctx, session, alice):
    reply = await run_text_command(ctx, "/steer cat dog 0.4", session, alice)
    assert not reply.is_error and reply.text.startswith('Which feature do you mean by "cat dog"?')
    assert [f.index_in_sae for f in reply.feature_choices] == [3001, 3002]
    assert "/steer #3001 0.4" in reply.text
    assert (await ctx.service.variants.active(session)).edits == {}
    reply = await run_text_command(ctx, "/steer nautical pirate 0.4", session, alice)
    assert '"talking like a pirate (nautical terms)" (#1202) +0.40' in reply.text
