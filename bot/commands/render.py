"""Plain-text rendering shared by every adapter: tables with Unicode bars, safe truncation."""

from __future__ import annotations

from bot.commands.replies import Reply, Table

BAR_WIDTH = 12
EIGHTHS = " ▏▎▍▌▋▊▉█"


def bar(value: float, scale: float, width: int = BAR_WIDTH) -> str:
    """A left-aligned bar of |value|/scale of `width` cells, in eighth-cell steps."""
    if scale <= 0:
        return " " * width
    eighths = round(min(abs(value) / scale, 1.0) * width * 8)
    full, rest = divmod(eighths, 8)
    text = "█" * full + (EIGHTHS[rest] if rest else "")
    return text.ljust(width)


def render_table(table: Table, *, max_rows: int = 25, label_width: int = 32) -> str:
    """A compact monospace table; rows beyond `max_rows` are summarised with a count."""
    lines = [table.title]
    if not table.rows:
        return "\n".join([*lines, "  (none)"])
    scale = max(abs(row.value) for row in table.rows)
    for row in table.rows[:max_rows]:
        label = shorten(row.label, label_width).ljust(label_width)
        sign = "-" if row.value < 0 else " "
        note = f"  {row.note}" if row.note else ""
        lines.append(f"{label} {sign}{bar(row.value, scale)} {row.value:+.3g}{note}")
    hidden = len(table.rows) - max_rows
    if hidden > 0:
        lines.append(f"… and {hidden} more")
    if table.footer:
        lines.append(table.footer)
    return "\n".join(lines)


def render_reply_text(reply: Reply) -> str:
    """Reply text followed by its table, if any, as one plain-text block."""
    if reply.table is None:
        return reply.text
    parts = [reply.text, render_table(reply.table)] if reply.text else [render_table(reply.table)]
    return "\n".join(parts)


def shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
