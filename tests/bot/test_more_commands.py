"""Issue #9 at the handler and service level: the real registry, service, store, gateway and
goodfire SDK against the loopback FakeEmber."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from dataclasses import replace

import goodfire
import pytest
from PIL import Image

from bot.app import open_context
from bot.commands.catalog import build_registry
from bot.commands.confirmations import ProposalBook, answer, proposals
from bot.commands.parsing import coerce_options
from bot.commands.registry import Command, CommandContext, Invocation
from bot.commands.replies import Reply
from bot.commands.runner import run_command, run_text_command
from bot.domain.errors import GenerationAbortedError
from bot.domain.summary import steering_footer
from bot.domain.types import (
    Actor,
    ChatMessage,
    FeatureEdit,
    FeatureRef,
    Guard,
    SessionKey,
    TokenActivation,
)
from bot.usecases.inspection import tokens_by_message
from storage.migrations import MIGRATIONS
from storage.store import Store
from tests.support.fake_ember import FakeEmber, Fault

BOB = Actor("u2", "Bob")


def assert_png(content: bytes, *, min_width: int = 400, min_height: int = 100) -> None:
    """A PNG that decodes completely, of a size a chat client shows sensibly."""
    assert content.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(content))
    assert image.format == "PNG"
    image.load()  # decodes every pixel; raises on truncated or corrupt data
    width, height = image.size
    assert min_width <= width <= 2000 and min_height <= height <= 3000
    darkest, lightest = image.convert("L").getextrema()
    assert lightest - darkest > 100  # something was drawn


async def run(ctx: CommandContext, line: str, session: SessionKey, actor: Actor, **kw) -> Reply:
    return await run_text_command(ctx, line, session, actor, **kw)


async def chat(ctx: CommandContext, session: SessionKey, actor: Actor, text: str):
    async def ignore(delta: str) -> None:
        pass

    return await ctx.service.chat.turn(session, actor, text, ignore)


# --- /compare ---------------------------------------------------------------------------------


async def test_compare_streams_base_and_steered_with_one_seed_and_no_history(
    ctx, fake_ember, session, alice
):
    await run(ctx, "/steer pirate 0.5", session, alice)
    reply = await run(ctx, "/compare tell me a pirate story", session, alice)
    assert not reply.is_error and reply.columns is not None
    assert reply.columns.titles == ("base", "steered: default · pirate speech +0.5")

    deltas: dict[int, list[str]] = {0: [], 1: []}

    async def on_delta(column: int, delta: str) -> None:
        deltas[column].append(delta)

    results = await reply.columns.run(on_delta)
    expected = "You said: tell me a pirate story"
    assert results == [(expected, None), (expected, None)]
    assert ["".join(deltas[0]), "".join(deltas[1])] == [expected, expected]
    base, steered = fake_ember.requests_to("/chat/completions")
    assert base.json["seed"] == steered.json["seed"]
    assert "controller" not in base.json
    assert fake_ember.controller_nudges(steered) == {1201: 0.5}
    assert base.json["messages"][-1] == {"role": "user", "content": "tell me a pirate story"}
    assert await ctx.service._store.recent_messages(str(session), 10) == []


async def test_compare_columns_stream_at_the_same_time(ctx, fake_ember, session, alice):
    await run(ctx, "/steer pirate 0.5", session, alice)
    fake_ember.reply_text = "one two three four"
    reply = await run(ctx, "/compare count", session, alice)
    assert reply.columns is not None
    started = [asyncio.Event(), asyncio.Event()]

    async def on_delta(column: int, delta: str) -> None:
        # Each column's first delta waits for the other's: one-by-one streaming never ends.
        started[column].set()
        await asyncio.wait_for(started[1 - column].wait(), timeout=5)

    results = await reply.columns.run(on_delta)
    assert results == [("one two three four", None)] * 2


async def test_one_failing_column_leaves_the_other(ctx, fake_ember, session, alice):
    await run(ctx, "/steer pirate 0.5", session, alice)
    fake_ember.fail_next("/chat/completions", Fault(status=422))  # not retried
    reply = await run(ctx, "/compare hi", session, alice)
    assert reply.columns is not None
    results = await reply.columns.run(lambda column, delta: asyncio.sleep(0))
    texts = sorted(text for text, _ in results)
    errors = [error for _, error in results if error is not None]
    assert texts == ["", "You said: hi"]
    assert [e.user_message.startswith("The model backend refused") for e in errors] == [True]


async def test_compare_needs_steering_and_respects_the_chat_rate_limit(
    settings, fake_ember, session, alice
):
    limited = settings.model_copy(update={"chat_user_burst": 1, "chat_user_per_minute": 1})
    async with open_context(limited) as ctx:
        reply = await run(ctx, "/compare hi", session, alice)
        assert reply.is_error and "not steered" in reply.text
        await run(ctx, "/steer pirate 0.5", session, alice)
        assert (await run(ctx, "/compare hi", session, alice)).columns is not None
        refused = await run(ctx, "/compare again", session, alice)
        assert refused.is_error and refused.text.startswith("Slow down")
    assert fake_ember.requests_to("/chat/completions") == []  # nothing ran the columns


async def test_compare_columns_wait_for_backend_slots(settings, fake_ember, session, alice):
    one_slot = settings.model_copy(update={"backend_max_concurrency": 1})
    async with open_context(one_slot) as ctx:
        await run(ctx, "/steer pirate 0.5", session, alice)
        reply = await run(ctx, "/compare hi", session, alice)
        assert reply.columns is not None
        fake_ember.fail_next("/chat/completions", Fault(delay=0.2), Fault(delay=0.2))
        started = asyncio.get_running_loop().time()
        results = await reply.columns.run(lambda column, delta: asyncio.sleep(0))
        assert asyncio.get_running_loop().time() - started >= 0.4  # queued behind each other
    assert [error for _, error in results] == [None, None]


# --- /guard -----------------------------------------------------------------------------------


async def test_guard_is_sent_as_an_abort_scope_and_persists(
    ctx, settings, fake_ember, session, alice
):
    reply = await run(ctx, "/guard pirate 0.5", session, alice)
    assert reply.text == (
        'Alice guarded variant "default": replies stop when "pirate speech" (#1201) '
        "fires above 0.5."
    )
    await chat(ctx, session, alice, "hello")
    controller = fake_ember.last_chat_request().json["controller"]
    assert controller["interventions"] == []
    [scope] = controller["scopes"]
    assert scope["event_name"] == "guard:1201"
    [condition] = scope["conditionals"]["conditionals"]
    assert (condition["operator"], condition["right_hand"]) == (">", 0.5)
    assert condition["left_hand"]["features"][0]["index_in_sae"] == 1201

    async with open_context(settings) as reopened:
        listing = await run(reopened, "/guard list", session, alice)
        shown = await run(reopened, "/features", session, alice)
    assert '"pirate speech" (#1201) > 0.5' in listing.text
    assert 'Guards: stops if "pirate speech" > 0.5' in shown.text


async def test_guard_footer_clear_and_permissions(ctx, session, alice):
    await run(ctx, "/steer cats 0.3", session, alice)
    await run(ctx, "/guard set pirate 1.5", session, alice)
    await run(ctx, "/guard #3002 2", session, alice)
    result = await chat(ctx, session, alice, "hi")
    assert steering_footer(result.variant) == (
        "variant default · cats +0.3 · guard pirate speech > 1.5 · guard dogs > 2"
    )
    refused = await run(ctx, "/guard clear", session, BOB, can_steer=False)
    assert refused.is_error and "permission" in refused.text
    assert (await run(ctx, "/guard clear pirate", session, alice)).text == (
        'Removed the guard on "pirate speech" (#1201).'
    )
    assert (await run(ctx, "/guard clear", session, alice)).text == (
        'Removed the guard on "dogs" (#3002).'
    )
    assert (await run(ctx, "/guard clear", session, alice)).text == (
        'Variant "default" has no guards.'
    )
    for line, message in [
        ("/guard pirate", "Say which feature and the threshold, e.g. /guard pirate 0.5"),
        ("/guard pirate -1", "Threshold must be between 0 and 1e+06, got -1."),
        ("/guard xyzzy 1", 'No feature matches "xyzzy". Try /features search <words>.'),
    ]:
        assert (await run(ctx, line, session, alice)).text == message


async def test_an_unknown_abort_event_still_ends_the_reply_with_a_note(
    ctx, fake_ember, session, alice
):
    fake_ember.reply_text = "one two three four"
    fake_ember.fail_next("/chat/completions", Fault(abort_after_tokens=2))
    result = await chat(ctx, session, alice, "count")
    assert isinstance(result.error, GenerationAbortedError)
    assert result.text == "one two "
    assert result.error.user_message == "Generation stopped: a guard condition fired."


async def test_reset_steering_clears_guards_and_copies_keep_them(ctx, session, alice):
    await run(ctx, "/guard pirate 1", session, alice)
    await run(ctx, "/variant new careful", session, alice)
    await run(ctx, "/variant new copy default", session, alice)
    assert list((await ctx.service.variants.active(session)).guards) == [1201]
    await run(ctx, "/reset", session, alice)
    assert (await ctx.service.variants.active(session)).guards == {}


# --- /inspect ---------------------------------------------------------------------------------


async def test_inspect_chart_attaches_a_png_of_the_top_features(ctx, fake_ember, session, alice):
    fake_ember.reply_text = "Arr matey, my cat sails the pirate ship!"
    await chat(ctx, session, alice, "talk like a pirate about cats")
    plain = await run(ctx, "/inspect 3", session, alice)
    assert plain.attachment is None and plain.table is not None
    reply = await run(ctx, "/inspect 3 chart", session, alice)
    assert reply.table == plain.table
    assert [r.label for r in reply.table.rows][0] == "pirate speech"
    attachment = reply.attachment
    assert attachment is not None
    assert (attachment.filename, attachment.content_type) == ("inspect.png", "image/png")
    assert_png(attachment.content)


async def test_inspect_feature_marks_the_tokens_that_fired(ctx, fake_ember, session, alice):
    fake_ember.reply_text = "Arr, the pirate ship is ready."
    await chat(ctx, session, alice, "hello pirate")
    reply = await run(ctx, "/inspect feature:pirate speech", session, alice)
    assert reply.text.splitlines() == [
        'Where "pirate speech" (#1201) fired in the last exchange (3 of 8 tokens; peak 2 on '
        '"pirate"):',
        "user: hello pirate⁽²·⁰⁾",
        "bot: Arr,⁽²·⁰⁾ the pirate⁽²·⁰⁾ ship is ready.",
    ]
    request = fake_ember.requests_to("/compute-features")[-1]
    assert request.json["include_feature_indexes"] == [1201]
    assert reply.attachment is None
    charted = await run(ctx, "/inspect chart:yes feature:#1201", session, alice)
    assert charted.text == reply.text
    assert charted.attachment is not None and charted.attachment.filename == "inspect-tokens.png"
    assert_png(charted.attachment.content)


async def test_inspect_feature_that_did_not_fire_and_bad_input(ctx, session, alice):
    none_yet = await run(ctx, "/inspect feature:cats", session, alice)
    assert none_yet.text == "Nothing to inspect yet: chat with the bot first."
    await chat(ctx, session, alice, "hello")
    quiet = await run(ctx, "/inspect cats", session, alice)
    assert quiet.text == '"cats" (#3001) did not fire in the last exchange.'
    assert (await run(ctx, "/inspect 0", session, alice)).text == (
        "Top must be between 1 and 50, got 0."
    )
    assert (await run(ctx, "/inspect chart:maybe", session, alice)).text == (
        "chart must be one of yes, no; got 'maybe'."
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {"top": None, "chart": "no", "feature": None}),
        ("5 chart", {"top": 5, "chart": "yes", "feature": None}),
        ("feature:pirate speech chart", {"top": None, "chart": "yes", "feature": "pirate speech"}),
        ("chart:no 3 #37", {"top": 3, "chart": "no", "feature": "#37"}),
        ("weather: rain", {"top": None, "chart": "no", "feature": "weather: rain"}),
    ],
)
def test_inspect_text_options_in_any_order(text, expected):
    command = build_registry().get(("inspect",))
    assert command is not None and command.parse_text is not None
    assert command.parse_text(command, text) == expected


def test_tokens_are_split_by_message_without_the_chat_template():
    tokens = [
        TokenActivation(text, value)
        for text, value in [
            ("<|start_header_id|>", 0),
            ("user", 0),
            ("<|end_header_id|>", 0),
            ("\n\n", 0),
            ("ahoy", 2.0),
            (" there", 0),
            ("<|eot_id|>", 0),
            ("<|start_header_id|>", 0),
            ("assistant", 0),
            ("<|end_header_id|>", 0),
            ("\n\n", 0),
            ("Arr", 1.5),
            ("<|eot_id|>", 0),
        ]
    ]
    messages = [ChatMessage("user", "ahoy there"), ChatMessage("assistant", "Arr")]
    groups = tokens_by_message(tokens, messages)
    assert [(role, [t.token for t in group]) for role, group in groups] == [
        ("user", ["ahoy", " there"]),
        ("assistant", ["Arr"]),
    ]
    unmatched = tokens_by_message(tokens, [ChatMessage("user", "something else")])
    shown = [t.token for _, group in unmatched for t in group]
    assert shown == ["user", "\n\n", "ahoy", " there", "assistant", "\n\n", "Arr"]


# --- /variant export and import ---------------------------------------------------------------


async def test_export_attaches_sdk_json_and_import_takes_a_file_or_pasted_json(ctx, session, alice):
    await run(ctx, "/steer pirate 0.5", session, alice)
    await run(ctx, "/guard cats 1", session, alice)
    exported = await run(ctx, "/variant export", session, alice)
    attachment = exported.attachment
    assert attachment is not None
    assert (attachment.filename, attachment.content_type) == (
        "variant-active.json",
        "application/json",
    )
    assert "guards are not exported" in exported.text
    sdk_variant = goodfire.Variant.from_json(attachment.content.decode())
    assert [f.index_in_sae for f in sdk_variant.edits._edits] == [1201]

    command = ctx.registry.get(("variant", "import"))
    assert command is not None
    args = {"name": "shared", "json": None, "file": attachment.content.decode()}
    reply = await run_options(ctx, command, session, alice, args)
    assert reply.text == 'Imported variant "shared" with 1 edits; it is now active.'
    line = f"/variant import pasted {json.dumps(sdk_variant.json())}"
    assert not (await run(ctx, line, session, alice)).is_error
    missing = await run_options(ctx, command, session, alice, {"name": "x", "json": None})
    assert missing.text.startswith("Paste the variant JSON after the name, or attach")
    bad_file = await run_options(ctx, command, session, alice, {"name": "x", "file": "{nope"})
    assert bad_file.is_error and bad_file.text.startswith("That is not valid JSON")


async def run_options(
    ctx: CommandContext, command: Command, session: SessionKey, actor: Actor, options: dict
) -> Reply:
    """A command run the way Discord runs it: structured options, not a line of text."""
    invocation = Invocation(session, actor, coerce_options(command, options))
    return await run_command(ctx, command, invocation)


# --- /history steering ------------------------------------------------------------------------


async def test_steering_history_is_newest_first_and_bounded(ctx, session, alice):
    assert (await run(ctx, "/history", session, alice)).text == (
        "Nobody has changed the steering in this channel yet."
    )
    await run(ctx, "/steer pirate 0.5", session, alice)
    await run(ctx, "/guard cats 1", session, BOB)
    await run(ctx, "/variant new calm", session, alice)
    lines = (await run(ctx, "/history steering", session, alice)).text.splitlines()
    assert lines[0] == "Steering changes in this channel, newest first:"
    assert [line.split(" · ", 2)[1:] for line in lines[1:]] == [
        ["Alice (u1)", 'switched to variant "calm"'],
        ["Alice (u1)", 'created variant "calm"'],
        ["Bob (u2)", 'guarded "cats" > 1 (variant default)'],
        ["Alice (u1)", 'steered "pirate speech" +0.50 (variant default)'],
    ]
    for value in range(1, 21):
        await ctx.service.steering.steer(session, [("#1201", value / 100)], alice)
    lines = (await run(ctx, "/history steering", session, alice)).text.splitlines()
    assert len(lines) == 1 + 20 + 1
    assert lines[1].endswith('steered "pirate speech" +0.20 (variant calm)')
    assert lines[-1] == "  … and 4 older changes."


# --- confirmations: the book ------------------------------------------------------------------


async def test_proposal_book_expires_bounds_and_hands_out_each_proposal_once():
    now = [0.0]
    book = ProposalBook(ttl=60, capacity=2, clock=lambda: now[0])
    session = SessionKey("t", "w", "c")
    first = await book.add(session, BOB, [])
    second = await book.add(session, BOB, [])
    assert len(first) == 24 and first != second
    third = await book.add(session, BOB, [])  # full: the oldest goes
    assert await book.get(first) is None and await book.get(second) is not None
    assert await book.take(second) is not None and await book.take(second) is None
    now[0] = 61
    assert await book.get(third) is None


# --- confirmations: answering -----------------------------------------------------------------


async def propose(
    ctx: CommandContext, fake: FakeEmber, session: SessionKey, proposer: Actor
) -> str:
    """What /autosteer leaves pending (the fake has no AutoSteer route; test_demo_tiny has)."""
    edits = [
        FeatureEdit(FeatureRef(f.index_in_sae, f.label, f.uuid), value)
        for f, value in [(fake.feature("pirate speech"), 0.4), (fake.feature("cats"), -0.2)]
    ]
    return await proposals(ctx.service).add(session, proposer, edits)


async def test_apply_goes_through_the_steering_path_once(ctx, fake_ember, session, alice):
    token = await propose(ctx, fake_ember, session, BOB)
    carol = Actor("u3", "Carol")
    stranger = await answer(ctx, token, True, Invocation(session, carol, {}, can_steer=False))
    assert stranger.is_error and stranger.text == (
        "Only Bob or someone who may steer here can answer."
    )
    elsewhere = SessionKey("test", "workspace", "other")
    moved = await answer(ctx, token, True, Invocation(elsewhere, BOB, {}))
    assert moved.text == "That proposal was made in another channel."
    no_permission = await answer(ctx, token, True, Invocation(session, BOB, {}, can_steer=False))
    assert no_permission.text == (
        "You don't have permission to use /autosteer apply in this channel."
    )
    applied = await answer(ctx, token, True, Invocation(session, alice, {}))
    assert applied.text == 'Alice applied to variant "default": "pirate speech" +0.40; "cats" -0.20'
    edits = (await ctx.service.variants.active(session)).edits
    assert {i: e.value for i, e in edits.items()} == {1201: 0.4, 3001: -0.2}
    again = await answer(ctx, token, True, Invocation(session, alice, {}))
    assert again.text == "That proposal has expired or was already answered. Run /autosteer again."
    [entry, *_] = await ctx.service.steering.audit_log(session)
    assert (entry.actor, entry.action) == ("Alice (u1)", "autosteer.apply")


async def test_the_proposer_may_cancel_without_steer_permission(ctx, fake_ember, session, alice):
    token = await propose(ctx, fake_ember, session, BOB)
    cancelled = await answer(ctx, token, False, Invocation(session, BOB, {}, can_steer=False))
    assert cancelled.text == "Bob cancelled the proposal; nothing changed."
    assert (await ctx.service.variants.active(session)).edits == {}
    late = await answer(ctx, token, True, Invocation(session, alice, {}))
    assert late.is_error and "expired" in late.text


async def test_apply_counts_against_the_steering_rate_limit(settings, fake_ember, session, alice):
    limited = settings.model_copy(update={"steer_user_burst": 1, "steer_user_per_minute": 1})
    async with open_context(limited) as ctx:
        await run(ctx, "/steer dogs 0.1", session, alice)
        token = await propose(ctx, fake_ember, session, alice)
        refused = await answer(ctx, token, True, Invocation(session, alice, {}))
        assert refused.text.startswith("Slow down")
        assert await proposals(ctx.service).get(token) is not None  # still pending


# --- storage ----------------------------------------------------------------------------------


async def test_a_version_1_database_gains_guards_and_keeps_its_variants(tmp_path):
    session = SessionKey("console", "local", "s")
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as raw:
        raw.executescript(MIGRATIONS[0] + "PRAGMA user_version=1;")
        raw.execute("INSERT INTO sessions VALUES ('console:local:s', 'default', 0)")
        edits = '[{"index_in_sae": 7, "label": "pirate", "uuid": "", "value": 0.5}]'
        raw.execute(
            "INSERT INTO variants VALUES ('console:local:s', 'default', 'm', ?, 0)", (edits,)
        )
    store = await Store.open(path)
    try:
        variant = await store.get_variant(session, "default")
        assert variant is not None and variant.guards == {} and variant.edits[7].value == 0.5
        guard = Guard(FeatureRef(7, "pirate", "u"), 1.5)
        guarded = replace(variant, guards={7: guard})
        await store.save_variant(session, guarded, actor="a", action="guard.set", detail={})
        assert await store.get_variant(session, "default") == guarded
        assert await store.count_audit_entries(session) == 1
    finally:
        await store.close()
