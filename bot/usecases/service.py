"""EmberService: sessions, named variants, steering, inspection and chat — no platform, no SQL.

It also admits the work: per-user and per-channel rate limits, one fair queue for backend calls,
the lifecycle (no new work while shutting down), metrics, and log context for every turn.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from bot.domain.errors import (
    DeliveryFailedError,
    EmberBotError,
    InvalidRequestError,
    UserInputError,
)
from bot.domain.types import (
    ChatMessage,
    FeatureActivation,
    FeatureEdit,
    FeatureRef,
    SamplingOptions,
    TokenActivation,
    VariantState,
)
from bot.domain.variant_json import from_sdk_json, to_sdk_json
from bot.ops.lifecycle import Lifecycle
from bot.ops.logs import log_context
from bot.ops.metrics import Metrics, TurnTimer
from bot.settings import Settings
from bot.usecases.conversation import build_messages
from bot.usecases.guards import Guards
from bot.usecases.keyed_locks import KeyedLocks
from bot.usecases.ratelimit import BackendSlots, QueueCallback, Rate, RateLimiter
from storage.health import database_problem
from storage.store import DEFAULT_VARIANT, AuditEntry, Store, StoredMessage

if TYPE_CHECKING:
    from bot.backend.gateway import EmberGateway

log = logging.getLogger(__name__)

VARIANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
INDEX_QUERY = re.compile(r"^#?(\d+)$")
RESET_SCOPES = ("steering", "history", "all")


@dataclass(frozen=True)
class SessionKey:
    """One channel on one platform: `platform:workspace:channel`."""

    platform: str
    workspace: str
    channel: str

    def __str__(self) -> str:
        return f"{self.platform}:{self.workspace}:{self.channel}"


@dataclass(frozen=True)
class Actor:
    """Who asked; recorded in the audit log."""

    user_id: str
    display_name: str

    def __str__(self) -> str:
        return f"{self.display_name} ({self.user_id})"


@dataclass
class ChatResult:
    """How a chat turn ended: the text shown, and the error that cut it short, if any."""

    text: str
    variant: VariantState
    error: EmberBotError | None = None


@dataclass
class VariantListing:
    active: str
    variants: list[VariantState] = field(default_factory=list)


def validate_steering_value(value: float) -> float:
    if not math.isfinite(value) or not -1 <= value <= 1:
        raise UserInputError(f"Steering value must be between -1 and 1, got {value:g}.")
    return 0.0 if value == 0 else float(value)


def clean_text(text: str) -> str:
    """Text that can be stored and sent: lone surrogates (unencodable) become U+FFFD."""
    return text.encode("utf-8", errors="replace").decode("utf-8") if not text.isascii() else text


def validate_query(query: str, limit: int) -> str:
    query = " ".join(clean_text(query).split())
    if not query:
        raise UserInputError("Give some words to search for, e.g. `pirate`.")
    if len(query) > limit:
        raise UserInputError(
            f"Search text is limited to {limit} characters; yours has {len(query)}."
        )
    return query


def validate_variant_name(name: str) -> str:
    name = name.strip().lower()
    if not VARIANT_NAME.match(name):
        raise UserInputError(
            "Variant names are 1-32 characters: letters, digits, '-' and '_', "
            f"starting with a letter or digit (got {name[:40]!r})."
        )
    return name


def _storable(variant: VariantState) -> VariantState:
    """JSON can escape lone surrogates ("\\ud800"), which no database or request can carry."""
    edits = {
        index: replace(
            edit,
            feature=replace(
                edit.feature,
                label=clean_text(edit.feature.label),
                uuid=clean_text(edit.feature.uuid),
            ),
        )
        for index, edit in variant.edits.items()
    }
    return replace(variant, base_model=clean_text(variant.base_model), edits=edits)


class EmberService:
    def __init__(
        self,
        store: Store,
        gateway: EmberGateway,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._gateway = gateway
        self._settings = settings
        self._turn_locks = KeyedLocks()  # one chat turn at a time per channel
        self._state_locks = KeyedLocks()  # one change of steering or variants at a time
        self.lifecycle = Lifecycle()
        self.metrics = metrics or Metrics()
        s = settings
        self._chat_limits = RateLimiter(
            "chat",
            Rate(s.chat_user_burst, s.chat_user_per_minute),
            Rate(s.chat_channel_burst, s.chat_channel_per_minute),
        )
        self._steer_limits = RateLimiter(
            "steer",
            Rate(s.steer_user_burst, s.steer_user_per_minute),
            Rate(s.steer_channel_burst, s.steer_channel_per_minute),
        )
        self._slots = BackendSlots(s.backend_max_concurrency, s.backend_max_queue)
        self.metrics.watch_slots(self._slots)
        self.guards = Guards(store, self, s.max_edits_per_variant)

    def changing_state(self, session: SessionKey) -> AbstractAsyncContextManager[None]:
        """Hold while reading, changing and saving a channel's variants, so that two changes
        at once cannot both be confirmed while one of them is lost."""
        return self._state_locks.hold(str(session))

    def admit_steering(self, session: SessionKey, actor: Actor) -> None:
        """Count one steering command against the rate limits, or raise SlowDownError."""
        self._steer_limits.admit(actor.user_id, str(session))

    async def check_health(self, seconds: float) -> dict[str, str]:
        """ "ok" or the problem, for the database (writable?) and the backend (answering?)."""
        database, backend = await asyncio.gather(
            asyncio.to_thread(database_problem, self._settings.database_path, seconds),
            self._gateway.ping(seconds),
        )
        return {"database": database or "ok", "backend": backend or "ok"}

    # --- variants ----------------------------------------------------------------------------

    async def active_variant(self, session: SessionKey) -> VariantState:
        name = await self._store.ensure_session(str(session), self._settings.ember_model or "")
        variant = await self._store.get_variant(str(session), name)
        if variant is None:  # the active variant was removed underneath us
            return await self._require_variant(session, DEFAULT_VARIANT)
        return variant

    async def list_variants(self, session: SessionKey) -> VariantListing:
        active = await self.active_variant(session)
        return VariantListing(active.name, await self._store.list_variants(str(session)))

    async def create_variant(
        self, session: SessionKey, name: str, actor: Actor, base: str | None = None
    ) -> VariantState:
        """A new named variant, empty or copied from `base`; it becomes the active one."""
        name = validate_variant_name(name)
        listing = await self.list_variants(session)
        if any(v.name == name for v in listing.variants):
            raise UserInputError(f'A variant named "{name}" already exists in this channel.')
        if len(listing.variants) >= self._settings.max_variants_per_channel:
            raise UserInputError(
                f"This channel already has {len(listing.variants)} variants, the limit. "
                "Delete one with /variant delete <name>."
            )
        source = await self._require_variant(session, validate_variant_name(base)) if base else None
        variant = VariantState(
            name,
            source.base_model if source else "",
            dict(source.edits) if source else {},
            dict(source.guards) if source else {},
        )
        await self._store.save_variant(
            str(session), variant, actor=str(actor), action="variant.create", detail={"from": base}
        )
        await self._store.set_active_variant(str(session), name, actor=str(actor))
        return variant

    async def use_variant(self, session: SessionKey, name: str, actor: Actor) -> VariantState:
        variant = await self._require_variant(session, validate_variant_name(name))
        await self._store.set_active_variant(str(session), variant.name, actor=str(actor))
        return variant

    async def delete_variant(self, session: SessionKey, name: str, actor: Actor) -> str:
        """Delete a variant; returns the variant active afterwards."""
        name = validate_variant_name(name)
        if name == DEFAULT_VARIANT:
            raise UserInputError('The "default" variant cannot be deleted; /reset clears it.')
        active = await self.active_variant(session)
        await self._require_variant(session, name)
        await self._store.delete_variant(str(session), name, actor=str(actor))
        if active.name != name:
            return active.name
        await self._store.set_active_variant(str(session), DEFAULT_VARIANT, actor=str(actor))
        return DEFAULT_VARIANT

    async def export_variant(self, session: SessionKey, name: str | None = None) -> dict[str, Any]:
        variant = (
            await self._require_variant(session, validate_variant_name(name))
            if name
            else await self.active_variant(session)
        )
        base_model = variant.base_model or await self._gateway.model_id()
        return to_sdk_json(replace(variant, base_model=base_model))

    async def import_variant(
        self, session: SessionKey, name: str, text: str, actor: Actor
    ) -> VariantState:
        """Store a variant exported as `Variant.json()` under `name` and make it active."""
        name = validate_variant_name(name)
        variant = self._parse_variant(name, text)
        listing = await self.list_variants(session)
        exists = any(v.name == name for v in listing.variants)
        if not exists and len(listing.variants) >= self._settings.max_variants_per_channel:
            raise UserInputError(
                f"This channel already has the maximum of {len(listing.variants)} variants."
            )
        variant = await self._with_feature_ids(variant)
        await self._store.save_variant(
            str(session),
            variant,
            actor=str(actor),
            action="variant.import",
            detail={"edits": len(variant.edits)},
        )
        await self._store.set_active_variant(str(session), name, actor=str(actor))
        return variant

    async def _with_feature_ids(self, variant: VariantState) -> VariantState:
        """Look up edits imported without a feature id: requests need it, and the lookup proves
        the feature exists."""
        missing = [index for index, edit in variant.edits.items() if not edit.feature.uuid]
        if not missing:
            return variant
        async with self._slots.slot():
            found = {f.index_in_sae: f for f in await self._gateway.lookup_features(missing)}
        if unknown := [index for index in missing if index not in found]:
            raise UserInputError(f"The model has no feature #{unknown[0]}; nothing was imported.")
        edits = {
            index: replace(edit, feature=found.get(index, edit.feature))
            for index, edit in variant.edits.items()
        }
        return replace(variant, edits=edits)

    def _parse_variant(self, name: str, text: str) -> VariantState:
        limit = self._settings.max_command_chars
        if len(text) > limit:
            raise UserInputError(f"Variant JSON is limited to {limit} characters; got {len(text)}.")
        try:
            variant = from_sdk_json(text, name=name, max_edits=self._settings.max_edits_per_variant)
        except (ValueError, RecursionError):  # numbers past int limits, absurd nesting
            raise UserInputError("That variant JSON could not be read.") from None
        return _storable(variant)

    async def _require_variant(self, session: SessionKey, name: str) -> VariantState:
        variant = await self._store.get_variant(str(session), name)
        if variant is None:
            names = ", ".join(v.name for v in await self._store.list_variants(str(session)))
            raise UserInputError(f'No variant named "{name}" in this channel. Variants: {names}.')
        return variant

    # --- features and steering ---------------------------------------------------------------

    async def search_features(self, query: str, top_k: int | None = None) -> list[FeatureRef]:
        top_k = self._settings.search_top_k if top_k is None else top_k
        if not 1 <= top_k <= 100:
            raise UserInputError(f"top_k must be between 1 and 100, got {top_k}.")
        query = validate_query(query, self._settings.max_query_chars)
        async with self._slots.slot():
            return await self._gateway.search_features(query, top_k)

    async def resolve_feature(self, query: str) -> FeatureRef:
        """`#123` or `123` names a feature by index; anything else is the best search match."""
        query = validate_query(query, self._settings.max_query_chars)
        async with self._slots.slot():
            if match := INDEX_QUERY.match(query):
                found = await self._gateway.lookup_features([int(match.group(1))])
            else:
                found = await self._gateway.search_features(query, 1)
        if not found:
            raise UserInputError(f'No feature matches "{query}". Try /features search <words>.')
        return found[0]

    async def steer(
        self, session: SessionKey, requests: list[tuple[str, float]], actor: Actor
    ) -> list[FeatureEdit]:
        """Set one or many features on the active variant at once; all or nothing."""
        if not requests:
            raise UserInputError("Say what to steer, e.g. /steer pirate 0.5")
        self._check_edit_limit(len(requests))
        values = [validate_steering_value(value) for _, value in requests]
        features = [await self.resolve_feature(query) for query, _ in requests]
        applied = [FeatureEdit(f, v) for f, v in zip(features, values, strict=True)]
        await self.apply_edits(session, applied, actor)
        return applied

    async def apply_edits(
        self, session: SessionKey, applied: list[FeatureEdit], actor: Actor, action: str = "steer"
    ) -> VariantState:
        """Merge resolved edits into the active variant (value 0 clears); audited as `action`."""
        variant = await self.active_variant(session)
        edits = dict(variant.edits)
        for edit in applied:
            if edit.value == 0:
                edits.pop(edit.feature.index_in_sae, None)
            else:
                edits[edit.feature.index_in_sae] = edit
        self._check_edit_limit(len(edits))
        variant = replace(variant, edits=edits)
        detail = {"set": {str(e.feature.index_in_sae): [e.feature.label, e.value] for e in applied}}
        await self._store.save_variant(
            str(session), variant, actor=str(actor), action=action, detail=detail
        )
        return variant

    async def autosteer(self, description: str) -> list[FeatureEdit]:
        """The edits the backend's AutoSteer proposes for `description`, each within [-1, 1]."""
        description = validate_query(description, self._settings.max_query_chars)
        async with self._slots.slot():
            proposed = await self._gateway.autosteer(description)
        edits = [replace(e, value=max(-1.0, min(1.0, e.value))) for e in proposed if e.value]
        return edits[: self._settings.max_edits_per_variant]

    async def reset(self, session: SessionKey, scope: str, actor: Actor) -> str:
        """Reset steering, history or all; returns a one-line summary of what changed."""
        if scope not in RESET_SCOPES:
            raise UserInputError(f"Reset what? Choose one of: {', '.join(RESET_SCOPES)}.")
        if scope == "history":
            return f"Cleared {await self._clear_history(session, actor)} messages of history."
        if scope == "steering":
            variant = await self._clear_steering(session, actor)
            return f'Cleared all steering on variant "{variant.name}".'
        cleared = await self._clear_history(session, actor)
        for variant in await self._store.list_variants(str(session)):
            if variant.name != DEFAULT_VARIANT:
                await self._store.delete_variant(str(session), variant.name, actor=str(actor))
        await self._store.set_active_variant(str(session), DEFAULT_VARIANT, actor=str(actor))
        await self._clear_steering(session, actor)
        return f"Reset everything: steering, variants and {cleared} messages of history."

    async def _clear_history(self, session: SessionKey, actor: Actor) -> int:
        await self.active_variant(session)
        return await self._store.clear_messages(str(session), actor=str(actor))

    async def _clear_steering(self, session: SessionKey, actor: Actor) -> VariantState:
        variant = replace(await self.active_variant(session), edits={}, guards={})
        await self._store.save_variant(
            str(session), variant, actor=str(actor), action="steer.reset", detail={}
        )
        return variant

    def _check_edit_limit(self, count: int) -> None:
        limit = self._settings.max_edits_per_variant
        if count > limit:
            raise UserInputError(
                f"A variant can steer at most {limit} features; this would make {count}."
            )

    async def audit_log(self, session: SessionKey, limit: int = 20) -> list[AuditEntry]:
        return await self._store.audit_entries(str(session), limit)

    async def steering_history(
        self, session: SessionKey, limit: int = 20
    ) -> tuple[list[AuditEntry], int]:
        """The newest `limit` audit entries of the channel, newest first, and how many exist."""
        entries = await self._store.audit_entries(str(session), limit)
        return entries, await self._store.count_audit_entries(str(session))

    # --- chat and inspection -----------------------------------------------------------------

    async def chat(
        self,
        session: SessionKey,
        author: Actor,
        text: str,
        on_delta: Callable[[str], Awaitable[None]],
        on_queued: QueueCallback | None = None,
    ) -> ChatResult:
        """One chat turn: store the message, stream the reply through `on_delta`, store it.

        Turns in one channel run one at a time; different channels run concurrently. Refusals
        (bad input, rate limits, a full backend queue, shutdown) raise UserInputError before
        anything is stored; while the turn waits for a backend slot, `on_queued(position)`
        hears its place in line. Backend errors do not raise: they end the turn and come back
        in `ChatResult.error` with the partial reply, and so does a shutdown cutting it short.
        """
        with log_context(session=str(session)):
            try:
                text = self._validate_message(text)
                self._chat_limits.admit(author.user_id, str(session))
                async with self.lifecycle.track(), self._turn_locks.hold(str(session)):
                    return await self._run_turn(session, author, text, on_delta, on_queued)
            except UserInputError as error:
                self.metrics.turn_refused(error)
                raise

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
        on_delta: Callable[[str], Awaitable[None]],
        on_queued: QueueCallback | None,
    ) -> ChatResult:
        timer = self.metrics.start_turn()
        key = str(session)
        async with self.lifecycle.interruptible():
            await self._slots.acquire(on_queued)
        try:
            variant = await self.active_variant(session)  # after queueing: the latest steering
            await self._store.append_message(key, "user", text, author.display_name)
            history = await self._store.recent_messages(key, self._settings.history_max_messages)
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
            self._slots.release()
        if result.text:
            await self._store.append_message(key, "assistant", result.text)
        self.metrics.turn_ended(timer, result.error)
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
        on_delta: Callable[[str], Awaitable[None]],
        timer: TurnTimer | None = None,
    ) -> tuple[str, EmberBotError | None]:
        """The reply's text as far as it got, and the error that stopped it, if any.

        `variant` None is the base model: no edits, no guards.
        """
        parts: list[str] = []
        edits, guards = (variant.sorted_edits(), variant.sorted_guards()) if variant else ([], [])
        stream = self._gateway.stream_chat(messages, edits, sampling, guards)
        try:
            with self.metrics.streaming():
                async with self.lifecycle.interruptible(), aclosing(stream):
                    async for delta in stream:
                        parts.append(delta)
                        if timer is not None:
                            timer.first_token()
                        if not await self._delivered(on_delta, delta):
                            return "".join(parts), DeliveryFailedError()
        except EmberBotError as error:
            return "".join(parts), error
        return "".join(parts), None

    @staticmethod
    async def _delivered(on_delta: Callable[[str], Awaitable[None]], delta: str) -> bool:
        """Hand a delta to the platform; False (logged) if the platform failed to take it."""
        try:
            await on_delta(delta)
        except EmberBotError:
            raise
        except Exception:  # the platform's own error: keep the text, stop generating
            log.warning("could not deliver part of a reply", exc_info=True)
            return False
        return True

    async def inspect(
        self, session: SessionKey, top_k: int | None = None
    ) -> tuple[list[FeatureActivation], list[ChatMessage]]:
        """The features that fired most over the channel's last exchange, strongest first."""
        top_k = self._settings.inspect_top_k if top_k is None else top_k
        if not 1 <= top_k <= 100:
            raise UserInputError(f"top_k must be between 1 and 100, got {top_k}.")
        variant = await self.active_variant(session)
        exchange = await self._last_exchange(session)
        async with self._slots.slot():
            activations = await self._gateway.inspect(exchange, variant.sorted_edits(), top_k=top_k)
        return activations, exchange

    async def _last_exchange(self, session: SessionKey) -> list[ChatMessage]:
        last = await self._store.recent_messages(str(session), 2)
        if not last:
            raise UserInputError("Nothing to inspect yet: chat with the bot first.")
        return [ChatMessage(m.role, m.content) for m in last]

    async def token_activations(
        self, session: SessionKey, query: str
    ) -> tuple[FeatureRef, list[ChatMessage], list[TokenActivation]]:
        """The feature `query` names, the channel's last exchange, and how strongly the feature
        fired on each token the backend read for it (chat-template tokens included)."""
        feature = await self.resolve_feature(query)
        variant = await self.active_variant(session)
        exchange = await self._last_exchange(session)
        async with self._slots.slot():
            tokens = await self._gateway.token_activations(
                exchange, variant.sorted_edits(), feature
            )
        return feature, exchange, tokens

    def admit_prompt(self, session: SessionKey, actor: Actor, text: str) -> str:
        """Check a one-off prompt (e.g. /compare) and count it against the chat rate limits."""
        text = self._validate_message(text)
        self._chat_limits.admit(actor.user_id, str(session))
        return text

    async def complete(
        self,
        prompt: str,
        variant: VariantState | None,
        seed: int,
        on_delta: Callable[[str], Awaitable[None]],
    ) -> tuple[str, EmberBotError | None]:
        """A reply to `prompt` alone (no history; nothing stored) from `variant`, or from the
        base model when None. Returns the text as far as it got and what cut it short."""
        messages = [
            ChatMessage("system", self._settings.system_prompt),
            ChatMessage("user", prompt),
        ]
        try:
            async with self.lifecycle.interruptible():
                await self._slots.acquire()
        except EmberBotError as error:
            return "", error
        try:
            sampling = replace(self._sampling(), seed=seed)
            return await self._stream_reply(messages, variant, sampling, on_delta)
        finally:
            self._slots.release()

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
