"""The command registry: declarative specs every adapter turns into its own commands.

A spec names the command, its typed arguments with ranges, who may run it, and its handler.
Adapters either pass raw text (console, Slack) to `parse_text` or structured options
(Discord) to `coerce_options`; both validate the same way and produce an Invocation's args.
"""

from __future__ import annotations

import io
import logging
import math
import shlex
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal

from bot.commands.replies import Reply, error_reply
from bot.domain.errors import UNEXPECTED_ERROR, EmberBotError, UserInputError
from bot.ops.logs import log_context
from bot.usecases.service import clean_text

if TYPE_CHECKING:
    from bot.settings import Settings
    from bot.usecases.service import Actor, EmberService, SessionKey


log = logging.getLogger(__name__)


class Permission(Enum):
    EVERYONE = "everyone"
    STEER = "steer"  # changes the channel's bot: steering, variants, reset


# "attachment": a file the user attaches (Discord); adapters pass the file's text as the value.
ArgKind = Literal["text", "number", "integer", "choice", "attachment"]


@dataclass(frozen=True)
class Arg:
    name: str
    description: str
    kind: ArgKind = "text"
    required: bool = True
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    default: Any = None
    autocomplete: Literal["feature", "variant"] | None = None
    rest: bool = False  # in text form, takes all remaining words


@dataclass(frozen=True)
class Invocation:
    """One command call, platform-neutral."""

    session: SessionKey
    actor: Actor
    args: Mapping[str, Any]
    can_steer: bool = True


@dataclass(frozen=True)
class CommandContext:
    service: EmberService
    settings: Settings
    registry: Registry


Handler = Callable[[CommandContext, Invocation], Awaitable[Reply]]
TextParser = Callable[["Command", str], dict[str, Any]]


@dataclass(frozen=True)
class Command:
    """A leaf command; `path` is its words, e.g. ("variant", "new")."""

    path: tuple[str, ...]
    description: str
    handler: Handler
    args: tuple[Arg, ...] = ()
    permission: Permission = Permission.EVERYONE
    examples: tuple[str, ...] = ()
    parse_text: TextParser | None = None

    @property
    def name(self) -> str:
        return " ".join(self.path)

    @property
    def usage(self) -> str:
        parts = [f"/{self.name}"]
        for arg in self.args:
            parts.append(f"<{arg.name}>" if arg.required else f"[{arg.name}]")
        return " ".join(parts)


@dataclass
class Registry:
    """All commands, in registration order. Groups are first words shared by several paths."""

    commands: list[Command] = field(default_factory=list)
    group_defaults: dict[str, str] = field(default_factory=dict)
    group_descriptions: dict[str, str] = field(default_factory=dict)

    def add(self, command: Command) -> None:
        if any(c.path == command.path for c in self.commands):
            raise ValueError(f"duplicate command /{command.name}")
        self.commands.append(command)

    def top_level_names(self) -> list[str]:
        return list(dict.fromkeys(c.path[0] for c in self.commands))

    def children(self, group: str) -> list[Command]:
        return [c for c in self.commands if c.path[0] == group and len(c.path) > 1]

    def get(self, path: tuple[str, ...]) -> Command | None:
        return next((c for c in self.commands if c.path == path), None)

    def __iter__(self) -> Iterator[Command]:
        return iter(self.commands)

    def resolve_text(self, line: str) -> tuple[Command, str]:
        """Split "/variant new foo" into its command and the remaining argument text."""
        words = line.strip().removeprefix("/").split(maxsplit=1)
        if not words:
            raise UserInputError("Type a command, e.g. /help")
        name, rest = words[0].lower(), words[1] if len(words) > 1 else ""
        if command := self.get((name,)):
            return command, rest
        subcommands = self.children(name)
        if not subcommands:
            raise UserInputError(f"Unknown command /{name[:40]}. Type /help for the list.")
        sub_words = rest.split(maxsplit=1)
        if sub_words:
            sub, remaining = sub_words[0].lower(), sub_words[1] if len(sub_words) > 1 else ""
        else:
            sub, remaining = self.group_defaults.get(name, ""), ""
        command = self.get((name, sub))
        if command is not None:
            return command, remaining
        default = self.get((name, self.group_defaults.get(name, "")))
        if default is not None and default.args:  # `/guard pirate 0.5` is `/guard set ...`
            return default, rest
        choices = ", ".join(c.path[1] for c in subcommands)
        raise UserInputError(f"/{name} needs one of: {choices}.")


def split_words(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as error:
        raise UserInputError(f"Could not read the arguments: {error}.") from None


def parse_positional(command: Command, text: str) -> dict[str, Any]:
    """Map words to args in order; an arg with `rest` takes the remaining text verbatim."""
    values: dict[str, Any] = {}
    remaining = text.strip()
    for arg in command.args:
        if not remaining:
            break
        if arg.rest:
            values[arg.name], remaining = remaining, ""
        else:
            values[arg.name], remaining = first_word(remaining)
    if remaining:
        raise UserInputError(f"Too many arguments. Usage: {command.usage}")
    return coerce_options(command, values)


def first_word(text: str) -> tuple[str, str]:
    """The first shell-style word of `text` (quotes allowed) and the text after it."""
    stream = io.StringIO(text)
    lexer = shlex.shlex(stream, posix=True)
    lexer.whitespace_split = True
    try:
        word = lexer.get_token() or ""
    except ValueError as error:
        raise UserInputError(f"Could not read the arguments: {error}.") from None
    return word, stream.read().strip()


def coerce_options(command: Command, options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and convert raw option values against the command's arg specs."""
    unknown = set(options) - {arg.name for arg in command.args}
    if unknown:
        raise UserInputError(f"Unknown option {sorted(unknown)[0]!r}. Usage: {command.usage}")
    values: dict[str, Any] = {}
    for arg in command.args:
        raw = options.get(arg.name)
        if raw is None or raw == "":
            if arg.required:
                raise UserInputError(f"Missing <{arg.name}>. Usage: {command.usage}")
            values[arg.name] = arg.default
        else:
            values[arg.name] = coerce_value(arg, raw)
    return values


def coerce_value(arg: Arg, raw: Any) -> Any:
    if arg.kind in ("text", "attachment"):
        return clean_text(str(raw))
    if arg.kind == "choice":
        text = str(raw).lower()
        if text not in arg.choices:
            raise UserInputError(
                f"{arg.name} must be one of {', '.join(arg.choices)}; got {raw!r}."
            )
        return text
    number = parse_number(arg.name, raw)
    if arg.kind == "integer" and not number.is_integer():
        raise UserInputError(f"{arg.name} must be a whole number, got {raw}.")
    if (arg.minimum is not None and number < arg.minimum) or (
        arg.maximum is not None and number > arg.maximum
    ):
        raise UserInputError(
            f"{arg.name.capitalize()} must be between {arg.minimum:g} and {arg.maximum:g}, "
            f"got {number:g}."
        )
    return int(number) if arg.kind == "integer" else number


def parse_number(name: str, raw: Any) -> float:
    try:
        number = float(raw)
    except (TypeError, ValueError, OverflowError):
        raise UserInputError(
            f"{name.capitalize()} must be a number, got {str(raw)[:40]!r}."
        ) from None
    if not math.isfinite(number):
        raise UserInputError(f"{name.capitalize()} must be a finite number, got {str(raw)[:40]!r}.")
    return number


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
                service.admit_steering(invocation.session, invocation.actor)
            exclusive = (
                service.changing_state(invocation.session) if changes_state else nullcontext()
            )
            async with service.lifecycle.track(), service.lifecycle.interruptible(), exclusive:
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
