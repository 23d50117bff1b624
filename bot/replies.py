"""Platform-neutral replies that handlers return and adapters render."""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.models import FeatureRef


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


def error_reply(message: str) -> Reply:
    return Reply(message, ephemeral=True, is_error=True)
