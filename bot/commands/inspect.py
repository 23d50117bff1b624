"""/inspect: which features fired in the last exchange, as a table or chart, or where one
feature fired token by token."""

from __future__ import annotations

import asyncio
from typing import Any

from bot.commands import charts
from bot.commands.describe import TOP_ARG, activation_table, feature_name
from bot.commands.parsing import coerce_options, split_words
from bot.commands.registry import Arg, Command, CommandContext, Invocation
from bot.commands.render import shorten
from bot.commands.replies import Attachment, Reply
from bot.domain.types import FeatureRef, TokenActivation
from bot.usecases.inspection import tokens_by_message

HIGHLIGHT_CHARS = 900  # per message, in the text rendering of /inspect feature:
# Tokens at least this far from the exchange's lowest activation towards its peak are marked;
# measured from the lowest, a steered feature's constant shift on every token marks nothing.
MARK_FRACTION = 0.2
SUPERSCRIPT = str.maketrans("0123456789.", "⁰¹²³⁴⁵⁶⁷⁸⁹·")


def parse_inspect_text(command: Command, text: str) -> dict[str, Any]:
    """`/inspect [top] [chart] [feature:<words>]`, in any order: `top:`, `chart:` and `feature:`
    name their option, a bare number is top, `chart` alone is chart:yes, other words are the
    feature to look for."""
    options: dict[str, Any] = {}
    feature: list[str] = []
    for word in split_words(text):
        key, sep, value = word.partition(":")
        key = key.lower()
        if sep and key in ("top", "chart"):
            options[key] = value
        elif sep and key == "feature":
            feature.append(value)
        elif word.lower() == "chart":
            options["chart"] = "yes"
        elif not feature and word.lstrip("-").isdigit():
            options["top"] = word
        else:
            feature.append(word)
    if feature:
        options["feature"] = " ".join(feature).strip()
    return coerce_options(command, options)


async def inspect(ctx: CommandContext, inv: Invocation) -> Reply:
    if inv.args["feature"]:
        return await _inspect_feature(ctx, inv, inv.args["feature"])
    activations, _ = await ctx.service.inspection.top_features(inv.session, inv.args["top"])
    table = activation_table(activations)
    if inv.args["chart"] != "yes" or not activations:
        return Reply("", table=table)
    rows = [(a.feature.label, a.activation) for a in activations]
    png = await asyncio.to_thread(charts.feature_chart, rows, table.title)
    return Reply("", table=table, attachment=Attachment("inspect.png", png, "image/png"))


async def _inspect_feature(ctx: CommandContext, inv: Invocation, query: str) -> Reply:
    feature, exchange, tokens = await ctx.service.inspection.token_activations(inv.session, query)
    groups = tokens_by_message(tokens, exchange)
    text = highlight(feature, groups)
    variant = await ctx.service.variants.active(inv.session)
    if feature.index_in_sae in variant.edits and tokens:
        lowest = min(t.activation for _, group in groups for t in group)
        text += (
            f'\nVariant "{variant.name}" steers this feature, which shifts it on every token '
            f"(lowest here {lowest:.3g}); guards compare these same numbers."
        )
    if inv.args["chart"] != "yes":
        return Reply(text)
    title = f'Where "{shorten(feature.label, 60)}" (#{feature.index_in_sae}) fired'
    named = [(_speaker(role), group) for role, group in groups]
    png = await asyncio.to_thread(charts.token_heatmap, named, title)
    return Reply(text, attachment=Attachment("inspect-tokens.png", png, "image/png"))


def highlight(feature: FeatureRef, groups: list[tuple[str, list[TokenActivation]]]) -> str:
    """The exchange with the tokens where the feature fired marked `token⁽¹·⁵⁾` (see
    MARK_FRACTION), under a one-line summary."""
    everything = [t for _, group in groups for t in group]
    peak = max(everything, key=lambda t: t.activation, default=None)
    if peak is None or peak.activation <= 0:
        return f"{feature_name(feature)} did not fire in the last exchange."
    lowest = min(t.activation for t in everything)
    floor = lowest + MARK_FRACTION * (peak.activation - lowest)
    marked = sum(t.activation >= floor for t in everything)
    lines = [
        f"Where {feature_name(feature)} fired in the last exchange "
        f"({marked} of {len(everything)} tokens; peak {peak.activation:.3g} "
        f'on "{peak.token.strip()}"):'
    ]
    for role, group in groups:
        text = "".join(_marked(t, floor) for t in group).strip()
        lines.append(f"{_speaker(role)}: {shorten(text, HIGHLIGHT_CHARS)}")
    return "\n".join(lines)


def _marked(token: TokenActivation, floor: float) -> str:
    if token.activation < floor:
        return token.token
    value = f"{token.activation:.0f}" if token.activation >= 10 else f"{token.activation:.1f}"
    stripped = token.token.rstrip()
    return f"{stripped}⁽{value.translate(SUPERSCRIPT)}⁾{token.token[len(stripped) :]}"


def _speaker(role: str) -> str:
    return {"assistant": "bot", "user": "user"}.get(role, role)


def commands() -> list[Command]:
    chart = Arg(
        "chart",
        "Attach a PNG chart",
        kind="choice",
        required=False,
        choices=("yes", "no"),
        default="no",
    )
    feature = Arg(
        "feature",
        "Show which tokens fired this feature (words or #index)",
        required=False,
        autocomplete="feature",
    )
    return [
        Command(
            ("inspect",),
            "Show which features fired in the last exchange (chart, or one feature per token)",
            inspect,
            (TOP_ARG, chart, feature),
            examples=("/inspect", "/inspect 5 chart", "/inspect feature:pirate chart"),
            parse_text=parse_inspect_text,
        )
    ]
