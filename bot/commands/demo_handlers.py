"""Demo commands: /compare, /autosteer, /inspect with charts and per-token views, /guard and
/history steering. `demo_commands()` hands their specs to `bot.commands.handlers.build_registry`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bot.commands import charts
from bot.commands.confirmations import PROPOSAL_TTL, proposals
from bot.commands.handlers import (
    STEER_EXAMPLES,
    TOP_ARG,
    activation_table,
    edits_summary,
    feature_name,
)
from bot.commands.registry import (
    Arg,
    Command,
    CommandContext,
    Invocation,
    Permission,
    coerce_options,
    split_words,
)
from bot.commands.render import shorten
from bot.commands.replies import Attachment, Confirmation, Reply, StreamedColumns, Table, TableRow
from bot.domain.errors import UserInputError
from bot.domain.types import FeatureRef, TokenActivation
from bot.usecases.compare import compare_run, tokens_by_message
from bot.usecases.guards import MAX_THRESHOLD
from storage.store import AuditEntry

HISTORY_LIMIT = 20
HIGHLIGHT_CHARS = 900  # per message, in the text rendering of /inspect feature:
# Tokens at least this far from the exchange's lowest activation towards its peak are marked;
# measured from the lowest, a steered feature's constant shift on every token marks nothing.
MARK_FRACTION = 0.2
SUPERSCRIPT = str.maketrans("0123456789.", "⁰¹²³⁴⁵⁶⁷⁸⁹·")


# --- /compare ---------------------------------------------------------------------------------


async def compare(ctx: CommandContext, inv: Invocation) -> Reply:
    variant = await ctx.service.active_variant(inv.session)
    if not variant.is_steered:
        raise UserInputError(
            f'Variant "{variant.name}" is not steered, so both answers would be the same. '
            f"Steer it first, e.g. {STEER_EXAMPLES[0]}"
        )
    prompt = ctx.service.admit_prompt(inv.session, inv.actor, inv.args["prompt"])
    titles = ("base", f"steered: {variant.name} · {edits_summary(variant)}")
    return Reply(
        "Same prompt, same seed: the base model, then this channel's variant.",
        columns=StreamedColumns(titles, compare_run(ctx.service, prompt, variant)),
    )


# --- /autosteer -------------------------------------------------------------------------------


async def autosteer(ctx: CommandContext, inv: Invocation) -> Reply:
    description = inv.args["description"]
    ctx.service.admit_steering(inv.session, inv.actor)
    edits = await ctx.service.autosteer(description)
    if not edits:
        raise UserInputError(
            f'AutoSteer found no features for "{shorten(description, 60)}". Try other words.'
        )
    variant = await ctx.service.active_variant(inv.session)
    token = proposals(ctx.service).add(inv.session, inv.actor, edits)
    table = Table(
        f'AutoSteer proposes, for "{shorten(description, 60)}":',
        [TableRow(e.feature.label, e.value, f"#{e.feature.index_in_sae}") for e in edits],
        footer=f'Apply adds them to variant "{variant.name}". '
        f"The proposal expires in {PROPOSAL_TTL / 60:g} minutes.",
    )
    return Reply("", table=table, confirmation=Confirmation(token, "Apply these edits?"))


# --- /inspect ---------------------------------------------------------------------------------


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
    activations, _ = await ctx.service.inspect(inv.session, inv.args["top"])
    table = activation_table(activations)
    if inv.args["chart"] != "yes" or not activations:
        return Reply("", table=table)
    rows = [(a.feature.label, a.activation) for a in activations]
    png = await asyncio.to_thread(charts.feature_chart, rows, table.title)
    return Reply("", table=table, attachment=Attachment("inspect.png", png, "image/png"))


async def _inspect_feature(ctx: CommandContext, inv: Invocation, query: str) -> Reply:
    feature, exchange, tokens = await ctx.service.token_activations(inv.session, query)
    groups = tokens_by_message(tokens, exchange)
    text = highlight(feature, groups)
    variant = await ctx.service.active_variant(inv.session)
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


# --- /guard -----------------------------------------------------------------------------------


def parse_guard_text(command: Command, text: str) -> dict[str, Any]:
    """`/guard <feature words> <threshold>`: the last word is the threshold."""
    words = split_words(text)
    if len(words) < 2:
        raise UserInputError("Say which feature and the threshold, e.g. /guard pirate 0.5")
    *query, threshold = words
    return coerce_options(command, {"feature": " ".join(query), "threshold": threshold})


async def guard_set(ctx: CommandContext, inv: Invocation) -> Reply:
    guard = await ctx.service.guards.set(
        inv.session, inv.args["feature"], inv.args["threshold"], inv.actor
    )
    variant = await ctx.service.active_variant(inv.session)
    return Reply(
        f'{inv.actor.display_name} guarded variant "{variant.name}": replies stop when '
        f"{feature_name(guard.feature)} fires above {guard.threshold:g}."
    )


async def guard_list(ctx: CommandContext, inv: Invocation) -> Reply:
    variant = await ctx.service.active_variant(inv.session)
    if not variant.guards:
        return Reply(f'Variant "{variant.name}" has no guards. Add one: /guard pirate 0.5')
    lines = [f"  {feature_name(g.feature)} > {g.threshold:g}" for g in variant.sorted_guards()]
    return Reply("\n".join([f'Guards on variant "{variant.name}" (stop the reply):', *lines]))


async def guard_clear(ctx: CommandContext, inv: Invocation) -> Reply:
    removed = await ctx.service.guards.clear(inv.session, inv.args["feature"], inv.actor)
    names = ", ".join(feature_name(g.feature) for g in removed)
    return Reply(f"Removed the guard on {names}.")


# --- /history steering ------------------------------------------------------------------------


async def history_steering(ctx: CommandContext, inv: Invocation) -> Reply:
    entries, total = await ctx.service.steering_history(inv.session, HISTORY_LIMIT)
    if not entries:
        return Reply("Nobody has changed the steering in this channel yet.")
    lines = ["Steering changes in this channel, newest first:"]
    lines += [f"  {_when(e.created_at)} · {e.actor} · {describe_change(e)}" for e in entries]
    if total > len(entries):
        lines.append(f"  … and {total - len(entries)} older changes.")
    return Reply("\n".join(lines))


def describe_change(entry: AuditEntry) -> str:
    """One audit entry in words, e.g. `steered "pirate speech" +0.50 (variant default)`."""
    detail = entry.detail
    variant = f" (variant {detail['variant']})" if "variant" in detail else ""
    action = entry.action
    if action in ("steer", "autosteer.apply"):
        verb = "applied AutoSteer:" if action == "autosteer.apply" else "steered"
        changes = [
            f'"{label}" {"cleared" if value == 0 else f"{value:+.2f}"}'
            for label, value in detail.get("set", {}).values()
        ]
        return f"{verb} {', '.join(changes)}{variant}"
    if action == "guard.set":
        return f'guarded "{detail.get("label")}" > {detail.get("threshold", 0):g}{variant}'
    if action == "guard.clear":
        features = ", ".join(f'"{label}"' for label in detail.get("features", []))
        return f"removed the guard on {features}{variant}"
    simple = {
        "steer.clear": f'cleared "{detail.get("label")}"{variant}',
        "steer.reset": f"cleared all steering{variant}",
        "variant.create": f'created variant "{detail.get("variant")}"'
        + (f' from "{detail["from"]}"' if detail.get("from") else ""),
        "variant.use": f'switched to variant "{detail.get("variant")}"',
        "variant.delete": f'deleted variant "{detail.get("variant")}"',
        "variant.import": f'imported variant "{detail.get("variant")}" '
        f"({detail.get('edits', 0)} edits)",
        "history.clear": f"cleared {detail.get('messages', 0)} messages of history",
    }
    return simple.get(action, action)


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


# --- registration -----------------------------------------------------------------------------


def demo_commands() -> list[Command]:
    chart = Arg(
        "chart",
        "Attach a PNG chart",
        kind="choice",
        required=False,
        choices=("yes", "no"),
        default="no",
    )
    inspect_feature = Arg(
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
            (TOP_ARG, chart, inspect_feature),
            examples=("/inspect", "/inspect 5 chart", "/inspect feature:pirate chart"),
            parse_text=parse_inspect_text,
        ),
        Command(
            ("compare",),
            "Answer a prompt with the base model and the steered variant, side by side "
            "(same seed; not added to the chat history)",
            compare,
            (Arg("prompt", "What to ask both", rest=True),),
            examples=("/compare Tell me about your weekend",),
        ),
        Command(
            ("autosteer",),
            "Let the backend propose steering for a description; you apply or cancel",
            autosteer,
            (Arg("description", "The behaviour you want, in plain words", rest=True),),
            examples=("/autosteer talk like a pirate",),
        ),
        Command(
            ("guard", "set"),
            "Stop replies when a feature fires above a threshold",
            guard_set,
            (
                Arg("feature", "Feature to watch: words or #index", autocomplete="feature"),
                Arg(
                    "threshold",
                    "Activation that stops the reply (units as in /inspect)",
                    kind="number",
                    minimum=0,
                    maximum=MAX_THRESHOLD,
                ),
            ),
            Permission.STEER,
            ("/guard pirate 0.5", "/guard set #37 1.5"),
            parse_guard_text,
        ),
        Command(("guard", "list"), "List the active variant's guards", guard_list),
        Command(
            ("guard", "clear"),
            "Remove one guard, or all of them",
            guard_clear,
            (Arg("feature", "Guarded feature (default: all)", required=False, rest=True),),
            Permission.STEER,
        ),
        Command(
            ("history", "steering"),
            "Who changed the steering in this channel, newest first",
            history_steering,
        ),
    ]
