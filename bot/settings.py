"""Configuration from the environment and `.env`: the core's Settings, and the machinery every
settings class shares (each chat platform declares its own in adapters/<platform>/settings.py).
Nothing else reads os.environ."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO, TypeVar

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


def comma_list(value: str, valid: Callable[[str], bool] = bool, problem: str = "") -> str:
    """A comma-separated setting in canonical form: items stripped, empty ones dropped;
    ValueError(`problem`) if `valid` rejects an item."""
    items = [part.strip() for part in value.split(",") if part.strip()]
    if not all(valid(item) for item in items):
        raise ValueError(problem)
    return ",".join(items)


def comma_items(value: str) -> list[str]:
    """The items of a setting `comma_list` validated."""
    return [item for item in value.split(",") if item]


class EnvSettings(BaseSettings):
    """Read from the environment and `.env`; variables of other settings classes are ignored.
    A subclass may add an `env_prefix` to its model_config."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")


class Settings(EnvSettings):
    """What the core needs: backend, database, conversation, limits, logging."""

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
        "sqlite:///data/ember-bot.db",
        description="sqlite:///path (one process), or postgresql://user:password@host/db.",
    )
    database_busy_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=600,
        description="How long a database write waits for another process's lock.",
    )
    database_pool_size: int = Field(
        10, ge=1, le=500, description="PostgreSQL connections per bot process."
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
        return http_url(value).rstrip("/")

    @field_validator("ember_model")
    @classmethod
    def _blank_model_means_ask(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("database_url")
    @classmethod
    def _database_url_is_known(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(
                "must look like sqlite:///path/to/file.db or postgresql://user:password@host/db"
            )
        return value

    @property
    def database_path(self) -> Path:
        """The SQLite file; meaningless when DATABASE_URL is a PostgreSQL URL."""
        return Path(self.database_url.removeprefix("sqlite:///"))

    @property
    def has_backend(self) -> bool:
        """False when neither a key nor a custom server was configured."""
        return bool(self.goodfire_api_key.get_secret_value()) or (
            self.goodfire_base_url != HOSTED_BASE_URL
        )

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


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load_settings_or_report(stream: TextIO = sys.stderr) -> Settings | None:
    """Settings, or None after printing one `config error:` line per problem to `stream`."""
    return load_or_report(Settings, stream)


def load_or_report(
    settings_class: type[SettingsT], stream: TextIO = sys.stderr, **overrides: object
) -> SettingsT | None:
    """`settings_class` loaded (`overrides`, e.g. from command-line flags, win over the
    environment), or None after printing one `config error:` line per problem."""
    try:
        return load(settings_class, **overrides)
    except SettingsError as error:
        for problem in error.problems:
            print(f"config error: {problem}", file=stream)
        return None


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning validation failures into one line per problem."""
    return load(Settings, **overrides)


def load(settings_class: type[SettingsT], **overrides: object) -> SettingsT:
    """Build `settings_class`, turning validation failures into one line per problem, each
    naming the environment variable."""
    try:
        return settings_class(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        prefix = settings_class.model_config.get("env_prefix", "")
        raise SettingsError([_describe(problem, prefix) for problem in error.errors()]) from None


_SECRET_WORDS = ("KEY", "TOKEN", "SECRET")


def _describe(problem: Mapping[str, Any], prefix: str = "") -> str:
    field = ".".join(str(part) for part in problem["loc"]).upper()
    field = f"{prefix.upper()}{field}" if field else "SETTINGS"
    message = problem["msg"].removeprefix("Value error, ")
    if any(word in field for word in _SECRET_WORDS):
        return f"{field}: {message}"
    return f"{field}: {message} (got {_without_password(problem.get('input'))!r})"


def _without_password(value: object) -> object:
    """`value` with the password of a URL (`postgresql://user:password@host/db`) masked."""
    if not isinstance(value, str) or "@" not in value:
        return value
    scheme, separator, rest = value.partition("://")
    userinfo, at, location = rest.rpartition("@")
    if not separator or not at or ":" not in userinfo:
        return value
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{location}"
