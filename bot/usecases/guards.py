"""Guards: a channel's active variant stops generating once a feature fires above a threshold.

A guard is stored on the variant (so it follows /variant use and copies) and sent with every
chat request as an abort scope (see the backend's `guard_scope`); the reply then ends with
GenerationAbortedError naming the guard. Exports carry edits only: the SDK's `Variant.json()`
does not round-trip conditional scopes (docs/ember-api.md §3.8).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bot.domain.errors import UserInputError
from bot.domain.types import Actor, Guard, SessionKey, VariantState, named_feature
from bot.domain.validation import validate_guard_threshold
from bot.usecases.deps import Deps
from bot.usecases.steering import Steering
from bot.usecases.variants import Variants


class Guards:
    def __init__(self, deps: Deps, variants: Variants, steering: Steering) -> None:
        self._store = deps.store
        self._variants = variants
        self._steering = steering
        self._max_guards = deps.settings.max_edits_per_variant

    async def set(self, session: SessionKey, query: str, threshold: float, actor: Actor) -> Guard:
        """Guard the active variant on the feature `query` names (replacing its old guard)."""
        threshold = validate_guard_threshold(threshold)
        variant = await self._variants.active(session)
        guard = Guard(await self._steering.resolve(query), threshold)
        guards = {**variant.guards, guard.feature.index_in_sae: guard}
        if len(guards) > self._max_guards:
            raise UserInputError(
                f"A variant can have at most {self._max_guards} guards; this would make "
                f"{len(guards)}."
            )
        detail = {
            "feature": guard.feature.index_in_sae,
            "label": guard.feature.label,
            "threshold": guard.threshold,
        }
        await self._save(session, replace(variant, guards=guards), actor, "guard.set", detail)
        return guard

    async def clear(self, session: SessionKey, query: str | None, actor: Actor) -> list[Guard]:
        """Remove the guard on the feature `query` names, or every guard; returns those removed."""
        variant = await self._variants.active(session)
        if not variant.guards:
            raise UserInputError(f'Variant "{variant.name}" has no guards.')
        removed = variant.sorted_guards()
        if query:
            guarded = [g.feature for g in removed]
            feature = named_feature(guarded, query) or await self._steering.resolve(query)
            if feature.index_in_sae not in variant.guards:
                raise UserInputError(f'There is no guard on "{feature.label}" to clear.')
            removed = [variant.guards[feature.index_in_sae]]
        kept = {i: g for i, g in variant.guards.items() if g not in removed}
        detail = {"features": [g.feature.label for g in removed]}
        await self._save(session, replace(variant, guards=kept), actor, "guard.clear", detail)
        return removed

    async def _save(
        self,
        session: SessionKey,
        variant: VariantState,
        actor: Actor,
        action: str,
        detail: dict[str, Any],
    ) -> None:
        await self._store.save_variant(
            session, variant, actor=str(actor), action=action, detail=detail
        )
