"""Issue #9 on Slack, in HTTP mode through slack-bolt against the fake Slack: /autosteer's
Apply and Cancel buttons (on the tiny self-hosted server, which has AutoSteer), /compare's two
streamed columns, generation stopped mid-stream, and files uploaded with files_upload_v2 (on
FakeEmber)."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

from PIL import Image

from adapters.slack.render import CONFIRM_BLOCK, SECTION_LIMIT
from adapters.slack.replies import INVITE_HINT
from tests.adapters.slack import test_slack_http as http_tests
from tests.adapters.slack.test_slack_http import CHANNEL, MARKER, Harness, Start, StepClock, mention
from tests.support.fake_ember import FakeEmber, Fault
from tests.support.fake_slack import SlackCall, SlackFault, form_body, interactive_body
from tests.support.server_fixtures import BackgroundServer

start = http_tests.start  # the HTTP-mode tests' fixture: a bot on the fake Slack

PIRATE = 37  # the tiny preset's planted "pirate speech" feature


# --- /autosteer: Apply / Cancel -----------------------------------------------------------------


async def autosteer(start: Start, tiny_server: BackgroundServer, **overrides: Any) -> Harness:
    return await start(goodfire_base_url=tiny_server.base_url, **overrides)


async def click(bot: Harness, blocks: list[dict[str, Any]], button: str, user: str) -> list:
    """Click `button` on the public message made of `blocks`; the response_url calls it made."""
    payload = bot.slack.block_action(blocks, button, user=user, channel=CHANNEL, ephemeral=False)
    response = await bot.post(interactive_body(payload))
    assert response.status == 200
    name = payload["response_url"].rsplit("/", 1)[1]
    return await bot.slack.wait_for(lambda: bot.slack.responses(name), what=f"answer to {button}")


async def answers(bot: Harness, first: SlackCall, count: int) -> list[SlackCall]:
    return await bot.slack.wait_for(
        lambda: len(got := bot.slack.responses(first.name)) >= count and got, what="answers"
    )


async def test_autosteer_asks_with_apply_and_cancel_and_apply_adds_the_edits(
    start: Start, tiny_server: BackgroundServer
):
    bot = await autosteer(start, tiny_server)
    [question] = await bot.command("/autosteer", "talk like a pirate")
    assert question.outcome == "ok" and question.body["response_type"] == "in_channel"
    blocks = question.body["blocks"]
    *proposal, prompt, actions = blocks
    assert "pirate speech" in "".join(b["text"]["text"] for b in proposal)
    assert prompt["text"]["text"] == "*Apply these edits?*"
    apply, cancel = actions["elements"]
    assert (apply["text"]["text"], apply["style"], cancel["text"]["text"]) == (
        "Apply",
        "primary",
        "Cancel",
    )
    assert apply["value"] == cancel["value"] and len(apply["value"]) == 24  # the token
    assert await bot.edits() == {}

    first, *_ = await click(bot, blocks, "Apply", "U1ALICE")
    replaced, announced = await answers(bot, first, 2)
    assert PIRATE in await bot.edits()
    assert replaced.body["replace_original"] is True
    assert all(b.get("block_id") != CONFIRM_BLOCK for b in replaced.body["blocks"])
    assert replaced.body["blocks"][-1]["elements"][0]["text"] == "✅ Applied by u1alice"
    assert announced.body["response_type"] == "in_channel"
    assert announced.body["text"].startswith('u1alice applied to variant "default": "pirate')


async def test_cancel_changes_nothing_and_removes_the_buttons(
    start: Start, tiny_server: BackgroundServer
):
    bot = await autosteer(start, tiny_server)
    [question] = await bot.command("/autosteer", "talk like a pirate")
    first, *_ = await click(bot, question.body["blocks"], "Cancel", "U1ALICE")
    replaced, announced = await answers(bot, first, 2)
    assert all(b.get("block_id") != CONFIRM_BLOCK for b in replaced.body["blocks"])
    assert announced.body["text"] == "u1alice cancelled the proposal; nothing changed."
    assert await bot.edits() == {}


async def test_a_click_by_someone_not_allowed_is_refused_privately_and_the_buttons_stay(
    start: Start, tiny_server: BackgroundServer
):
    bot = await autosteer(start, tiny_server, slack_overrides={"steer_users": "U3CAROL"})
    [question] = await bot.command("/autosteer", "talk like a pirate", user="U1ALICE")
    [refusal] = await click(bot, question.body["blocks"], "Apply", "U2BOB")
    assert refusal.body["response_type"] == "ephemeral"
    assert refusal.body["text"] == "Only u1alice or someone who may steer here can answer."
    assert "replace_original" not in refusal.body
    assert await bot.edits() == {}
    first, *_ = await click(bot, question.body["blocks"], "Apply", "U3CAROL")  # a steerer may
    await answers(bot, first, 2)
    assert PIRATE in await bot.edits()


# --- /compare: streamed columns -----------------------------------------------------------------


async def compare(bot: Harness, prompt: str) -> str:
    """Steer, then run /compare; returns its response_url's name."""
    await bot.command("/steer", "pirate 0.5")
    fields = bot.slack.slash_command("/compare", prompt, channel=CHANNEL)
    assert (await bot.post(form_body(fields))).status == 200
    return fields["response_url"].rsplit("/", 1)[1]


def column_texts(blocks: list[dict[str, Any]]) -> list[str]:
    """The column sections' texts (after the caption section)."""
    return [b["text"]["text"] for b in blocks[1:] if b["type"] == "section"]


