"""Steering: finding features, setting them on the active variant, AutoSteer, reset, history."""

from __future__ import annotations

import re
from dataclasses import replace

from bot.domain.errors import UserInputError
from bot.domain.types import Actor, FeatureEdit, FeatureRef, SessionKey, VariantState
from bot.domain.validation import (
    INDEX_QUERY,
    RESET_SCOPES,
    validate_query,
    validate_steering_value,
    validate_top_k,
)
from bot.usecases.deps import Deps
from bot.usecases.variants import Variants
from storage.store import DEFAULT_VARIANT, AuditEntry

CHOICES = 5  # matches offered for a query that names no feature
# A query word is in a label when a label word starts with all but its last two letters (at
# least three): 'pirates' is in "pirate speech", 'happy' in "happiness and joy".
WORD = re.compile(r"[a-z0-9]+")
STEM_MIN, STEM_CUT = 3, 2


def label_has_words(label: str, query: str) -> bool:
    """Whether every word of `query` appears in `label` (word forms included)."""
    label_words = WORD.findall(label.lower())
    for word in WORD.findall(query.lower()):
        stem = word[: max(STEM_MIN, len(word) - STEM_CUT)]
        if not any(candidate.startswith(stem) for candidate in label_words):
            return False
    return True


class Steering:
    def __init__(self, deps: Deps, variants: Variants) -> None:
        self._store = deps.store
        self._gateway = deps.gateway
        self._settings = deps.settings
        self._slots = deps.admission.slots
        self._variants = variants

    async def search(self, query: str, top_k: int | None = None) -> list[FeatureRef]:
        top_k = validate_top_k(self._settings.search_top_k if top_k is None else top_k)
        query = validate_query(query, self._settings.max_query_chars)
        async with self._slots.slot():
            return await self._gateway.search_features(query, top_k)

    async def candidates(self, query: str) -> list[FeatureRef]:
        """[the feature] when `query` names one: `#123`/`123` by index, or search's best match
        when its label has every word of the query; otherwise search's best matches, in its
        order, to choose from (the server ranks by meaning, so the best match of a vague query
        is a guess: a user picks, nothing is steered blindly)."""
        query = validate_query(query, self._settings.max_query_chars)
        async with self._slots.slot():
            if match := INDEX_QUERY.match(query):
                found = await self._gateway.lookup_features([int(match.group(1))])
            else:
                found = await self._gateway.search_features(query, CHOICES)
        if not found:
            raise UserInputError(f'No feature matches "{query}". Try /features search <words>.')
        if len(found) == 1 or label_has_words(found[0].label, query):
            return found[:1]
        return found

    async def resolve(self, query: str) -> FeatureRef:
        """The feature `query` names (see `candidates`); several possible ones are an error that
        lists them."""
        found = await self.candidates(query)
        if len(found) > 1:
            choices = ", ".join(f"#{f.index_in_sae} {f.label}" for f in found[:3])
            raise UserInputError(
                f'"{query}" could be several features: {choices}. Name one by its #index.'
            )
        return found[0]

    async def steer(
        self, session: SessionKey, requests: list[tuple[str, float]], actor: Actor
    ) -> list[FeatureEdit]:
        """Set one or many features on the active variant at once; all or nothing."""
        if not requests:
            raise UserInputError("Say what to steer, e.g. /steer pirate 0.5")
        self._check_edit_limit(len(requests))
        values = [validate_steering_value(value) for _, value in requests]
        features = [await self.resolve(query) for query, _ in requests]
        applied = [FeatureEdit(f, v) for f, v in zip(features, values, strict=True)]
        await self.apply(session, applied, actor)
        return applied

    async def apply(
        self, session: SessionKey, applied: list[FeatureEdit], actor: Actor, action: str = "steer"
    ) -> VariantState:
        """Merge resolved edits into the active variant (value 0 clears); audited as `action`."""
        variant = await self._variants.active(session)
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
            session, variant, actor=str(actor), action=action, detail=detail
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
        for variant in await self._store.list_variants(session):
            if variant.name != DEFAULT_VARIANT:
                await self._store.delete_variant(session, variant.name, actor=str(actor))
        await self._store.set_active_variant(session, DEFAULT_VARIANT, actor=str(actor))
        await self._clear_steering(session, actor)
        return f"Reset everything: steering, variants and {cleared} messages of history."

    async def audit_log(self, session: SessionKey, limit: int = 20) -> list[AuditEntry]:
        return await self._store.audit_entries(session, limit)

    async def history(self, session: SessionKey, limit: int = 20) -> tuple[list[AuditEntry], int]:
        """The newest `limit` audit entries of the channel, newest first, and how many exist."""
        entries = await self._store.audit_entries(session, limit)
        return entries, await self._store.count_audit_entries(session)

    async def _clear_history(self, session: SessionKey, actor: Actor) -> int:
        await self._variants.active(session)
        return await self._store.clear_messages(session, actor=str(actor))

    async def _clear_steering(self, session: SessionKey, actor: Actor) -> VariantState:
        variant = replace(await self._variants.active(session), edits={}, guards={})
        await self._store.save_variant(
            session, variant, actor=str(actor), action="steer.reset", detail={}
        )
        return variant

    def _check_edit_limit(self, count: int) -> None:
        limit = self._settings.max_edits_per_variant
        if count > limit:
            raise UserInputError(
                f"A variant can steer at most {limit} features; this would make {count}."
            )
