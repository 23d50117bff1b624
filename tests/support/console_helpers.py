"""Running the console as a user does: a real `python -m adapters console`, piped stdin."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from adapters.discord.settings import DiscordSettings
from adapters.slack.settings import SlackSettings
from bot.settings import Settings
from tests.support.fake_ember import FakeEmber


async def run_console(
    stdin: str, env: dict[str, str], *args: str, cwd: Path | None = None
) -> tuple[int, str, str]:
    """A scripted `python -m adapters console` session: exit status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "adapters",
        "console",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), timeout=60)
    return process.returncode or 0, out.decode(), err.decode()


def hermetic_env() -> dict[str, str]:
    """This process's environment without any ember-bot setting, so a child process sees only
    the settings a test gives it."""
    names = {name.upper() for name in Settings.model_fields}
    for platform in (DiscordSettings, SlackSettings):
        prefix = platform.model_config.get("env_prefix", "")
        names |= {f"{prefix}{name}".upper() for name in platform.model_fields}
    return {k: v for k, v in os.environ.items() if k.upper() not in names}


def console_env(tmp_path: Path, fake: FakeEmber | None) -> dict[str, str]:
    """No ember-bot settings but a database in `tmp_path` and, if given, the fake backend."""
    env = hermetic_env()
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'console.db'}"
    if fake is not None:
        env |= {"GOODFIRE_BASE_URL": fake.base_url, "GOODFIRE_API_KEY": fake.api_key}
    return env
