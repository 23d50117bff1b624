"""Slack's assistant threads (the app's split-view pane): suggested prompts that show off steering.

When someone opens a thread with the bot, Slack sends assistant_thread_started and the bot
offers up to four prompts: a chat under the thread's current steering, and prompts around the
features steered most often in that conversation (from its audit log), else around a few
examples. Messages in the thread are answered like any DM (chat.py), streamed natively with
the thread's status set while the reply is prepared.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncAssistant
from slack_bolt.context.set_suggested_prompts.async_set_suggested_prompts import (
    AsyncSetSuggestedPrompts,
)
from slack_sdk.errors import SlackApiError

from bot.commands.registry import CommandContext
from bot.commands.render import shorten
from bot.domain.summary import edits_summary
from bot.domain.types import SessionKey, VariantState

log = logging.getLogger(__name__)

PLATFORM = "slack"
MAX_PROMPTS = 4
TITLE_CHARS = 75
PROMPTS_TITLE = "Try steering:"
EXAMPLE_FEATURES = ("pirate speech", "formal writing")  # when nobody has steered here yet
HISTORY_LOOKED_AT = 50  # audit entries read to find the popular features


def suggested_prompts(variant: VariantState, popular: list[str]) -> list[dict[str, str]]:
    """Prompts for a new thread: one under the current steering, then one per popular feature."""
    prompts = []
    if variant.edits:
        prompts.append(
            {
                "title": shorten(f"Chat steered by {edits_summary(variant)}", TITLE_CHARS),
                "message": "Tell me about your weekend, in three sentences.",
            }
        )
    else:
        prompts.append(
            {"title": "Chat with the unsteered model", "message": "Tell me about your weekend."}
        )
    for label in (popular or list(EXAMPLE_FEATURES))[: MAX_PROMPTS - 1]:
        prompts.append(
            {
                "title": shorten(f"What would steering “{label}” change?", TITLE_CHARS),
                "message": f"Describe a sunset. (Then try /steer {label} 0.8 and ask again.)",
            }
        )
    return prompts


class SlackAssistant:
    def __init__(self, ctx: CommandContext) -> None:
        self._ctx = ctx

    def register(self, app: AsyncApp) -> None:
        assistant = AsyncAssistant()
        assistant.thread_started(self.on_thread_started)
        assistant.thread_context_changed(self.on_context_changed)
        app.use(assistant)

    async def on_thread_started(
        self,
        event: dict[str, Any],
        body: dict[str, Any],
        set_suggested_prompts: AsyncSetSuggestedPrompts,
    ) -> None:
        thread = event["assistant_thread"]
        session = SessionKey(PLATFORM, body.get("team_id") or "", thread["channel_id"])
        variant = await self._ctx.service.variants.active(session)
        popular = await self.popular_features(session)
        try:
            await set_suggested_prompts(
                prompts=suggested_prompts(variant, popular), title=PROMPTS_TITLE
            )
        except SlackApiError as error:
            log.info("Slack refused the suggested prompts: %s", error.response.get("error"))

    async def on_context_changed(self) -> None:
        """The channel the person is viewing changed; the thread keeps its own session."""

    async def popular_features(self, session: SessionKey) -> list[str]:
        """The labels of the features steered most often in this conversation."""
        entries = await self._ctx.service.steering.audit_log(session, HISTORY_LOOKED_AT)
        counts: Counter[str] = Counter(
            label
            for entry in entries
            if entry.action in ("steer", "autosteer.apply")
            for label, value in entry.detail.get("set", {}).values()
            if value
        )
        return [label for label, _ in counts.most_common(MAX_PROMPTS - 1)]
