"""All configuration, from the environment and `.env`. Nothing else reads os.environ."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

HOSTED_BASE_URL = "https://api.goodfire.ai"


class SettingsError(Exception):
    """Settings are invalid; `problems` holds one human-readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value


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

    @field_validator("goodfire_base_url", "discord_api_base")
    @classmethod
    def _base_url_is_http(cls, value: str) -> str:
        return http_url(value).rstrip("/")

    @field_validator("ember_model")
    @classmethod
    def _blank_model_means_ask(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

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
    slack_http_host: str = Field(
        "0.0.0.0", description="Address `ember-bot run` serves Slack's HTTP mode on."
    )
    slack_http_port: int = Field(
        3000, ge=1, le=65_535, description="Port `ember-bot run` serves Slack's HTTP mode on."
    )

    @field_validator("slack_api_url")
    @classmethod
    def _slack_api_url_is_http(cls, value: str) -> str:
        return http_url(value).rstrip("/") + "/"  # slack_sdk joins method names onto it

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

    # --- reliability ---
    chat_user_burst: int = Field(
        5, ge=1, le=1000, description="Chat turns one user may start back to back."
    )
    chat_user_per_minute: float = Field(
        12, ge=0, le=60_000, description="Chat turns a user regains per minute (0: no limit)."
    )
    chat_channel_burst: int = Field(
        10, ge=1, le=1000, description="Chat turns one channel may start back to back."
    )
    chat_channel_per_minute: float = Field(
        30, ge=0, le=60_000, description="Chat turns a channel regains per minute (0: no limit)."
    )
    steer_user_burst: int = Field(
        10, ge=1, le=1000, description="Steering commands one user may run back to back."
    )
    steer_user_per_minute: float = Field(
        30,
        ge=0,
        le=60_000,
        description="Steering commands a user regains per minute (0: no limit).",
    )
    steer_channel_burst: int = Field(
        20, ge=1, le=1000, description="Steering commands one channel may run back to back."
    )
    steer_channel_per_minute: float = Field(
        60,
        ge=0,
        le=60_000,
        description="Steering commands a channel regains per minute (0: no limit).",
    )
    backend_max_concurrency: int = Field(
        8, ge=1, le=1000, description="Backend calls (reply streams included) in flight at once."
    )
    backend_max_queue: int = Field(
        200,
        ge=0,
        le=100_000,
        description="Requests that may wait for a backend slot; more are refused.",
    )
    breaker_failures: int = Field(
        5, ge=1, le=1000, description="Failed backend calls in a row that pause all calls."
    )
    breaker_cooldown_seconds: float = Field(
        15, gt=0, le=3600, description="How long calls stay paused before one probe is let through."
    )
    max_query_chars: int = Field(200, ge=1, le=10_000, description="Longest feature search text.")
    max_command_chars: int = Field(
        16_000, ge=100, le=1_000_000, description="Longest command line, imported JSON included."
    )
    metrics_port: int = Field(
        0, ge=0, le=65_535, description="Port serving /metrics and /healthz (0: off)."
    )
    metrics_host: str = Field("127.0.0.1", description="Address the metrics endpoint binds to.")
    health_timeout_seconds: float = Field(
        2.0, gt=0, le=60, description="Time each /healthz check may take."
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: str = Field("text", description="text, or json for one JSON object per line.")
    shutdown_grace_seconds: float = Field(
        20, ge=0, le=600, description="On SIGTERM/SIGINT, how long running replies may finish."
    )

    @field_validator("log_level")
    @classmethod
    def _log_level_is_known(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @field_validator("log_format")
    @classmethod
    def _log_format_is_known(cls, value: str) -> str:
        if value.lower() not in ("text", "json"):
            raise ValueError("must be text or json")
        return value.lower()

    # --- end reliability ---


NO_BACKEND_HELP = """\
No model backend is configured.
  • Try it offline right now:   ember-bot console --serve tiny
  • Or run the self-hosted server (pip install -e '.[server]'):
        ember-bot serve --preset tiny        # then, in .env:
        GOODFIRE_BASE_URL=http://127.0.0.1:8000
  • Or point GOODFIRE_BASE_URL / GOODFIRE_API_KEY at any Ember-compatible server."""


def load_settings_or_report(stream: TextIO = sys.stderr) -> Settings | None:
    """Settings, or None after printing one `config error:` line per problem to `stream`."""
    try:
        return load_settings()
    except SettingsError as error:
        for problem in error.problems:
            print(f"config error: {problem}", file=stream)
        return None


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
