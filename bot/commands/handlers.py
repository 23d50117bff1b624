"""The commands themselves: each handler turns an Invocation into a Reply via EmberService."""

from __future__ import annotations

import json
from typing import Any

from bot.commands.registry import (
    Arg,
    Command,
    CommandContext,
    Invocation,
    Permission,
    Registry,
    coerce_options,
    parse_number,
    split_words,
)
from bot.commands.replies import Attachment, Reply, Table, TableRow
from bot.domain.errors import UserInputError
from bot.domain.types import FeatureActivation, FeatureEdit, FeatureRef, VariantState
from bot.usecases.service import INDEX_QUERY, validate_steering_value

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


# --- /steer ----------------------------------------------------------------------------------


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
        applied = await ctx.service.steer(inv.session, parse_batch(query), inv.actor)
    elif value is None:
        heading = f'Give a strength between -1 and 1. Top matches for "{query}":'
        return _picker(heading, await _search(ctx, query, 5), 0.5)
    else:
        candidates = await _named_or_candidates(ctx, query)
        if len(candidates) > 1:
            heading = f'Which feature do you mean by "{query}"? Top matches:'
            return _picker(heading, candidates, value)
        applied = [FeatureEdit(candidates[0], validate_steering_value(value))]
        await ctx.service.apply_edits(inv.session, applied, inv.actor)
    variant = await ctx.service.active_variant(inv.session)
    lines = [_describe_edit(edit) for edit in applied]
    return Reply(f'{inv.actor.display_name} steered variant "{variant.name}": ' + "; ".join(lines))


def _describe_edit(edit: FeatureEdit) -> str:
    if edit.value == 0:
        return f"cleared {feature_name(edit.feature)}"
    return f"{feature_name(edit.feature)} {edit.value:+.2f}"


async def _named_or_candidates(ctx: CommandContext, query: str) -> list[FeatureRef]:
    """[the feature] when `query` names one (#index, or every word is in the best match's
    label); otherwise the best matches to choose from, so a vague query never steers blindly."""
    if INDEX_QUERY.match(query.strip()):
        return [await ctx.service.resolve_feature(query)]
    found = await _search(ctx, query, 5)
    best = found[0].label.lower()
    if len(found) == 1 or all(word in best for word in query.lower().split()):
        return found[:1]
    return found


async def _search(ctx: CommandContext, query: str, top_k: int) -> list[FeatureRef]:
    found = await ctx.service.search_features(query, top_k)
    if not found:
        raise UserInputError(f'No feature matches "{query}". Try /features search <words>.')
    return found


def _picker(heading: str, matches: list[FeatureRef], value: float) -> Reply:
    lines = [f"  #{f.index_in_sae}  {f.label}" for f in matches]
    example = f"e.g. /steer #{matches[0].index_in_sae} {value:g}"
    return Reply("\n".join([heading, *lines, example]), ephemeral=True, feature_choices=matches)


# --- /features ------------------------------------------------------------------------------------


async def features_show(ctx: CommandContext, inv: Invocation) -> Reply:
    variant = await ctx.service.active_variant(inv.session)
    if not variant.edits:
        lines = [f'Variant "{variant.name}" is not steered. Try {STEER_EXAMPLES[0]}']
        return Reply("\n".join(filter(None, [*lines, guards_line(variant)])))
    return Reply("", table=edits_table(variant))


async def features_search(ctx: CommandContext, inv: Invocation) -> Reply:
    query = inv.args["query"]
    found = await ctx.service.search_features(query, inv.args["top"])
    if not found:
        return Reply(f'No features match "{query}".', ephemeral=True)
    lines = [f"  #{f.index_in_sae}  {f.label}" for f in found]
    return Reply("\n".join([f'Features matching "{query}":', *lines]), feature_choices=found)


def activation_table(activations: list[FeatureActivation]) -> Table:
    rows = [
        TableRow(a.feature.label, a.activation, f"#{a.feature.index_in_sae}") for a in activations
    ]
    return Table("Top features in the last exchange", rows, value_name="activation")


# --- /reset, /variant --------------------------------------------------------------------------


async def reset(ctx: CommandContext, inv: Invocation) -> Reply:
    return Reply(await ctx.service.reset(inv.session, inv.args["what"], inv.actor))


async def variant_new(ctx: CommandContext, inv: Invocation) -> Reply:
    variant = await ctx.service.create_variant(
        inv.session, inv.args["name"], inv.actor, base=inv.args["copy_from"]
    )
    source = f' (copied from "{inv.args["copy_from"]}")' if inv.args["copy_from"] else ""
    return Reply(f'Created variant "{variant.name}"{source}; it is now active.')


