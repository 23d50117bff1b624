"""Who and where on Discord: session keys, actors, and who may steer."""

from __future__ import annotations

import discord

from bot.domain.types import Actor, SessionKey


def session_key(guild_id: int | None, channel_id: int | None) -> SessionKey:
    """One bot state per channel (threads and DMs are channels too)."""
    return SessionKey("discord", str(guild_id) if guild_id else "dm", str(channel_id))


def actor_for(user: discord.abc.User) -> Actor:
    return Actor(str(user.id), user.display_name)


def can_steer(
    user: discord.abc.User, permissions: discord.Permissions, steer_roles: frozenset[str]
) -> bool:
    """Administrators always; else members holding a configured role (name or ID); else, with
    no roles configured, members who may manage messages in the channel. A DM is the user's own.
    """
    if not isinstance(user, discord.Member):
        return True
    if permissions.administrator:
        return True
    if steer_roles:
        return any(
            str(role.id) in steer_roles or role.name.lower() in steer_roles for role in user.roles
        )
    return permissions.manage_messages
