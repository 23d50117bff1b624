"""/autosteer: the backend proposes steering for a description; Apply or Cancel decides."""

from __future__ import annotations

from bot.commands.confirmations import PROPOSAL_TTL, proposals
from bot.commands.registry import Arg, Command, CommandContext, Invocation
from bot.commands.render import shorten
from bot.commands.replies import Confirmation, Reply, Table, TableRow
from bot.domain.errors import UserInputError


async def autosteer(ctx: CommandContext, inv: Invocation) -> Reply:
    description = inv.args["description"]
    await ctx.service.admission.admit_steering(inv.session, inv.actor)
    edits = await ctx.service.steering.autosteer(description)
    if not edits:
        raise UserInputError(
            f'AutoSteer found no features for "{shorten(description, 60)}". Try other words.'
        )
    variant = await ctx.service.variants.active(inv.session)
    token = await proposals(ctx.service).add(inv.session, inv.actor, edits)
    table = Table(
        f'AutoSteer proposes, for "{shorten(description, 60)}":',
        [TableRow(e.feature.label, e.value, f"#{e.feature.index_in_sae}") for e in edits],
        footer=f'Apply adds them to variant "{variant.name}". '
        f"The proposal expires in {PROPOSAL_TTL / 60:g} minutes.",
    )
    return Reply("", table=table, confirmation=Confirmation(token, "Apply these edits?"))


def commands() -> list[Command]:
    return [
        Command(
            ("autosteer",),
            "Let the backend propose steering for a description; you apply or cancel",
            autosteer,
            (Arg("description", "The behaviour you want, in plain words", rest=True),),
            examples=("/autosteer talk like a pirate",),
        )
    ]
