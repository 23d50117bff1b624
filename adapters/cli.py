"""`ember-bot` — the command line: console chat, the model server, and the chat adapters."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any

from adapters.discord.settings import DiscordSettings
from adapters.slack.settings import SlackSettings
from bot.domain.errors import SetupError
from bot.settings import NO_BACKEND_HELP, Settings, load_or_report, load_settings_or_report

SERVER_EXTRA_HELP = (
    "The model server needs the 'server' extra: pip install torch==2.13.0 && "
    "pip install -e '.[server]'"
)
NO_PLATFORM_HELP = (
    "No chat platform is configured: set DISCORD_BOT_TOKEN, and/or SLACK_BOT_TOKEN with "
    "SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode). "
    "`ember-bot doctor` checks the whole setup."
)
PASS_THROUGH = {
    "serve": "run the self-hosted Ember-compatible model server (--help for options)",
    "fetch": "download a preset's model, SAE and labels for the server (then works offline)",
    "label": "label an SAE's features from a corpus with a chat model (autointerp)",
    "discord": "run the Discord bot; `discord sync`, `discord invite-url`",
    "slack": "run the Slack bot (Socket Mode, or --http); `slack manifest`",
    "db": "database tools: `db copy --from sqlite:///… --to postgresql://…`",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ember-bot", description="Chat with a language model and steer it from the inside."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    console = commands.add_parser("console", help="chat and steer from the terminal")
    console.add_argument("--session", default="default", help="session name (default: default)")
    console.add_argument(
        "--serve", metavar="PRESET", help="start the self-hosted server in-process (e.g. tiny)"
    )
    commands.add_parser("run", help="run every configured chat platform (Discord, Slack)")
    commands.add_parser("doctor", help="check settings, database, backend and platform tokens")
    for name, description in PASS_THROUGH.items():
        commands.add_parser(name, help=description, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in PASS_THROUGH:
        return _pass_through(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    settings = load_settings_or_report()
    if args.command == "console":
        return 2 if settings is None else _console(settings, args.session, args.serve)
    slack_settings = load_or_report(SlackSettings)
    discord_settings = load_or_report(DiscordSettings)
    if settings is None or discord_settings is None or slack_settings is None:
        return 2
    if args.command == "doctor":
        return _doctor(settings, discord_settings, slack_settings)
    return _run_platforms(settings, discord_settings, slack_settings)


def _doctor(
    settings: Settings, discord_settings: DiscordSettings, slack_settings: SlackSettings
) -> int:
    from bot.ops.doctor import PlatformTokens, run_doctor

    tokens = PlatformTokens(
        discord_bot_token=discord_settings.bot_token,
        slack_bot_token=slack_settings.bot_token,
        slack_app_token=slack_settings.app_token,
        slack_signing_secret=slack_settings.signing_secret,
    )
    return run_doctor(settings, tokens, _platform_checks(discord_settings, slack_settings))


def _platform_checks(
    discord_settings: DiscordSettings, slack_settings: SlackSettings
) -> dict[str, Callable[[], Coroutine[Any, Any, str | None]]]:
    """For doctor: ask each configured platform whether it takes its token."""
    from adapters.discord.app import token_problem as discord_problem
    from adapters.slack.app import token_problem as slack_problem

    checks: dict[str, Callable[[], Coroutine[Any, Any, str | None]]] = {}
    if discord_settings.bot_token.get_secret_value():
        checks["discord"] = partial(discord_problem, discord_settings)
    if slack_settings.bot_token.get_secret_value():
        checks["slack"] = partial(slack_problem, slack_settings)
    return checks


def _pass_through(command: str, argv: list[str]) -> int:
    if command in ("serve", "fetch", "label"):
        try:
            if command == "serve":
                from server.cli import main as server_main
            elif command == "label":
                from server.label_cli import main as server_main
            else:  # fetch starts without torch
                from server.fetch_cli import main as server_main
        except ImportError:
            print(SERVER_EXTRA_HELP, file=sys.stderr)
            return 2
        return server_main(argv)
    if command == "db":
        from adapters.db_cli import main as db_main

        return db_main(argv)
    if command == "discord":
        from adapters.discord.app import main as discord_main

        return discord_main(argv)
    from adapters.slack.app import main as slack_main

    return slack_main(argv)


def _run_platforms(
    settings: Settings, discord_settings: DiscordSettings, slack_settings: SlackSettings
) -> int:
    """Discord and/or Slack in one process, sharing one database and backend gateway."""
    import discord

    from adapters.discord.app import BAD_TOKEN_HELP
    from adapters.slack.app import SlackSetupError
    from bot.app import run_app, run_blocking
    from bot.commands.registry import CommandContext

    platforms, problems = _configured_platforms(discord_settings, slack_settings)
    if not settings.has_backend:
        problems.append(NO_BACKEND_HELP)
    elif not platforms and not problems:
        problems.append(NO_PLATFORM_HELP)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 2

    async def serve_all(ctx: CommandContext) -> None:
        async with asyncio.TaskGroup() as group:  # one platform failing stops the other
            for serve in platforms:
                group.create_task(serve(ctx))

    return run_blocking(
        settings,
        run_app(settings, serve_all),
        platforms=(discord_settings, slack_settings),
        setup_errors=(SlackSetupError, discord.LoginFailure),
        describe=lambda error: (
            BAD_TOKEN_HELP if isinstance(error, discord.LoginFailure) else str(error)
        ),
    )


def _configured_platforms(
    discord_settings: DiscordSettings, slack_settings: SlackSettings
) -> tuple[list[Callable[..., Coroutine[Any, Any, None]]], list[str]]:
    """The platforms whose tokens are set, and what is missing for them to start."""
    platforms: list[Callable[..., Coroutine[Any, Any, None]]] = []
    problems: list[str] = []
    if discord_settings.bot_token.get_secret_value():
        from adapters.discord.app import serve as serve_discord

        platforms.append(partial(serve_discord, settings=discord_settings))
    if slack_settings.bot_token.get_secret_value():
        from adapters.slack.app import missing_credentials
        from adapters.slack.app import serve as serve_slack

        http = not slack_settings.app_token.get_secret_value()
        problems += missing_credentials(slack_settings, http=http)
        host, port = slack_settings.http_host, slack_settings.http_port
        serve = partial(serve_slack, settings=slack_settings, http=http, host=host, port=port)
        platforms.append(serve)
    return platforms, problems


def _console(settings: Settings, session: str, preset: str | None) -> int:
    if preset is None and not settings.has_backend:
        print(NO_BACKEND_HELP, file=sys.stderr)
        return 2
    if preset is not None:
        try:
            from server.cli import start_background_server  # noqa: F401 - the extra is there
        except ImportError:
            print(SERVER_EXTRA_HELP, file=sys.stderr)
            return 2
    from bot.app import run_blocking

    if "log_level" not in settings.model_fields_set:  # keep the terminal for the conversation
        settings = settings.model_copy(update={"log_level": "WARNING"})
    # Ctrl-C ends the chat (130); nothing is half-written to the database
    status = run_blocking(settings, _chat_in_terminal(settings, session, preset), interrupted=130)
    if status == 130:
        print(file=sys.stderr)
    return status


async def _chat_in_terminal(settings: Settings, session: str, preset: str | None) -> None:
    from adapters.console import run_console
    from bot.app import check_backend, open_context

    with contextlib.ExitStack() as stack:
        if preset is not None:
            server = stack.enter_context(_start_server(preset))
            local = {"goodfire_base_url": server.base_url, "ember_model": None}
            settings = settings.model_copy(update=local)
        async with open_context(settings) as ctx:
            await check_backend(ctx)
            await run_console(ctx, session)


def _start_server(preset: str) -> contextlib.AbstractContextManager[Any]:
    from server.cli import start_background_server

    try:  # loading blocks the loop: nothing else runs yet
        return start_background_server(preset)
    except (OSError, ValueError, KeyError) as error:
        raise SetupError(f"ember-bot console --serve: could not load the model: {error}") from None
