"""Every command, in the order /help and the platforms list them."""

from __future__ import annotations

from bot.commands import autosteer, compare, guard, help, history, inspect, steering, variants
from bot.commands.registry import Registry


def build_registry() -> Registry:
    registry = Registry(
        group_defaults={"features": "show", "guard": "set", "history": "steering"},
        group_descriptions={
            "features": "See the steering in effect or search the model's features",
            "variant": "Named variants of the bot in this channel",
            "guard": "Stop replies when a feature fires too strongly",
            "history": "What changed in this channel",
        },
    )
    for family in (steering, variants, inspect, compare, autosteer, guard, history, help):
        for command in family.commands():
            registry.add(command)
    return registry
