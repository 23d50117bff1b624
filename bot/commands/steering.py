"""/steer, /features and /reset: finding features and nudging them on the active variant."""

from __future__ import annotations

from typing import Any

from bot.commands.describe import STEER_EXAMPLES, TOP_ARG, edits_table, feature_name, guards_line
from bot.commands.parsing import coerce_options, parse_number, split_words
from bot.commands.registry import Arg, Command, CommandContext, Invocation, Permission
from bot.commands.replies import Reply
from bot.domain.errors import UserInputError
from bot.domain.types import FeatureEdit, FeatureRef
from bot.domain.validation import RESET_SCOPES, validate_steering_value
from bot.usecases.steering import CHOICES


def parse_steer_text(command: Command, text: str) -> dict[str, Any]:
    """`/steer <feature words> <value>`, or a batch `/steer a=0.5 "b c"=-0.3`."""
    if "=" in text:  # quotes matter only in a batch: `"formal writing"=-0.3`
        return coerce_options(command, {"feature": text.strip()})
    words = text.split()  # so "children's books 0.5" needs no quoting
    if not words:
        raise UserInputError(f"Say what to steer, e.g. {STEER_EXAMPLES[0]}")
    if len(words) == 1:
        return coerce_options(command, {"feature": words[0]})
    *query, value = words
    return coerce_options(command, {"feature": " ".join(query), "value": value})


def parse_batch(text: str) -> list[tuple[str, float]]:
    pairs = []
    for word in split_words(text):
        query, sep, raw_value = word.rpartition("=")
        if not sep or not query.strip():
            raise UserInputError(f'Batch steering needs feature=value pairs; "{word}" is not one.')
        pairs.append((query, validate_steering_value(parse_number("value", raw_value))))
    return pairs


async def steer(ctx: CommandContext, inv: Invocation) -> Reply:
    query, value = inv.args["feature"], inv.args["value"]
    if "=" in query:
        applied = await ctx.service.steering.steer(inv.session, parse_batch(query), inv.actor)
    elif value is None:
        heading = f'Give a strength between -1 and 1. Top matches for "{query}":'
        return _picker(heading, await _search(ctx, query, CHOICES), 0.5)
    else:
        candidates = await ctx.service.steering.candidates(query)
        if len(candidates) > 1:
            heading = f'Which feature do you mean by "{query}"? Top matches:'
            return _picker(heading, candidates, value)
        applied = [FeatureEdit(candidates[0], validate_steering_value(value))]
        await ctx.service.steering.apply(inv.session, applied, inv.actor)
    variant = await ctx.service.variants.active(inv.session)
    lines = [_describe_edit(edit) for edit in applied]
    return Reply(f'{inv.actor.display_name} steered variant "{variant.name}": ' + "; ".join(lines))


def _describe_edit(edit: FeatureEdit) -> str:
    if edit.value == 0:
        return f"cleared {feature_name(edit.feature)}"
    return f"{feature_name(edit.feature)} {edit.value:+.2f}"


async def _search(ctx: CommandContext, query: str, top_k: int) -> list[FeatureRef]:
    found = await ctx.service.steering.search(query, top_k)
    if not found:
        raise UserInputError(f'No feature matches "{query}". Try /features search <words>.')
    return found


def _picker(heading: str, matches: list[FeatureRef], value: float) -> Reply:
    lines = [f"  #{f.index_in_sae}  {f.label}" for f in matches]
    example = f"e.g. /steer #{matches[0].index_in_sae} {value:g}"
    return Reply("\n".join([heading, *lines, example]), ephemeral=True, feature_choices=matches)


async def features_show(ctx: CommandContext, inv: Invocation) -> Reply:
    variant = await ctx.service.variants.active(inv.session)
    if not variant.edits:
        lines = [f'Variant "{variant.name}" is not steered. Try {STEER_EXAMPLES[0]}']
        return Reply("\n".join(filter(None, [*lines, guards_line(variant)])))
    return Reply("", table=edits_table(variant))


async def features_search(ctx: CommandContext, inv: Invocation) -> Reply:
    query = inv.args["query"]
    found = await ctx.service.steering.search(query, inv.args["top"])
    if not found:
        return Reply(f'No features match "{query}".', ephemeral=True)
    lines = [f"  #{f.index_in_sae}  {f.label}{_score_note(f)}" for f in found]
    return Reply("\n".join([f'Features matching "{query}":', *lines]), feature_choices=found)


def _score_note(feature: FeatureRef) -> str:
    """A generated label's detection score: how well the label told its feature's contexts apart."""
    if feature.label_score is None:
        return ""
    return f"  (label score {feature.label_score:.2f})"


async def reset(ctx: CommandContext, inv: Invocation) -> Reply:
    return Reply(await ctx.service.steering.reset(inv.session, inv.args["what"], inv.actor))


def commands() -> list[Command]:
    feature = Arg(
        "feature",
        "Feature to steer: words to search, #index, or a=0.5 b=-0.3",
        autocomplete="feature",
        rest=True,
    )
    value = Arg(
        "value",
        "Strength from -1 to 1 (0 clears)",
        kind="number",
        required=False,
        minimum=-1,
        maximum=1,
    )
    return [
        Command(
            ("steer",),
            "Nudge features of the model up or down in this channel",
            steer,
            (feature, value),
            Permission.STEER,
            STEER_EXAMPLES,
            parse_steer_text,
        ),
        Command(("features", "show"), "Show the steering in effect", features_show),
        Command(
            ("features", "search"),
            "Search the model's features",
            features_search,
            (Arg("query", "Words describing the feature", rest=True), TOP_ARG),
        ),
        Command(
            ("reset",),
            "Reset steering (default), history, or all",
            reset,
            (
                Arg(
                    "what",
                    "What to reset",
                    kind="choice",
                    required=False,
                    choices=RESET_SCOPES,
                    default="steering",
                ),
            ),
            Permission.STEER,
        ),
    ]
