"""Components v2 layouts (discord.ui.LayoutView) for the replies that are more than text.

A v2 message has no content: everything sits in components, at most MAX_COMPONENTS of them
(nested ones and accessories counted) with at most MAX_TEXT characters across its text
displays. Each layout here is one accent-coloured container:

- columns (/compare): the intro, then each answer under its title, separated; all share the
  text budget, and each is cut with a visible note if it would not fit;
- replies with a table, a chart or a question (/inspect, /features, the AutoSteer proposal):
  the text, the table in a code block, a chart as a media gallery of the attached PNG, and
  for a question its prompt and an action row (Apply / Cancel);
- pickers (/steer with a feature but no strength, /features search): a section per feature
  with a "Choose" button, the rest listed as text (picker.py handles the clicks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import discord
from discord import ui

from adapters.discord.render import discord_length, table_block, truncate
from adapters.streaming import Column, fit_column
from bot.commands.render import shorten
from bot.commands.replies import Reply
from bot.domain.types import FeatureRef

MAX_COMPONENTS = 40
MAX_TEXT = 4_000
ACCENT = discord.Colour.orange()
COLUMN_TITLE = 100
PICKER_SECTIONS = 10  # 3 components each: the section, its text and its button
PICKER_TIP = "-# Choose a feature, then a strength; or type `/steer feature:#<index> value:<-1…1>`."

ButtonFor = Callable[[FeatureRef], ui.Item[Any]]


def layout(container: ui.Container[Any]) -> ui.LayoutView:
    """A persistent view holding one container (no timeout: its buttons are dynamic items)."""
    view = ui.LayoutView(timeout=None)
    view.add_item(container)
    return view


def text_length(view: ui.LayoutView) -> int:
    return sum(
        discord_length(item.content)
        for item in view.walk_children()
        if isinstance(item, ui.TextDisplay)
    )


def columns_layout(intro: str, columns: Sequence[Column]) -> ui.LayoutView:
    """/compare: both answers in one container, each under its title."""
    intro = truncate(intro, 400) or "…"
    titles = [f"### {shorten(column.title, COLUMN_TITLE)}\n" for column in columns]
    spare = MAX_TEXT - discord_length(intro) - sum(discord_length(t) for t in titles)
    share = max(spare // max(len(columns), 1), 50)
    container: ui.Container[Any] = ui.Container(ui.TextDisplay(intro), accent_colour=ACCENT)
    for title, column in zip(titles, columns, strict=True):
        container.add_item(ui.Separator())
        container.add_item(ui.TextDisplay(title + fit_column(column, share, discord_length)))
    return layout(container)


def reply_layout(
    reply: Reply,
    *,
    image: str | None = None,
    question: Sequence[ui.Item[Any]] = (),
    prompt: str = "",
) -> ui.LayoutView:
    """The text, the table as a code block (its footer too), the chart (an attached file's
    name) in a media gallery; under a question, its prompt and buttons."""
    table = reply.table
    ask = f"**{shorten(prompt, 200)}**" if question else ""
    fixed = discord_length(ask)
    text = truncate(reply.text, 1_000 if table else MAX_TEXT - fixed) if reply.text else ""
    block = table_block(table, MAX_TEXT - fixed - discord_length(text)) if table else ""
    container: ui.Container[Any] = ui.Container(accent_colour=ACCENT)
    for part in (text, block):
        if part:
            container.add_item(ui.TextDisplay(part))
    if image:
        title = shorten(table.title if table else reply.text.split("\n", 1)[0], 100)
        item = discord.MediaGalleryItem(f"attachment://{image}", description=title or None)
        container.add_item(ui.MediaGallery(item))
    if question:
        container.add_item(ui.Separator())
        container.add_item(ui.TextDisplay(ask or "**?**"))
        container.add_item(ui.ActionRow(*question))
    if not container.children:
        container.add_item(ui.TextDisplay("Done."))
    return layout(container)


def picker_layout(reply: Reply, button_for: ButtonFor) -> ui.LayoutView:
    """The reply's first line, a section per feature (as many as fit) with `button_for`'s
    button, the other features as text, and how to pick by typing."""
    heading, *_ = reply.text.split("\n", 1)
    shown = reply.feature_choices[:PICKER_SECTIONS]
    rest = reply.feature_choices[PICKER_SECTIONS:]
    container: ui.Container[Any] = ui.Container(
        ui.TextDisplay(truncate(heading, 300) or "Choose a feature:"), accent_colour=ACCENT
    )
    for feature in shown:
        label = f"**#{feature.index_in_sae}** {shorten(feature.label, 150)}"
        container.add_item(ui.Section(ui.TextDisplay(label), accessory=button_for(feature)))
    if rest:
        budget = MAX_TEXT - text_length(layout(container)) - discord_length(PICKER_TIP) - 2
        lines = "\n".join(f"#{f.index_in_sae}  {f.label}" for f in rest)
        container.add_item(ui.TextDisplay(truncate(f"Also:\n{lines}", budget)))
    container.add_item(ui.TextDisplay(PICKER_TIP))
    return layout(container)


def components_of(message: discord.Message | None) -> list[discord.Component]:
    """Every component of a message, depth first, section accessories included."""
    found: list[discord.Component] = []

    def visit(components: Sequence[Any]) -> None:
        for component in components:
            found.append(component)
            visit(getattr(component, "children", []))
            if isinstance(component, discord.SectionComponent):
                visit([component.accessory])

    visit(message.components if message else [])
    return found


def section_text(message: discord.Message | None, custom_id: str) -> str:
    """The text of the section whose button is `custom_id`, or ""."""
    for component in components_of(message):
        if (
            isinstance(component, discord.SectionComponent)
            and getattr(component.accessory, "custom_id", None) == custom_id
        ):
            texts = [c.content for c in component.children if isinstance(c, discord.TextDisplay)]
            return "\n".join(texts)
    return ""


def answered_layout(message: discord.Message | None, line: str) -> ui.LayoutView:
    """A v2 message's texts as they were (its buttons, chart and tips gone) with `line` (who
    answered how) under them."""
    texts = [c.content for c in components_of(message) if isinstance(c, discord.TextDisplay)]
    budget = MAX_TEXT - discord_length(line)
    container: ui.Container[Any] = ui.Container(accent_colour=ACCENT)
    for text in [t for t in texts if t != PICKER_TIP][: MAX_COMPONENTS - 3]:
        budget -= discord_length(text)
        if budget < 0:
            break
        container.add_item(ui.TextDisplay(text))
    container.add_item(ui.TextDisplay(line))
    return layout(container)
