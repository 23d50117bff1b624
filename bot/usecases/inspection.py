"""Inspection: which features fired over a channel's last exchange, and on which tokens."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from bot.domain.errors import UserInputError
from bot.domain.types import ChatMessage, FeatureActivation, FeatureRef, SessionKey, TokenActivation
from bot.domain.validation import validate_top_k
from bot.usecases.deps import Deps
from bot.usecases.steering import Steering
from bot.usecases.variants import Variants

if TYPE_CHECKING:
    pass

SPECIAL_TOKEN = re.compile(r"^<\|[^|]*\|>$")


class Inspection:
    def __init__(self, deps: Deps, variants: Variants, steering: Steering) -> None:
        self._store = deps.store
        self._gateway = deps.gateway
        self._settings = deps.settings
        self._slots = deps.admission.slots
        self._variants = variants
        self._steering = steering

    async def top_features(
        self, session: SessionKey, top_k: int | None = None
    ) -> tuple[list[FeatureActivation], list[ChatMessage]]:
        """The features that fired most over the channel's last exchange, strongest first."""
        top_k = validate_top_k(self._settings.inspect_top_k if top_k is None else top_k)
        variant = await self._variants.active(session)
        exchange = await self._last_exchange(session)
        async with self._slots.slot():
            activations = await self._gateway.inspect(exchange, variant.sorted_edits(), top_k=top_k)
        return activations, exchange

    async def token_activations(
        self, session: SessionKey, query: str
    ) -> tuple[FeatureRef, list[ChatMessage], list[TokenActivation]]:
        """The feature `query` names, the channel's last exchange, and how strongly the feature
        fired on each token the backend read for it (chat-template tokens included)."""
        feature = await self._steering.resolve(query)
        variant = await self._variants.active(session)
        exchange = await self._last_exchange(session)
        async with self._slots.slot():
            tokens = await self._gateway.token_activations(
                exchange, variant.sorted_edits(), feature
            )
        return feature, exchange, tokens

    async def _last_exchange(self, session: SessionKey) -> list[ChatMessage]:
        last = await self._store.recent_messages(session, 2)
        if not last:
            raise UserInputError("Nothing to inspect yet: chat with the bot first.")
        return [ChatMessage(m.role, m.content) for m in last]


def tokens_by_message(
    tokens: list[TokenActivation], messages: list[ChatMessage]
) -> list[tuple[str, list[TokenActivation]]]:
    """(role, that message's tokens) per message, leaving out the chat template's tokens.

    The server reads the conversation through its chat template; each message's text is found
    in the tokens' concatenation, in order. When a message cannot be found (a tokenizer whose
    pieces do not spell the text back), all tokens but special ones come back as one group.
    """
    text = "".join(t.token for t in tokens)
    spans, offset = [], 0
    for token in tokens:
        spans.append((offset, offset + len(token.token)))
        offset += len(token.token)
    groups: list[tuple[str, list[TokenActivation]]] = []
    cursor = 0
    for message in messages:
        start = text.find(message.content, cursor)
        if start < 0 or not message.content:
            return [("text", [t for t in tokens if not SPECIAL_TOKEN.match(t.token)])]
        end = cursor = start + len(message.content)
        inside = [
            t
            for t, (first, last) in zip(tokens, spans, strict=True)
            if first < end and last > start
        ]
        groups.append((message.role, inside))
    return groups
