"""/compare: one prompt answered by the base model and the steered variant, side by side."""

from __future__ import annotations

from bot.commands.describe import STEER_EXAMPLES
from bot.commands.registry import Arg, Command, CommandContext, Invocation
from bot.commands.replies import Reply, StreamedColumns
from bot.domain.errors import UserInputError
from bot.domain.summary import edits_summary
from bot.usecases.compare import compare_run


async def compare(ctx: CommandContext, inv: Invocation) -> Reply:
    variant = await ctx.service.variants.active(inv.session)
    if not variant.is_steered:
        raise UserInputError(
            f'Variant "{variant.name}" is not steered, so both answers would be the same. '
            f"Steer it first, e.g. {STEER_EXAMPLES[0]}"
        )
    prompt = await ctx.service.chat.admit_prompt(inv.session, inv.actor, inv.args["prompt"])
    titles = ("base", f"steered: {variant.name} · {edits_summary(variant)}")
    return Reply(
        "Same prompt, same seed: the base model, then this channel's variant.",
        columns=StreamedColumns(
            titles, compare_run(ctx.service.chat, ctx.service.lifecycle, prompt, variant)
        ),
    )


def commands() -> list[Command]:
    return [
        Command(
            ("compare",),
            "Answer a prompt with the base model and the steered variant, side by side "
            "(same seed; not added to the chat history)",
            compare,
            (Arg("prompt", "What to ask both", rest=True),),
            examples=("/compare Tell me about your weekend",),
        )
    ]
