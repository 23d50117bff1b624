"""Platform-neutral replies that handlers return and adapters render."""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.domain.types import FeatureRef
from bot.usecases.compare import ColumnsRun


@dataclass(frozen=True)
class TableRow:
    label: str
    value: float
    note: str = ""


@dataclass(frozen=True)
class Table:
    """Features with numbers, drawn with bars scaled to the largest |value|."""

    title: str
    rows: list[TableRow]
    value_name: str = "value"
    footer: str = ""


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    content_type: str = "application/json"


@dataclass(frozen=True)
class Confirmation:
    """A yes/no question: buttons on Discord and Slack, a y/n prompt in the console.

    The adapter passes `token` back to `bot.commands.confirmations.answer(...)` with the answer.
    """

    token: str
    prompt: str
    accept_label: str = "Apply"
    reject_label: str = "Cancel"


@dataclass(frozen=True)
class StreamedColumns:
    """Several replies streamed side by side (e.g. /compare): one column per title.

    `run(on_delta)` streams every column, calling `on_delta(column, delta)`, and returns each
    column's final text and the error that cut it short, if any.
    """

    titles: tuple[str, ...]
    run: ColumnsRun


@dataclass(frozen=True)
class Reply:
    """What a command answers. `ephemeral` replies are shown only to the caller where possible.

    `feature_choices` offers features to pick from (adapters with menus render a picker; the
    text already says how to pick by typing).
    """

    text: str
    table: Table | None = None
    ephemeral: bool = False
    attachment: Attachment | None = None
    feature_choices: list[FeatureRef] = field(default_factory=list)
    is_error: bool = False
    confirmation: Confirmation | None = None
    columns: StreamedColumns | None = None


def error_reply(message: str) -> Reply:
    return Reply(message, ephemeral=True, is_error=True)
