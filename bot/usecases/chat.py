"""Chat with the model: one stored turn of a channel's conversation, or a one-off prompt.

Turns in one channel run one at a time; different channels run concurrently. Refusals (bad
input, rate limits, a full backend queue, shutdown) raise UserInputError before anything is
stored. Backend errors do not raise: they end the reply, which keeps the text it had.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from bot.domain.errors import (
    DeliveryFailedError,
    EmberBotError,
    InvalidRequestError,
    UserInputError,
)
from bot.domain.types import Actor, ChatMessage, SamplingOptions, SessionKey, VariantState
from bot.domain.validation import clean_text
from bot.ops.logs import log_context
from bot.ops.metrics import TurnTimer
from bot.usecases.conversation import build_messages
from bot.usecases.deps import Deps
from bot.usecases.ratelimit import QueueCallback
from bot.usecases.variants import Variants
from storage.store import StoredMessage

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

DeltaCallback = Callable[[str], Awaitable[None]]


@dataclass
class ChatResult:
    """How a chat turn ended: the text shown, and the error that cut it short, if any."""

    text: str
    variant: VariantState
    error: EmberBotError | None = None


class Chat:
    def __init__(self, deps: Deps, variants: Variants) -> None:
        self._store = deps.store
        self._gateway = deps.gateway
        self._settings = deps.settings
        self._admission = deps.admission
        self._lifecycle = deps.lifecycle
        self._metrics = deps.metrics
        self._variants = variants

    async def turn(
        self,
        session: SessionKey,
        author: Actor,
        text: str,
        on_delta: DeltaCallback,
        on_queued: QueueCallback | None = None,
    ) -> ChatResult:
        """Store the message, stream the reply through `on_delta`, store the reply.

        While the turn waits for a backend slot, `on_queued(position)` hears its place in
        line. A shutdown cutting the reply short comes back in `ChatResult.error`.
        """
        with log_context(session=str(session)):
            try:
                text = self._validate_message(text)
                await self._admission.admit_chat(session, author)
                async with self._lifecycle.track(), self._admission.one_turn_at_a_time(session):
                    return await self._run_turn(session, author, text, on_delta, on_queued)
            except UserInputError as error:
                self._metrics.turn_refused(error)
                raise

    async def admit_prompt(self, session: SessionKey, actor: Actor, text: str) -> str:
        """Check a one-off prompt (e.g. /compare) and count it against the chat rate limits."""
        text = self._validate_message(text)
        await self._admission.admit_chat(session, actor)
        return text

    async def complete(
        self, prompt: str, variant: VariantState | None, seed: int, on_delta: DeltaCallback
    ) -> tuple[str, EmberBotError | None]:
        """A reply to `prompt` alone (no history; nothing stored) from `variant`, or from the
        base model when None. Returns the text as far as it got and what cut it short."""
        messages = [
            ChatMessage("system", self._settings.system_prompt),
            ChatMessage("user", prompt),
        ]
        slots = self._admission.slots
        try:
            async with self._lifecycle.interruptible():
                await slots.acquire()
        except EmberBotError as error:
            return "", error
        try:
            sampling = replace(self._sampling(), seed=seed)
            return await self._stream_reply(messages, variant, sampling, on_delta)
        finally:
            slots.release()

    def _validate_message(self, text: str) -> str:
        text = clean_text(text).strip()
        if not text:
            raise UserInputError("Say something to chat with the model.")
        limit = self._settings.max_message_chars
        if len(text) > limit:
            raise UserInputError(
                f"Messages are limited to {limit} characters; yours has {len(text)}."
            )
        return text

    async def _run_turn(
        self,
        session: SessionKey,
        author: Actor,
        text: str,
        on_delta: DeltaCallback,
        on_queued: QueueCallback | None,
    ) -> ChatResult:
        timer = self._metrics.start_turn()
        slots = self._admission.slots
        async with self._lifecycle.interruptible():
            await slots.acquire(on_queued)
        try:
            variant = await self._variants.active(session)  # after queueing: the latest steering
            await self._store.append_message(session, "user", text, author.display_name)
            history = await self._store.recent_messages(
                session, self._settings.history_max_messages
            )
            messages = self._request_messages(history)
            result = ChatResult("", variant)
            result.text, result.error = await self._stream_reply(
                messages, variant, self._sampling(), on_delta, timer
            )
            if isinstance(result.error, InvalidRequestError) and not result.text and history[:-1]:
                # Most often the history outgrew the model's context: answer the new message
                # on its own rather than failing every turn until someone resets the history.
                log.info("backend refused the history (%s); retrying without it", result.error)
                result.text, result.error = await self._stream_reply(
                    [messages[0], messages[-1]], variant, self._sampling(), on_delta, timer
                )
        finally:
            slots.release()
        if result.text:
            await self._store.append_message(session, "assistant", result.text)
        self._metrics.turn_ended(timer, result.error)
        log.info(
            "chat turn by %s ended: %s",
            author.user_id,
            type(result.error).__name__ if result.error else "ok",
        )
        return result

    async def _stream_reply(
        self,
        messages: list[ChatMessage],
        variant: VariantState | None,
        sampling: SamplingOptions,
        on_delta: DeltaCallback,
        timer: TurnTimer | None = None,
    ) -> tuple[str, EmberBotError | None]:
        """The reply's text as far as it got, and the error that stopped it, if any.

        `variant` None is the base model: no edits, no guards.
        """
        parts: list[str] = []
        edits, guards = (variant.sorted_edits(), variant.sorted_guards()) if variant else ([], [])
        stream = self._gateway.stream_chat(messages, edits, sampling, guards)
        try:
            with self._metrics.streaming():
                async with self._lifecycle.interruptible(), aclosing(stream):
                    async for delta in stream:
                        parts.append(delta)
                        if timer is not None:
                            timer.first_token()
                        if not await _delivered(on_delta, delta):
                            return "".join(parts), DeliveryFailedError()
        except EmberBotError as error:
            return "".join(parts), error
        return "".join(parts), None

    def _request_messages(self, history: list[StoredMessage]) -> list[ChatMessage]:
        return build_messages(
            self._settings.system_prompt,
            history,
            max_messages=self._settings.history_max_messages,
            max_chars=self._settings.history_max_chars,
        )

    def _sampling(self) -> SamplingOptions:
        return SamplingOptions(
            max_tokens=self._settings.max_completion_tokens,
            temperature=self._settings.temperature,
            top_p=self._settings.top_p,
        )


async def _delivered(on_delta: DeltaCallback, delta: str) -> bool:
    """Hand a delta to the platform; False (logged) if the platform failed to take it."""
    try:
        await on_delta(delta)
    except EmberBotError:
        raise
    except Exception:  # the platform's own error: keep the text, stop generating
        log.warning("could not deliver part of a reply", exc_info=True)
        return False
    return True
