"""All configuration, from the environment and `.env`. Nothing else reads os.environ."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

HOSTED_BASE_URL = "https://api.goodfire.ai"


class SettingsError(Exception):
    """Settings are invalid; `problems` holds one human-readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    goodfire_api_key: SecretStr = Field(
        SecretStr(""), description="API key sent as a bearer token to the Ember backend."
    )
    goodfire_base_url: str = Field(
        HOSTED_BASE_URL, description="Base URL of any Ember-compatible server."
    )
    ember_model: str | None = Field(
        None, description="Model id; unset = ask the server's /models route."
    )
    database_url: str = Field(
        "sqlite:///data/ember-bot.db", description="SQLite database, as sqlite:///path."
    )
    system_prompt: str = Field(
        "You are a helpful assistant in a team chat. Be brief, friendly and to the point.",
        description="System message sent before every conversation.",
    )
    history_max_messages: int = Field(
        40, ge=1, le=127, description="Most past messages sent with a chat turn."
    )
    history_max_chars: int = Field(
        12_000, ge=500, le=1_000_000, description="Character budget for past messages."
    )
    max_completion_tokens: int = Field(512, ge=1, le=8192, description="Longest reply, in tokens.")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature (0..2).")
    top_p: float = Field(0.9, ge=0, le=1, description="Nucleus sampling cutoff (0..1).")
    search_top_k: int = Field(20, ge=1, le=100, description="Features returned by a search.")
    inspect_top_k: int = Field(10, ge=1, le=100, description="Features shown by /inspect.")
    max_message_chars: int = Field(
        4000, ge=1, le=100_000, description="Longest chat message accepted from a user."
    )
    max_edits_per_variant: int = Field(
        32, ge=1, le=512, description="Most steered features in one variant."
    )
    max_variants_per_channel: int = Field(
        20, ge=1, le=1000, description="Most named variants in one channel."
    )
    backend_deadline_seconds: float = Field(
        30.0, gt=0, le=600, description="Overall deadline for one backend call, with retries."
    )

    @field_validator("goodfire_base_url")
    @classmethod
    def _base_url_is_http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _database_url_is_sqlite(cls, value: str) -> str:
        if not value.startswith("sqlite:///"):
            raise ValueError("must look like sqlite:///path/to/file.db")
        return value

    @property
    def database_path(self) -> Path:
        return Path(self.database_url.removeprefix("sqlite:///"))

    @property
    def has_backend(self) -> bool:
        """False when neither a key nor a custom server was configured."""
        return bool(self.goodfire_api_key.get_secret_value()) or (
            self.goodfire_base_url != HOSTED_BASE_URL
        )

    # --- slack ---
    slack_bot_token: SecretStr = Field(
        SecretStr(""), description="Slack bot token (xoxb-...), from OAuth & Permissions."
    )
    slack_app_token: SecretStr = Field(
        SecretStr(""),
        description="Slack app-level token (xapp-...) with connections:write, for Socket Mode.",
    )
    slack_signing_secret: SecretStr = Field(
        SecretStr(""), description="Slack signing secret, to verify requests in HTTP mode."
    )
    slack_api_url: str = Field(
        "https://slack.com/api/", description="Slack Web API base URL (for proxies and tests)."
    )
    slack_command_prefix: str = Field(
        "", description='Prefix for slash command names: "ember-" gives /ember-steer.'
    )
    slack_steer_users: str = Field(
        "", description="Comma-separated Slack user IDs allowed to steer and reset (empty: all)."
    )
    slack_steer_usergroups: str = Field(
        "", description="Comma-separated Slack user group IDs allowed to steer and reset."
    )
    slack_listen_channel_ids: str = Field(
        "", description="Comma-separated channel IDs where the bot answers every message."
    )

    @field_validator("slack_api_url")
    @classmethod
    def _slack_api_url_is_http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") + "/"

    @field_validator("slack_command_prefix")
    @classmethod
    def _slack_prefix_is_a_command_word(cls, value: str) -> str:
        if len(value) > 16 or not all(c.isascii() and (c.isalnum() or c in "-_") for c in value):
            raise ValueError("use at most 16 lowercase letters, digits, '-' or '_'")
        return value.lower()

    @field_validator("slack_steer_users", "slack_steer_usergroups", "slack_listen_channel_ids")
    @classmethod
    def _slack_ids(cls, value: str) -> str:
        ids = [part.strip().upper() for part in value.split(",") if part.strip()]
        if not all(len(i) >= 3 and i.isascii() and i.isalnum() for i in ids):
            raise ValueError("must be comma-separated Slack IDs like U0123ABCD")
        return ",".join(ids)

    @property
    def slack_steer_user_ids(self) -> frozenset[str]:
        return frozenset(filter(None, self.slack_steer_users.split(",")))

    @property
    def slack_steer_usergroup_ids(self) -> frozenset[str]:
        return frozenset(filter(None, self.slack_steer_usergroups.split(",")))

    @property
    def slack_listen_channels(self) -> frozenset[str]:
        return frozenset(filter(None, self.slack_listen_channel_ids.split(",")))

    # --- end slack ---

    # --- discord ---
    discord_bot_token: SecretStr = Field(
        SecretStr(""), description="Discord bot token, from the Developer Portal's Bot page."
    )
    discord_api_base: str = Field(
        "https://discord.com/api/v10",
        description="Discord REST API base URL, including the version (for proxies and tests).",
    )
    discord_dev_guild_ids: str = Field(
        "",
        description="Comma-separated guild IDs whose slash commands are synced at every start "
        "(instant, for development); global sync is `ember-bot discord sync`.",
    )
    discord_steer_roles: str = Field(
        "",
        description="Comma-separated role names or IDs allowed to steer, reset and change "
        "variants (empty: members with Manage Messages). Administrators always may.",
    )
    discord_listen_channel_ids: str = Field(
        "",
        description="Comma-separated channel IDs where the bot answers every message "
        "(turns on the privileged Message Content intent; enable it in the Developer Portal).",
    )
    discord_chat_cooldown_seconds: float = Field(
        5.0, ge=0, le=3600, description="Seconds a Discord user waits between chat turns."
    )
    discord_steer_cooldown_seconds: float = Field(
        3.0, ge=0, le=3600, description="Seconds a Discord user waits between steering commands."
    )
    discord_channel_chats_per_minute: int = Field(
        12, ge=1, le=1000, description="Chat turns one Discord channel may start per minute."
    )
    discord_channel_steers_per_minute: int = Field(
        10, ge=1, le=1000, description="Steering commands one Discord channel may run per minute."
    )

    @field_validator("discord_api_base")
    @classmethod
    def _discord_api_base_is_http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("discord_dev_guild_ids", "discord_listen_channel_ids")
    @classmethod
    def _discord_ids(cls, value: str) -> str:
        ids = [part.strip() for part in value.split(",") if part.strip()]
        if not all(i.isascii() and i.isdigit() for i in ids):
            raise ValueError("must be comma-separated numeric Discord IDs")
        return ",".join(ids)

    @property
    def discord_dev_guilds(self) -> tuple[int, ...]:
        return tuple(int(i) for i in self.discord_dev_guild_ids.split(",") if i)

    @property
    def discord_listen_channels(self) -> frozenset[int]:
        return frozenset(int(i) for i in self.discord_listen_channel_ids.split(",") if i)

    @field_validator("discord_steer_roles")
    @classmethod
    def _discord_roles(cls, value: str) -> str:
        return ",".join(r.strip().lower() for r in value.split(",") if r.strip())

    @property
    def discord_steer_role_set(self) -> frozenset[str]:
        """Role names (lower-cased) and IDs allowed to steer."""
        return frozenset(filter(None, self.discord_steer_roles.split(",")))

    # --- end discord ---


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning validation failures into one line per problem."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise SettingsError([_describe(problem) for problem in error.errors()]) from None


_SECRET_WORDS = ("KEY", "TOKEN", "SECRET")


def _describe(problem: Mapping[str, Any]) -> str:
    field = ".".join(str(part) for part in problem["loc"]).upper() or "SETTINGS"
    message = problem["msg"].removeprefix("Value error, ")
    if any(word in field for word in _SECRET_WORDS):
        return f"{field}: {message}"
    return f"{field}: {message} (got {problem.get('input')!r})"
