"""How a variant's steering is summed up for people: the footer under every reply."""

from __future__ import annotations

from bot.domain.types import VariantState


def steering_footer(variant: VariantState) -> str:
    """One line naming the active variant, its edits and guards, for reply footers."""
    guards = [f"guard {g.feature.label} > {g.threshold:g}" for g in variant.sorted_guards()]
    return " · ".join([f"variant {variant.name}", edits_summary(variant), *guards[:2]])


def edits_summary(variant: VariantState) -> str:
    """ "pirate speech +0.5, cats -0.3" (the four strongest), or "unsteered"."""
    if not variant.edits:
        return "unsteered"
    edits = ", ".join(f"{e.feature.label} {e.value:+.2g}" for e in variant.sorted_edits()[:4])
    more = len(variant.edits) - 4
    return edits + (f" (+{more} more)" if more > 0 else "")
