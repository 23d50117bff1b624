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
