"""Running a command: permission, admission, one failure line; typed text; delivering the reply."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Protocol

from bot.commands.parsing import parse_positional
from bot.commands.registry import Command, CommandContext, Invocation, Permission
from bot.commands.replies import Reply, error_reply
from bot.domain.errors import UNEXPECTED_ERROR, EmberBotError, UserInputError
from bot.domain.validation import clean_text
from bot.ops.lifecycle import ShuttingDownError
from bot.ops.logs import log_context

if TYPE_CHECKING:
    from bot.domain.types import Actor, SessionKey

log = logging.getLogger(__name__)


async def run_command(ctx: CommandContext, command: Command, invocation: Invocation) -> Reply:
    """Check permission and rate limits, run the handler, turn every failure into a short reply.

    Steering commands (Permission.STEER) count against the steering rate limits and run one at
    a time per channel, so concurrent changes cannot lose each other. Commands are
    refused once shutdown begins, and cut short if still running when its grace period ends.
    """
    changes_state = command.permission is Permission.STEER
    if changes_state and not invocation.can_steer:
        return error_reply(f"You don't have permission to use /{command.name} in this channel.")
    service = ctx.service
    with log_context(session=str(invocation.session)):
        try:
            if changes_state:
                await service.admission.admit_steering(invocation.session, invocation.actor)
            exclusive = (
                service.admission.changing_state(invocation.session)
                if changes_state
                else nullcontext()
            )
            async with (
                service.lifecycle.track(),
                service.lifecycle.interruptible(),
                exclusive,
            ):
                return await command.handler(ctx, invocation)
        except EmberBotError as error:
            service.metrics.error(error)
            return error_reply(error.user_message)
        except Exception as error:
            service.metrics.error(error)
            log.exception("command /%s failed in %s", command.name, invocation.session)
            return error_reply(UNEXPECTED_ERROR)


async def run_text_command(
    ctx: CommandContext, line: str, session: SessionKey, actor: Actor, *, can_steer: bool = True
) -> Reply:
    """Parse and run a typed command line such as `/steer pirate 0.5`."""
    limit = ctx.settings.max_command_chars
    if len(line) > limit:
        return error_reply(f"Commands are limited to {limit} characters; yours has {len(line)}.")
    try:
        command, text = ctx.registry.resolve_text(clean_text(line))
        parse = command.parse_text or parse_positional
        args = parse(command, text)
    except UserInputError as error:
        return error_reply(error.user_message)
    return await run_command(ctx, command, Invocation(session, actor, args, can_steer))


class Delivery(Protocol):
    """How an adapter hands one command's reply to the person who asked."""

    async def begin(self) -> None:
        """Acknowledge at once (e.g. "thinking…"); the reply follows."""

    async def send(self, reply: Reply) -> None: ...


async def deliver(
    ctx: CommandContext, produce: Callable[[], Awaitable[Reply]], delivery: Delivery
) -> None:
    """Produce a reply (run a command, answer a confirmation) and deliver it. Once shutdown
    begins this is refused with one line; a drain waits for a delivery under way."""
    try:
        async with ctx.service.lifecycle.track():
            await delivery.begin()
            await delivery.send(await produce())
    except ShuttingDownError as error:
        await delivery.send(error_reply(error.user_message))
