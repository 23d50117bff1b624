"""`ember-bot slack`: the Slack bot on slack-bolt's AsyncApp, in Socket Mode or HTTP mode.

    ember-bot slack                       # Socket Mode: SLACK_BOT_TOKEN + SLACK_APP_TOKEN
    ember-bot slack --http --port 3000    # HTTP mode: SLACK_BOT_TOKEN + SLACK_SIGNING_SECRET
    ember-bot slack manifest              # print the app manifest for the configured commands

Slash commands and pickers live in commands.py, streamed chat in chat.py (native streams in
streams.py), feedback buttons in feedback.py, assistant threads in assistant.py, Block Kit and
escaping in render.py, the manifest in manifest.py, the settings in settings.py.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.assistant import SlackAssistant
from adapters.slack.chat import SlackChat
from adapters.slack.commands import SlackCommands
from adapters.slack.feedback import SlackFeedback
from adapters.slack.manifest import build_manifest, manifest_yaml
from adapters.slack.permissions import SteerPermissions
from adapters.slack.render import SlackRenderer
from adapters.slack.replies import SlackReplies
from adapters.slack.settings import SlackSettings
from bot.commands.catalog import build_registry
from bot.commands.registry import CommandContext
from bot.domain.errors import SetupError
from bot.settings import Settings, load_or_report, load_settings_or_report

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
RATE_LIMIT_RETRIES = 3  # each waits for Slack's Retry-After
UNSENT_RETRIES = 6  # retries in all of a call that cannot connect: about 16 s, backing off


class SlackSetupError(SetupError):
    """Slack refused our credentials or could not be reached; the message says which."""


async def verify_tokens(client: AsyncWebClient, app_token: str | None = None) -> None:
    """Fail fast, with a clear message, on a wrong token or an unreachable Slack."""
    await _check(client, "SLACK_BOT_TOKEN", client.auth_test())
    if app_token is not None:
        await _check(client, "SLACK_APP_TOKEN", client.apps_connections_open(app_token=app_token))


async def _check(client: AsyncWebClient, setting: str, call: Awaitable[Any]) -> None:
    try:
        await call
    except SlackApiError as error:
        raise SlackSetupError(f"Slack rejected {setting}: {error.response.get('error')}.") from None
    except aiohttp.ClientError as error:
        raise SlackSetupError(f"Could not reach Slack at {client.base_url} ({error}).") from None
    except TimeoutError:
        raise SlackSetupError(
            f"Slack did not answer at {client.base_url} within {client.timeout} s."
        ) from None


async def token_problem(settings: SlackSettings) -> str | None:
    """None if Slack accepts SLACK_BOT_TOKEN (and SLACK_APP_TOKEN, when set); else what is
    wrong. For `ember-bot doctor`."""
    client = AsyncWebClient(
        token=settings.bot_token.get_secret_value(), base_url=settings.api_url, timeout=10
    )
    try:
        await verify_tokens(client, settings.app_token.get_secret_value() or None)
    except SlackSetupError as error:
        return str(error)
    return None


class SlackBot:
    """The Bolt app wired to the core: slash commands, feature pickers and streamed chat."""

    def __init__(
        self,
        ctx: CommandContext,
        settings: SlackSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        token = settings.bot_token.get_secret_value()
        self.client = AsyncWebClient(
            token=token,
            base_url=settings.api_url,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(),
                AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES),
                # a call that could not connect sent nothing: retry it through a short outage
                AsyncConnectionErrorRetryHandler(
                    max_retry_count=UNSENT_RETRIES,
                    interval_calculator=BackoffRetryIntervalCalculator(backoff_factor=0.25),
                    error_types=[aiohttp.ClientConnectorError],
                ),
            ],
        )
        self._verifier = AsyncWebClient(token=token, base_url=settings.api_url)  # fails fast
        with without_token_warning():
            self.app = AsyncApp(
                client=self.client,
                signing_secret=settings.signing_secret.get_secret_value(),
                name="ember-bot",
            )
        renderer = SlackRenderer(settings.command_prefix, tuple(ctx.registry.top_level_names()))
        permissions = SteerPermissions(
            self.client, settings.steer_user_ids, settings.steer_usergroup_ids
        )
        replies = SlackReplies(renderer, clock)
        SlackCommands(ctx, permissions, renderer, replies).register(self.app)
        SlackChat(
            ctx, settings.listen_channels, native_streaming=settings.native_streaming, clock=clock
        ).register(self.app)
        SlackFeedback(ctx).register(self.app)
        SlackAssistant(ctx).register(self.app)

    async def verify(self, app_token: str | None = None) -> None:
        """Fail fast, with a clear message, on a wrong token or an unreachable Slack."""
        await verify_tokens(self._verifier, app_token)


class _SameTokenWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "`token` will be unused" not in record.getMessage()


@contextmanager
def without_token_warning() -> Iterator[None]:
    """AsyncApp reads SLACK_BOT_TOKEN from the environment itself, then warns that the
    client's token wins; it is the same token, so the warning would only alarm people."""
    logger = logging.getLogger("slack_bolt.AsyncApp")
    quiet = _SameTokenWarning()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


