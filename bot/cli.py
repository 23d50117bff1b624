"""`ember-bot` — the command line: console chat, the model server, and the chat adapters."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from bot.settings import Settings, SettingsError, load_settings

NO_BACKEND_HELP = """\
No model backend is configured.
  • Try it offline right now:   ember-bot console --serve tiny
  • Or run the self-hosted server (pip install -e '.[server]'):
        ember-bot serve --preset tiny        # then, in .env:
        GOODFIRE_BASE_URL=http://127.0.0.1:8000
  • Or point GOODFIRE_BASE_URL / GOODFIRE_API_KEY at any Ember-compatible server."""

SERVER_EXTRA_HELP = (
    "The model server needs the 'server' extra: pip install torch==2.13.0 && "
    "pip install -e '.[server]'"
)


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
    commands.add_parser("serve", help="run the self-hosted Ember-compatible server", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
    except SettingsError as error:
        for problem in error.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return 2
    return _console(settings, args.session, args.serve)


def _serve(argv: list[str]) -> int:
    try:
        from server.cli import main as serve_main
    except ImportError:
        print(SERVER_EXTRA_HELP, file=sys.stderr)
        return 2
    return serve_main(argv)


def _console(settings: Settings, session: str, preset: str | None) -> int:
    from adapters.console import run_console
    from bot.app import open_context

    async def chat(settings: Settings) -> None:
        async with open_context(settings) as ctx:
            await run_console(ctx, session)

    if preset is None:
        if not settings.has_backend:
            print(NO_BACKEND_HELP, file=sys.stderr)
            return 2
        asyncio.run(chat(settings))
        return 0
    try:
        from server.cli import start_background_server
    except ImportError:
        print(SERVER_EXTRA_HELP, file=sys.stderr)
        return 2
    with start_background_server(preset) as server:
        local = settings.model_copy(
            update={"goodfire_base_url": server.base_url, "ember_model": None}
        )
        asyncio.run(chat(local))
    return 0
