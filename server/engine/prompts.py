"""Conversations into token ids through the model's chat template, and token ids back to text."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

from jinja2.exceptions import TemplateError

TOKEN_TEXTS_KEPT = 65536

Purpose = Literal["generate", "score", "read"]


class PromptError(ValueError):
    """The conversation cannot be fed to the model (template refused it, or it is too long)."""


class ChatPrompts:
    def __init__(self, tokenizer: Any, context_length: int) -> None:
        # Any: transformers types its results as unions over every return mode.
        self.tokenizer: Any = tokenizer
        self.context_length = context_length
        # Reports name every token of a conversation; the tokenizer's decode is slow per call.
        self._token_text = functools.lru_cache(maxsize=TOKEN_TEXTS_KEPT)(self._decode_token)

    def encode(self, messages: Sequence[dict[str, str]], purpose: Purpose) -> list[int]:
        """Token ids of `messages` through the chat template.

        `generate` opens a new assistant turn; `score` continues a final assistant message (or
        opens a turn after a user message) so the next-token logits are the reply's; `read` is
        the conversation as it stands.
        """
        text = self._render(list(messages), purpose)
        ids = list(self.tokenizer(text, add_special_tokens=False).input_ids)
        if len(ids) >= self.context_length:
            raise PromptError(
                f"The conversation is {len(ids)} tokens; this model reads at most "
                f"{self.context_length - 1}. Shorten it or start a new one."
            )
        return ids

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [self._token_text(token_id) for token_id in ids]

    def _decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _render(self, messages: list[dict[str, str]], purpose: Purpose) -> str:
        ends_with_reply = messages[-1]["role"] == "assistant"
        options = {
            "add_generation_prompt": purpose == "generate"
            or (purpose == "score" and not ends_with_reply),
            "continue_final_message": purpose == "score" and ends_with_reply,
        }
        try:
            return self._apply_template(messages, options)
        except TemplateError as error:
            if messages[0]["role"] != "system" or len(messages) < 2:
                raise PromptError(f"The model's chat template refused this: {error}") from error
            # Some templates (Gemma's) have no system role: fold it into the first turn.
            merged = {
                **messages[1],
                "content": f"{messages[0]['content']}\n\n{messages[1]['content']}",
            }
            return self._render([merged, *messages[2:]], purpose)

    def _apply_template(self, messages: list[dict[str, str]], options: dict[str, bool]) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, **options)
        except ValueError:
            if not options["continue_final_message"]:
                raise
            # The template reshapes the final message, so it cannot be continued in place.
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
