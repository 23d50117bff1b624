"""Turning raw command text or platform options into validated argument values."""

from __future__ import annotations

import io
import math
import shlex
from collections.abc import Mapping
from typing import Any

from bot.commands.registry import Arg, Command
from bot.domain.errors import UserInputError
from bot.domain.validation import clean_text


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