@asynccontextmanager
async def http_server(bot: SlackBot, host: str, port: int) -> AsyncIterator[web.AppRunner]:
    """Serve Slack's requests (commands, events, interactions) at EVENTS_PATH."""
    server = bot.app.server(port=port, path=EVENTS_PATH, host=host)
    runner = web.AppRunner(server.web_app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield runner
    finally:
        await runner.cleanup()


@asynccontextmanager
async def socket_mode(
    bot: SlackBot, app_token: str, *, ping_interval: float = 10
) -> AsyncIterator[AsyncSocketModeHandler]:
    """Connected to Slack over Socket Mode while inside. slack_sdk reconnects by itself when the
    connection drops (at once on a close, else within `ping_interval` seconds)."""
    handler = AsyncSocketModeHandler(bot.app, app_token, ping_interval=ping_interval)
    try:
        await handler.connect_async()
        yield handler
    finally:
        await handler.close_async()


async def serve(
    ctx: CommandContext, settings: SlackSettings, *, http: bool, host: str, port: int
) -> None:
    """Run the Slack bot until cancelled; `run` runs it under bot.app.run_app (drain on SIGTERM)."""
    bot = SlackBot(ctx, settings)
    if http:
        await bot.verify()
        async with http_server(bot, host, port):
            log.info("listening for Slack on http://%s:%d%s", host, port, EVENTS_PATH)
            await asyncio.Event().wait()
    else:
        app_token = settings.app_token.get_secret_value()
        await bot.verify(app_token)
        async with socket_mode(bot, app_token):
            log.info("connected to Slack (Socket Mode)")
            await asyncio.Event().wait()


def missing_credentials(settings: SlackSettings, *, http: bool) -> list[str]:
    required = [
        ("SLACK_BOT_TOKEN", settings.bot_token, "the bot token (xoxb-...)"),
        (
            ("SLACK_SIGNING_SECRET", settings.signing_secret, "needed for --http")
            if http
            else (
                "SLACK_APP_TOKEN",
                settings.app_token,
                "an app-level token (xapp-...) with connections:write, or run with --http",
            )
        ),
    ]
    return [
        f"{name} is not set: {what}."
        for name, value, what in required
        if not value.get_secret_value()
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ember-bot slack",
        description="Run the Slack bot (Socket Mode by default), or `manifest` to print the app "
        "manifest.",
    )
    parser.add_argument("--http", action="store_true", help="serve HTTP instead of Socket Mode")
    parser.add_argument("--host", help="HTTP mode: address to bind (default SLACK_HTTP_HOST)")
    parser.add_argument("--port", type=int, help="HTTP mode: port (default SLACK_HTTP_PORT)")
    return parser


def build_manifest_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ember-bot slack manifest", description="Print the Slack app manifest (YAML)."
    )
    parser.add_argument(
        "--request-url",
        help=f"for HTTP mode: the public URL of {EVENTS_PATH} (default: Socket Mode)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Entry point for `ember-bot slack ...`; `argv` are the words after `slack`."""
    manifest = argv[:1] == ["manifest"]
    if manifest:
        args = build_manifest_parser().parse_args(argv[1:])
    else:
        args = build_parser().parse_args(argv)
    settings = load_settings_or_report()
    slack_settings = load_or_report(SlackSettings)
    if settings is None or slack_settings is None:
        return 2
    if manifest:
        return print_manifest(slack_settings, args.request_url)
    host = args.host or slack_settings.http_host
    port = args.port or slack_settings.http_port
    return run(settings, slack_settings, http=args.http, host=host, port=port)


def print_manifest(settings: SlackSettings, request_url: str | None) -> int:
    manifest = build_manifest(
        build_registry(), prefix=settings.command_prefix, request_url=request_url
    )
    print(manifest_yaml(manifest), end="")
    return 0


def run(
    settings: Settings, slack_settings: SlackSettings, *, http: bool, host: str, port: int
) -> int:
    problems = missing_credentials(slack_settings, http=http)
    if not settings.has_backend:
        problems.append("No model backend: set GOODFIRE_BASE_URL (and GOODFIRE_API_KEY).")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 2
    from bot.app import run_app, run_blocking  # imports goodfire (slow); `manifest` needs none

    work = run_app(
        settings, partial(serve, settings=slack_settings, http=http, host=host, port=port)
    )
    return run_blocking(
        settings, work, platforms=(slack_settings,), setup_errors=(SlackSetupError,)
    )
