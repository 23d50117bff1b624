"""Replies as Discord message text: tables in code blocks, text cut to the 2,000-character
limit. (Replies with more than text become Components v2 layouts: layouts.py.)"""

from __future__ import annotations

import io

import discord

from adapters.streaming import FENCE, PlatformLimits
from bot.commands.render import render_table
from bot.commands.replies import Reply, Table

MESSAGE_LIMIT = 2000
MAX_TABLE_ROWS = 25
NO_PINGS = discord.AllowedMentions.none()
BROKEN_FENCE = "`\u200b``"  # a label's own ``` must not close our code block
CUT_MARKER = "… (cut short)"


def discord_length(text: str) -> int:
    """Length as Discord's JavaScript-side limit counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


DISCORD_LIMITS = PlatformLimits(max_length=MESSAGE_LIMIT, edit_interval=1.0, measure=discord_length)


def render_reply(reply: Reply, limit: int = MESSAGE_LIMIT) -> str:
    """Reply text, then its table as a monospace block, within `limit`."""
    text = truncate(reply.text, limit) if reply.text else ""
    if reply.table is None:
        return text or "Done."
    budget = limit - discord_length(text) - 1 if text else limit
    return "\n".join(part for part in (text, table_block(reply.table, budget)) if part)


def table_block(table: Table, limit: int) -> str:
    """The table in a code block, dropping rows (counted in a "… and N more" line) to fit."""
    for rows in range(MAX_TABLE_ROWS, 0, -1):
        block = code_block(render_table(table, max_rows=rows))
        if discord_length(block) <= limit:
            return block
    return truncate(code_block(render_table(table, max_rows=1)), limit)


def code_block(text: str) -> str:
    return f"{FENCE}\n{text.replace(FENCE, BROKEN_FENCE)}\n{FENCE}"


def truncate(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Whole lines that fit, then a line counting the rest; a cut code block is closed."""
    if discord_length(text) <= limit:
        return text
    lines = text.split("\n")
    for kept in range(len(lines) - 1, 0, -1):
        head = "\n".join(lines[:kept])
        if head.count(FENCE) % 2:
            head += "\n" + FENCE
        candidate = f"{head}\n… {len(lines) - kept} more lines not shown"
        if discord_length(candidate) <= limit:
            return candidate
    cut = limit - len(CUT_MARKER)
    while discord_length(text[:cut]) > limit - len(CUT_MARKER):
        cut -= 1
    return text[:cut] + CUT_MARKER


def reply_file(reply: Reply) -> discord.File | None:
    if reply.attachment is None:
        return None
    return discord.File(io.BytesIO(reply.attachment.content), filename=reply.attachment.filename)
