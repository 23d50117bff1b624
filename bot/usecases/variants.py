"""A channel's named variants: the active one, creating, switching, deleting, export and import."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from bot.domain.errors import UserInputError
from bot.domain.types import Actor, SessionKey, VariantState
from bot.domain.validation import storable, validate_variant_name
from bot.domain.variant_json import from_sdk_json, to_sdk_json
from bot.usecases.deps import Deps
from storage.store import DEFAULT_VARIANT

if TYPE_CHECKING:
    pass


@dataclass
class VariantListing:
    active: str
    variants: list[VariantState] = field(default_factory=list)


class Variants:
    def __init__(self, deps: Deps) -> None:
        self._store = deps.store
        self._gateway = deps.gateway
        self._settings = deps.settings
        self._slots = deps.admission.slots

    async def active(self, session: SessionKey) -> VariantState:
        variant = await self._store.active_variant(session, self._settings.ember_model or "")
        if variant is None:  # the active variant was removed underneath us
            return await self.require(session, DEFAULT_VARIANT)
        return variant

    async def list(self, session: SessionKey) -> VariantListing:
        active = await self.active(session)
        return VariantListing(active.name, await self._store.list_variants(session))

    async def create(
        self, session: SessionKey, name: str, actor: Actor, base: str | None = None
    ) -> VariantState:
        """A new named variant, empty or copied from `base`; it becomes the active one."""
        name = validate_variant_name(name)
        listing = await self.list(session)
        if any(v.name == name for v in listing.variants):
            raise UserInputError(f'A variant named "{name}" already exists in this channel.')
        if len(listing.variants) >= self._settings.max_variants_per_channel:
            raise UserInputError(
                f"This channel already has {len(listing.variants)} variants, the limit. "
                "Delete one with /variant delete <name>."
            )
        source = await self.require(session, validate_variant_name(base)) if base else None
        variant = VariantState(
            name,
            source.base_model if source else "",
            dict(source.edits) if source else {},
            dict(source.guards) if source else {},
        )
        await self._store.save_variant(
            session, variant, actor=str(actor), action="variant.create", detail={"from": base}
        )
        await self._store.set_active_variant(session, name, actor=str(actor))
        return variant

    async def use(self, session: SessionKey, name: str, actor: Actor) -> VariantState:
        variant = await self.require(session, validate_variant_name(name))
        await self._store.set_active_variant(session, variant.name, actor=str(actor))
        return variant

    async def delete(self, session: SessionKey, name: str, actor: Actor) -> str:
        """Delete a variant; returns the variant active afterwards."""
        name = validate_variant_name(name)
        if name == DEFAULT_VARIANT:
            raise UserInputError('The "default" variant cannot be deleted; /reset clears it.')
        active = await self.active(session)
        await self.require(session, name)
        await self._store.delete_variant(session, name, actor=str(actor))
        if active.name != name:
            return active.name
        await self._store.set_active_variant(session, DEFAULT_VARIANT, actor=str(actor))
        return DEFAULT_VARIANT

    async def export_json(self, session: SessionKey, name: str | None = None) -> dict[str, Any]:
        variant = (
            await self.require(session, validate_variant_name(name))
            if name
            else await self.active(session)
        )
        base_model = variant.base_model or await self._gateway.model_id()
        return to_sdk_json(replace(variant, base_model=base_model))

    async def import_json(
        self, session: SessionKey, name: str, text: str, actor: Actor
    ) -> VariantState:
        """Store a variant exported as `Variant.json()` under `name` and make it active."""
        name = validate_variant_name(name)
        variant = self._parse(name, text)
        listing = await self.list(session)
        exists = any(v.name == name for v in listing.variants)
        if not exists and len(listing.variants) >= self._settings.max_variants_per_channel:
            raise UserInputError(
                f"This channel already has the maximum of {len(listing.variants)} variants."
            )
        variant = await self._with_feature_ids(variant)
        await self._store.save_variant(
            session,
            variant,
            actor=str(actor),
            action="variant.import",
            detail={"edits": len(variant.edits)},
        )
        await self._store.set_active_variant(session, name, actor=str(actor))
        return variant

    async def require(self, session: SessionKey, name: str) -> VariantState:
        variant = await self._store.get_variant(session, name)
        if variant is None:
            names = ", ".join(v.name for v in await self._store.list_variants(session))
            raise UserInputError(f'No variant named "{name}" in this channel. Variants: {names}.')
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

    def _parse(self, name: str, text: str) -> VariantState:
        limit = self._settings.max_command_chars
        if len(text) > limit:
            raise UserInputError(f"Variant JSON is limited to {limit} characters; got {len(text)}.")
        try:
            variant = from_sdk_json(text, name=name, max_edits=self._settings.max_edits_per_variant)
        except (ValueError, RecursionError):  # numbers past int limits, absurd nesting
            raise UserInputError("That variant JSON could not be read.") from None
        return storable(variant)
