"""Discord's settings: DISCORD_* variables from the environment and `.env`."""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from bot.settings import EnvSettings, comma_items, comma_list, http_url


def _is_discord_id(value: str) -> bool:
    return value.isascii() and value.isdigit()


class DiscordSettings(EnvSettings):
    model_config = SettingsConfigDict(env_prefix="DISCORD_")

    bot_token: SecretStr = Field(
        SecretStr(""), description="Discord bot token, from the Developer Portal's Bot page."
    )
    api_base: str = Field(
        "https://discord.com/api/v10",
        description="Discord REST API base URL, including the version (for proxies and tests).",
    )
    dev_guild_ids: str = Field(
        "",
        description="Comma-separated guild IDs whose slash commands are synced at every start "
        "(instant, for development); global sync is `ember-bot discord sync`.",
    )
    steer_roles: str = Field(
        "",
        description="Comma-separated role names or IDs allowed to steer, reset and change "
        "variants (empty: members with Manage Messages). Administrators always may.",
    )
    listen_channel_ids: str = Field(
        "",
        description="Comma-separated channel IDs where the bot answers every message "
        "(turns on the privileged Message Content intent; enable it in the Developer Portal).",
    )

    shard_count: int = Field(
        0,
        ge=0,
        le=10_000,
        description="Gateway shards of the whole bot, to spread over processes (0: one "
        "connection, no sharding). Discord sends a server's events to shard "
        "(server_id >> 22) % count.",
    )
    shard_ids: str = Field(
        "",
        description="Comma-separated shards this process runs, each below DISCORD_SHARD_COUNT "
        "(empty: all of them).",
    )

    @field_validator("shard_ids")
    @classmethod
    def _shards_fit_the_count(cls, value: str, info: ValidationInfo) -> str:
        value = comma_list(value, str.isdigit, "must be comma-separated shard numbers (0, 1, …)")
        count = info.data.get("shard_count", 0)  # validated before: declared before
        ids = [int(i) for i in comma_items(value)]
        if ids and not count:
            raise ValueError("needs DISCORD_SHARD_COUNT (the total) too")
        if any(i >= count for i in ids):
            raise ValueError(f"must each be below DISCORD_SHARD_COUNT ({count})")
        return value

    @property
    def shards(self) -> list[int]:
        return [int(i) for i in comma_items(self.shard_ids)]

    @field_validator("api_base")
    @classmethod
    def _api_base_is_http(cls, value: str) -> str:
        return http_url(value).rstrip("/")

    @field_validator("dev_guild_ids", "listen_channel_ids")
    @classmethod
    def _discord_ids(cls, value: str) -> str:
        return comma_list(value, _is_discord_id, "must be comma-separated numeric Discord IDs")

    @property
    def dev_guilds(self) -> tuple[int, ...]:
        return tuple(int(i) for i in comma_items(self.dev_guild_ids))

    @property
    def listen_channels(self) -> frozenset[int]:
        return frozenset(int(i) for i in comma_items(self.listen_channel_ids))

    @field_validator("steer_roles")
    @classmethod
    def _roles(cls, value: str) -> str:
        return comma_list(value.lower())

    @property
    def steer_role_set(self) -> frozenset[str]:
        """Role names (lower-cased) and IDs allowed to steer."""
        return frozenset(comma_items(self.steer_roles))
