"""How commands describe features, steering tables and activations to people."""

from __future__ import annotations

from bot.commands.registry import Arg
from bot.commands.replies import Table, TableRow
from bot.domain.types import FeatureActivation, FeatureRef, VariantState

TOP_ARG = Arg(
    "top", "How many features to show (1-50)", kind="integer", required=False, minimum=1, maximum=50
)
STEER_EXAMPLES = ("/steer pirate 0.5", '/steer pirate=0.5 "formal writing"=-0.3', "/steer #1234 0")


def feature_name(feature: FeatureRef) -> str:
    return f'"{feature.label}" (#{feature.index_in_sae})'


def edits_table(variant: VariantState) -> Table:
    return Table(
        f'Steering on variant "{variant.name}"',
        [
            TableRow(e.feature.label, e.value, f"#{e.feature.index_in_sae}")
            for e in variant.sorted_edits()
        ],
        footer=guards_line(variant),
    )


def guards_line(variant: VariantState) -> str:
    """ "Guards: stops if "pirate speech" > 0.5, ..." or "" without guards."""
    if not variant.guards:
        return ""
    guards = ", ".join(f'"{g.feature.label}" > {g.threshold:g}' for g in variant.sorted_guards())
    return f"Guards: stops if {guards}"


def activation_table(activations: list[FeatureActivation]) -> Table:
    rows = [
        TableRow(a.feature.label, a.activation, f"#{a.feature.index_in_sae}") for a in activations
    ]
    return Table("Top features in the last exchange", rows, value_name="activation")
