"""The command registry: declarative specs every adapter turns into its own commands.

A spec names the command, its typed arguments with ranges, who may run it, and its handler.
Adapters either pass raw text (console, Slack) to `parse_text` or structured options
(Discord) to `coerce_options`; both validate the same way and produce an Invocation's args.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal

from bot.commands.replies import Reply
from bot.domain.errors import UserInputError

if TYPE_CHECKING:
    from bot.domain.types import Actor, SessionKey
    from bot.settings import Settings
    from bot.usecases.service import EmberService


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
