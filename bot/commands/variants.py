"""/variant: named variants of the bot in a channel, and their export and import as SDK JSON."""

from __future__ import annotations

import json

from bot.commands.registry import Arg, Command, CommandContext, Invocation, Permission
from bot.commands.replies import Attachment, Reply
from bot.domain.errors import UserInputError
from bot.domain.summary import steering_footer


async def variant_new(ctx: CommandContext, inv: Invocation) -> Reply:
    variant = await ctx.service.variants.create(
        inv.session, inv.args["name"], inv.actor, base=inv.args["copy_from"]
    )
    source = f' (copied from "{inv.args["copy_from"]}")' if inv.args["copy_from"] else ""
    return Reply(f'Created variant "{variant.name}"{source}; it is now active.')


async def variant_use(ctx: CommandContext, inv: Invocation) -> Reply:
    variant = await ctx.service.variants.use(inv.session, inv.args["name"], inv.actor)
    return Reply(f'Now using variant "{variant.name}" · {steering_footer(variant)}')


async def variant_list(ctx: CommandContext, inv: Invocation) -> Reply:
    listing = await ctx.service.variants.list(inv.session)
    lines = [
        f"{'▶' if v.name == listing.active else ' '} {v.name}: "
        + (f"{len(v.edits)} steered features" if v.edits else "unsteered")
        for v in listing.variants
    ]
    return Reply("\n".join(["Variants in this channel:", *lines]))


async def variant_delete(ctx: CommandContext, inv: Invocation) -> Reply:
    active = await ctx.service.variants.delete(inv.session, inv.args["name"], inv.actor)
    return Reply(f'Deleted variant "{inv.args["name"]}". Active variant: "{active}".')


async def variant_export(ctx: CommandContext, inv: Invocation) -> Reply:
    data = await ctx.service.variants.export_json(inv.session, inv.args["name"])
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
    variant = await ctx.service.variants.import_json(inv.session, inv.args["name"], text, inv.actor)
    return Reply(
        f'Imported variant "{variant.name}" with {len(variant.edits)} edits; it is now active.'
    )


def commands() -> list[Command]:
    name = Arg("name", "Variant name", autocomplete="variant")
    return [
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
    ]