async def variant_use(ctx: CommandContext, inv: Invocation) -> Reply:
    variant = await ctx.service.use_variant(inv.session, inv.args["name"], inv.actor)
    return Reply(f'Now using variant "{variant.name}" · {steering_footer(variant)}')


async def variant_list(ctx: CommandContext, inv: Invocation) -> Reply:
    listing = await ctx.service.list_variants(inv.session)
    lines = [
        f"{'▶' if v.name == listing.active else ' '} {v.name}: "
        + (f"{len(v.edits)} steered features" if v.edits else "unsteered")
        for v in listing.variants
    ]
    return Reply("\n".join(["Variants in this channel:", *lines]))


async def variant_delete(ctx: CommandContext, inv: Invocation) -> Reply:
    active = await ctx.service.delete_variant(inv.session, inv.args["name"], inv.actor)
    return Reply(f'Deleted variant "{inv.args["name"]}". Active variant: "{active}".')


async def variant_export(ctx: CommandContext, inv: Invocation) -> Reply:
    data = await ctx.service.export_variant(inv.session, inv.args["name"])
    text = json.dumps(data, indent=2)
    name = inv.args["name"] or "active"
    return Reply(
        f"Variant JSON (load it with goodfire.Variant.from_json; guards are not exported):\n{text}",
        attachment=Attachment(f"variant-{name}.json", text.encode(), "application/json"),
    )


async def variant_import(ctx: CommandContext, inv: Invocation) -> Reply:
    text = inv.args["file"] or inv.args["json"]
    if not text:
        raise UserInputError(
            "Paste the variant JSON after the name, or attach the .json file /variant export made."
        )
    variant = await ctx.service.import_variant(inv.session, inv.args["name"], text, inv.actor)
    return Reply(
        f'Imported variant "{variant.name}" with {len(variant.edits)} edits; it is now active.'
    )


# --- /help ---------------------------------------------------------------------------------------


async def help_command(ctx: CommandContext, inv: Invocation) -> Reply:
    wanted = " ".join((inv.args["command"] or "").lstrip("/").lower().split())
    commands = [c for c in ctx.registry if not wanted or wanted in (c.path[0], c.name)]
    if not commands:
        raise UserInputError(f"No command /{wanted}. Type /help for the list.")
    lines = ["Chat: mention the bot or message it. Commands:"] if not wanted else []
    for command in commands:
        lines.append(f"{command.usage} — {command.description}")
        lines.extend(f"    e.g. {example}" for example in command.examples if wanted)
    return Reply("\n".join(lines), ephemeral=True)


def build_registry() -> Registry:
    from bot.commands.demo_handlers import demo_commands  # they build on this module's helpers

    registry = Registry(
        group_defaults={"features": "show", "guard": "set", "history": "steering"},
        group_descriptions={
            "features": "See the steering in effect or search the model's features",
            "variant": "Named variants of the bot in this channel",
            "guard": "Stop replies when a feature fires too strongly",
            "history": "What changed in this channel",
        },
    )
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
    name = Arg("name", "Variant name", autocomplete="variant")
    for command in (
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
                    choices=("steering", "history", "all"),
                    default="steering",
                ),
            ),
            Permission.STEER,
        ),
        Command(
            ("variant", "new"),
            "Create a variant (optionally copied) and use it",
            variant_new,
            (
                Arg("name", "Name for the new variant"),
                Arg("copy_from", "Variant to copy", required=False, autocomplete="variant"),
            ),
            Permission.STEER,
        ),
        Command(
            ("variant", "use"),
            "Switch this channel to a variant",
            variant_use,
            (name,),
            Permission.STEER,
        ),
        Command(("variant", "list"), "List this channel's variants", variant_list),
        Command(
            ("variant", "delete"), "Delete a variant", variant_delete, (name,), Permission.STEER
        ),
        Command(
            ("variant", "export"),
            "Export a variant as goodfire Variant JSON",
            variant_export,
            (Arg("name", "Variant (default: active)", required=False, autocomplete="variant"),),
        ),
        Command(
            ("variant", "import"),
            "Import Variant JSON as a named variant",
            variant_import,
            (
                Arg("name", "Name to store it under"),
                Arg("json", "The JSON, pasted", required=False, rest=True),
                Arg("file", "Or the .json file", kind="attachment", required=False),
            ),
            Permission.STEER,
        ),
        *demo_commands(),
        Command(
            ("help",),
            "How to use the bot",
            help_command,
            (
                Arg(
                    "command",
                    "Command to explain, e.g. steer or variant new",
                    required=False,
                    rest=True,
                ),
            ),
        ),
    ):
        registry.add(command)
    return registry
