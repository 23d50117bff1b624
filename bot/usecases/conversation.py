"""Turning stored history into the message list one chat request sends."""

from __future__ import annotations

from bot.domain.types import ChatMessage
from storage.store import StoredMessage

MAX_API_MESSAGES = 128  # the Ember API's limit, our system prompt included


def speaker_line(message: StoredMessage) -> str:
    """User messages carry their author so the model can tell people apart."""
    if message.role == "user" and message.author:
        return f"{message.author}: {message.content}"
    return message.content


def build_messages(
    system_prompt: str,
    history: list[StoredMessage],
    *,
    max_messages: int,
    max_chars: int,
) -> list[ChatMessage]:
    """System prompt plus the newest history that fits both budgets, oldest first.

    The newest message is always kept. Consecutive messages of one role are merged, since
    several chat templates insist that user and assistant turns alternate.
    """
    limit = min(max_messages, MAX_API_MESSAGES - 1)
    kept: list[ChatMessage] = []
    used = 0
    for message in reversed(history):
        text = speaker_line(message)
        if kept and (len(kept) >= limit or used + len(text) > max_chars):
            break
        kept.append(ChatMessage(message.role, text))
        used += len(text)
    kept.reverse()
    while kept and kept[0].role == "assistant":
        kept.pop(0)
    return [ChatMessage("system", system_prompt), *_merge_same_role(kept)]


def _merge_same_role(messages: list[ChatMessage]) -> list[ChatMessage]:
    merged: list[ChatMessage] = []
    for message in messages:
        if merged and merged[-1].role == message.role:
            merged[-1] = ChatMessage(message.role, f"{merged[-1].content}\n\n{message.content}")
        else:
            merged.append(message)
    return merged