async def final_columns(bot: Harness) -> Any:
    def final() -> Any:
        [message] = bot.slack.posted(CHANNEL) or [None]
        done = message and all(MARKER not in t for t in column_texts(message.blocks))
        return message if done else None

    return await bot.slack.wait_for(final, what="final columns")


async def test_compare_streams_two_sections_updated_at_most_once_a_second_then_final(
    start: Start, fake_ember: FakeEmber
):
    bot = await start(clock=StepClock(0.05))
    fake_ember.reply_text = " ".join(f"word{i} <!here>" for i in range(150))
    await compare(bot, "tell me a story")
    message = await final_columns(bot)
    assert all(call.outcome == "ok" for call in bot.slack.calls)
    gaps = [
        later - earlier for earlier, later in zip(message.times, message.times[1:], strict=False)
    ]
    assert len(message.versions) >= 4 and all(gap >= 1.0 for gap in gaps[:-1])
    caption = message.block_versions[0][0]["text"]["text"]
    assert caption.startswith("Same prompt, same seed")
    assert all(MARKER in "".join(column_texts(blocks)) for blocks in message.block_versions[:-1])
    base, steered = column_texts(message.blocks)
    assert base.startswith("*base*\nword0 &lt;!here&gt; word1")
    assert steered.startswith("*steered: default · pirate speech +0.5*\nword0")
    assert all(len(text) <= SECTION_LIMIT for text in (base, steered))
    assert base.endswith("\n… (cut here: too long to show)"), "~3,300 escaped chars do not fit"


async def test_a_generation_stopped_mid_stream_ends_its_column_with_a_note(
    start: Start, fake_ember: FakeEmber
):
    bot = await start()
    fake_ember.reply_text = "one two three four five six"
    fake_ember.fail_next("/chat/completions", Fault(abort_after_tokens=3))  # either column
    await compare(bot, "count")
    texts = [t.split("\n", 1)[1] for t in column_texts((await final_columns(bot)).blocks)]
    full, stopped = sorted(texts, key=lambda text: "⚠️" in text)
    assert full == "one two three four five six"
    text, note = stopped.split("\n\n")
    assert text == "one two three" and note.startswith("⚠️ Generation stopped")


async def test_a_chat_reply_stopped_by_a_guard_ends_with_the_reason(
    start: Start, fake_ember: FakeEmber
):
    bot = await start()
    fake_ember.reply_text = "one two three four five six"
    fake_ember.fail_next("/chat/completions", Fault(abort_after_tokens=3))
    await bot.event(mention("<@UBOT> count"), "Ev1")
    [final] = await bot.final_reply()
    text, tail = final.split("\n\n")
    note, footer = tail.split("\n")
    assert text == "one two three " and MARKER not in final
    assert note.startswith("⚠️ Generation stopped") and footer.startswith("_variant default")


async def test_where_the_bot_cannot_post_the_final_columns_come_by_response_url(start: Start):
    bot = await start()
    bot.slack.fail_next("chat.postMessage", SlackFault.rejected("not_in_channel"))
    name = await compare(bot, "hello")
    [final] = await bot.slack.wait_for(lambda: bot.slack.responses(name), what="final columns")
    assert final.body["response_type"] == "in_channel"
    *columns, hint = final.body["blocks"][1:]
    assert [c["text"]["text"].split("\n")[0] for c in columns] == [
        "*base*",
        "*steered: default · pirate speech +0.5*",
    ]
    assert hint["elements"][0]["text"] == INVITE_HINT
    assert bot.slack.api_calls("chat.update") == []


# --- files --------------------------------------------------------------------------------------


async def test_inspect_chart_is_uploaded_to_the_channel_as_a_png(start: Start):
    bot = await start()
    await bot.event(mention("<@UBOT> ahoy matey, a pirate ship!"), "Ev1")
    await bot.final_reply()
    [reply] = await bot.command("/inspect", "chart")
    assert "pirate speech" in "".join(b["text"]["text"] for b in reply.body["blocks"])
    [upload] = await bot.slack.wait_for(lambda: bot.slack.shared_files(CHANNEL), what="upload")
    assert (upload.filename, upload.title) == ("inspect.png", "inspect.png")
    content = upload.content
    assert content[:8] == b"\x89PNG\r\n\x1a\n" and content[12:16] == b"IHDR"
    width, height = struct.unpack(">II", content[16:24])
    assert 400 <= width <= 2000 and 100 <= height <= 2000
    assert Image.open(io.BytesIO(content)).size == (width, height)
    [announced] = bot.slack.api_calls("files.getUploadURLExternal")
    assert int(announced.body["length"]) == len(content)


async def test_variant_export_uploads_the_json_and_a_failed_upload_says_why(start: Start):
    bot = await start()
    await bot.command("/steer", "pirate 0.5")
    await bot.command("/variant", "export")
    [upload] = await bot.slack.wait_for(lambda: bot.slack.shared_files(CHANNEL), what="upload")
    assert upload.filename == "variant-active.json"
    assert json.loads(upload.content)["edits"][0]["index_in_sae"] == 1201

    bot.slack.fail_next("files.completeUploadExternal", SlackFault.rejected("not_in_channel"))
    [_, notice] = await bot.command("/variant", "export", responses=2)
    assert notice.body["response_type"] == "ephemeral"
    assert notice.body["text"].startswith("I couldn't attach variant-active.json here")
