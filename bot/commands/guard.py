"""/guard: stop replies when a feature fires above a threshold."""

from __future__ import annotations

from typing import Any

from bot.commands.describe import feature_name
from bot.commands.parsing import coerce_options, split_words
from bot.commands.registry import Arg, Command, CommandContext, Invocation, Permission
from bot.commands.replies import Reply
from bot.domain.errors import UserInputError
from bot.domain.validation import MAX_GUARD_THRESHOLD


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
    variant = await ctx.service.variants.active(inv.session)
    return Reply(
        f'{inv.actor.display_name} guarded variant "{variant.name}": replies stop when '
        f"{feature_name(guard.feature)} fires above {guard.threshold:g}."
    )


async def guard_list(ctx: CommandContext, inv: Invocation) -> Reply:
    variant = await ctx.service.variants.active(inv.session)
    if not variant.guards:
        return Reply(f'Variant "{variant.name}" has no guards. Add one: /guard pirate 0.5')
    lines = [f"  {feature_name(g.feature)} > {g.threshold:g}" for g in variant.sorted_guards()]
    return Reply("\n".join([f'Guards on variant "{variant.name}" (stop the reply):', *lines]))


async def guard_clear(ctx: CommandContext, inv: Invocation) -> Reply:
    removed = await ctx.service.guards.clear(inv.session, inv.args["feature"], inv.actor)
    names = ", ".join(feature_name(g.feature) for g in removed)
    return Reply(f"Removed the guard on {names}.")


def commands() -> list[Command]:
    return [
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
                    maximum=MAX_GUARD_THRESHOLD,
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
    ]
