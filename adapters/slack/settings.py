"""Slack's settings: SLACK_* variables from the environment and `.env`."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from bot.settings import EnvSettings, comma_items, comma_list, http_url


def _is_slack_id(value: str) -> bool:
    return len(value) >= 3 and value.isascii() and value.isalnum()


class SlackSettings(EnvSettings):
    model_config = SettingsConfigDict(env_prefix="SLACK_")

    bot_token: SecretStr = Field(
        SecretStr(""), description="Slack bot token (xoxb-...), from OAuth & Permissions."
    )
    app_token: SecretStr = Field(
        SecretStr(""),
        description="Slack app-level token (xapp-...) with connections:write, for Socket Mode.",
    )
    signing_secret: SecretStr = Field(
        SecretStr(""), description="Slack signing secret, to verify requests in HTTP mode."
    )
    api_url: str = Field(
        "https://slack.com/api/", description="Slack Web API base URL (for proxies and tests)."
    )
    command_prefix: str = Field(
        "", description='Prefix for slash command names: "ember-" gives /ember-steer.'
    )
    steer_users: str = Field(
        "", description="Comma-separated Slack user IDs allowed to steer and reset (empty: all)."
    )
    steer_usergroups: str = Field(
        "", description="Comma-separated Slack user group IDs allowed to steer and reset."
    )
    listen_channel_ids: str = Field(
        "", description="Comma-separated channel IDs where the bot answers every message."
    )
    native_streaming: bool = Field(
        True,
        description="Stream replies with Slack's chat.startStream API where the workspace has "
        "it (else, or if Slack refuses, chat.update streaming).",
    )
    http_host: str = Field(
        "0.0.0.0", description="Address `ember-bot run` serves Slack's HTTP mode on."
    )
    http_port: int = Field(
        3000, ge=1, le=65_535, description="Port `ember-bot run` serves Slack's HTTP mode on."
    )

    @field_validator("api_url")
    @classmethod
    def _api_url_is_http(cls, value: str) -> str:
        return http_url(value).rstrip("/") + "/"  # slack_sdk joins method names onto it

    @field_validator("command_prefix")
    @classmethod
    def _prefix_is_a_command_word(cls, value: str) -> str:
        if len(value) > 16 or not all(c.isascii() and (c.isalnum() or c in "-_") for c in value):
            raise ValueError("use at most 16 lowercase letters, digits, '-' or '_'")
        return value.lower()

    @field_validator("steer_users", "steer_usergroups", "listen_channel_ids")
    @classmethod
    def _slack_ids(cls, value: str) -> str:
        return comma_list(
            value.upper(), _is_slack_id, "must be comma-separated Slack IDs like U0123ABCD"
        )

    @property
    def steer_user_ids(self) -> frozenset[str]:
        return frozenset(comma_items(self.steer_users))

    @property
    def steer_usergroup_ids(self) -> frozenset[str]:
        return frozenset(comma_items(self.steer_usergroups))

    @property
    def listen_channels(self) -> frozenset[str]:
        return frozenset(comma_items(self.listen_channel_ids))
