"""/help: the command list, or one command with its examples."""

from __future__ import annotations

from bot.commands.registry import Arg, Command, CommandContext, Invocation
from bot.commands.replies import Reply
from bot.domain.errors import UserInputError


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


def commands() -> list[Command]:
    return [
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
        )
    ]
