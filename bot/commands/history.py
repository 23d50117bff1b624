"""/history steering: who changed the steering in a channel, from the audit log."""

from __future__ import annotations

import time

from bot.commands.registry import Command, CommandContext, Invocation
from bot.commands.replies import Reply
from storage.store import AuditEntry

HISTORY_LIMIT = 20


async def history_steering(ctx: CommandContext, inv: Invocation) -> Reply:
    entries, total = await ctx.service.steering.history(inv.session, HISTORY_LIMIT)
    if not entries:
        return Reply("Nobody has changed the steering in this channel yet.")
    lines = ["Steering changes in this channel, newest first:"]
    lines += [f"  {_when(e.created_at)} · {e.actor} · {describe_change(e)}" for e in entries]
    if total > len(entries):
        lines.append(f"  … and {total - len(entries)} older changes.")
    return Reply("\n".join(lines))


def describe_change(entry: AuditEntry) -> str:
    """One audit entry in words, e.g. `steered "pirate speech" +0.50 (variant default)`."""
    detail = entry.detail
    variant = f" (variant {detail['variant']})" if "variant" in detail else ""
    action = entry.action
    if action in ("steer", "autosteer.apply"):
        verb = "applied AutoSteer:" if action == "autosteer.apply" else "steered"
        changes = [
            f'"{label}" {"cleared" if value == 0 else f"{value:+.2f}"}'
            for label, value in detail.get("set", {}).values()
        ]
        return f"{verb} {', '.join(changes)}{variant}"
    if action == "guard.set":
        return f'guarded "{detail.get("label")}" > {detail.get("threshold", 0):g}{variant}'
    if action == "guard.clear":
        features = ", ".join(f'"{label}"' for label in detail.get("features", []))
        return f"removed the guard on {features}{variant}"
    simple = {
        "steer.clear": f'cleared "{detail.get("label")}"{variant}',
        "steer.reset": f"cleared all steering{variant}",
        "variant.create": f'created variant "{detail.get("variant")}"'
        + (f' from "{detail["from"]}"' if detail.get("from") else ""),
        "variant.use": f'switched to variant "{detail.get("variant")}"',
        "variant.delete": f'deleted variant "{detail.get("variant")}"',
        "variant.import": f'imported variant "{detail.get("variant")}" '
        f"({detail.get('edits', 0)} edits)",
        "history.clear": f"cleared {detail.get('messages', 0)} messages of history",
        "feedback": f"rated a reply {'👍' if detail.get('rating') == 'good' else '👎'} "
        f"({detail.get('steering') or 'unsteered'}){variant}",
    }
    return simple.get(action, action)


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def commands() -> list[Command]:
    return [
        Command(
            ("history", "steering"),
            "Who changed the steering in this channel, newest first",
            history_steering,
        )
    ]
