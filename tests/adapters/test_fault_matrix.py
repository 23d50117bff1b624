"""The fault matrix: every (command, fault) pair of the README's Troubleshooting table, run as a
user runs it — `python -m adapters …` in a subprocess, settings in its environment, the loopback
fakes (or a closed port) for the services — ends in its one documented line, the documented exit
status, no traceback, and nothing written half-way.

Disk full is injected at the OS boundary: the child runs with RLIMIT_FSIZE 0, so every write to
a file fails (EFBIG, which SQLite reports as a disk I/O error; a full disk is SQLITE_FULL, "the
disk is full"). A tiny filesystem would need mount privileges.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import resource
import signal
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from storage.store import Store
from tests.support.console_helpers import hermetic_env
from tests.support.fake_discord import APPLICATION_ID
from tests.support.fake_ember import FakeEmber
from tests.support.fake_slack import FakeSlack
from tests.support.faults import (
    RejectingServer,
    bot_token,
    closed_port,
    snapshot,
    truncated_npz,
    truncated_pth,
    truncated_safetensors,
)

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CHILD_TIMEOUT = 60.0
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_PROC = os.path.isdir("/proc/self")  # Linux: no folder can be made in /proc


@dataclass
class World:
    """What a case's settings point at: a folder, the fakes, a closed port, locks it holds."""

    tmp: Path
    ember: FakeEmber
    slack: FakeSlack
    rejecting: str  # an HTTP server answering 401 to everything (Discord refusing the token)
    stack: AsyncExitStack
    closed: str = field(default_factory=lambda: f"http://127.0.0.1:{closed_port()}")

    def backend(self, key: str | None = None) -> dict[str, str]:
        return {
            "GOODFIRE_BASE_URL": self.ember.base_url,
            "GOODFIRE_API_KEY": key or "fake-ember-key",
        }

    def database(self, path: Path) -> dict[str, str]:
        return {"DATABASE_URL": f"sqlite:///{path}", "DATABASE_BUSY_TIMEOUT_SECONDS": "0.3"}

    def discord(self, api_base: str) -> dict[str, str]:
        return {"DISCORD_BOT_TOKEN": bot_token(), "DISCORD_API_BASE": api_base}

    def slack_env(self, api_url: str, bot_token: str | None = None) -> dict[str, str]:
        return {
            "SLACK_BOT_TOKEN": bot_token or self.slack.bot_token,
            "SLACK_APP_TOKEN": self.slack.app_token,
            "SLACK_SIGNING_SECRET": "0123456789abcdef0123456789abcdef",
            "SLACK_API_URL": api_url,
        }

    def write(self, name: str, content: bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    async def locked_database(self) -> Path:
        """A migrated database another process (this one) holds a write lock on."""
        path = self.tmp / "locked.db"
        await (await Store.open(path)).close()
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        self.stack.callback(holder.close)
        return path


Setup = Callable[[World], Awaitable[dict[str, str]]]


@dataclass(frozen=True)
class Case:
    command: str  # the words after `python -m adapters`
    fault: str
    setup: Setup  # the fault's settings (and files)
    prefix: str  # how the one line starts
    phrase: str  # what it says; the README's troubleshooting table quotes it
    code: int
    stream: str = "stderr"
    stdin: str = ""
    untouched: tuple[str, ...] = ()  # files (relative to tmp) that must stay absent or as they were
    limit_file_size: bool = False  # disk full: every file write fails
    stop_when: str | None = None  # a command that goes on: SIGTERM once stderr shows this
    needs_torch: bool = False

    @property
    def id(self) -> str:
        return f"{self.command} | {self.fault}"


async def parent_is_a_file(world: World) -> dict[str, str]:
    world.write("afile", b"")
    return {**world.backend(), **world.database(world.tmp / "afile" / "sub" / "x.db")}


async def folder_cannot_be_made(world: World) -> dict[str, str]:
    return {**world.backend(), **world.database(Path("/proc/ember-bot-nope/x.db"))}


async def not_a_database(world: World) -> dict[str, str]:
    world.write("notes.db", b"these are my notes, not a database\n")
    return {**world.backend(), **world.database(world.tmp / "notes.db")}


async def locked(world: World) -> dict[str, str]:
    return {**world.backend(), **world.database(await world.locked_database())}


async def disk_full(world: World) -> dict[str, str]:
    return {**world.backend(), **world.database(world.tmp / "full" / "x.db")}


def database_files(name: str) -> tuple[str, ...]:
    """The database file and the side files SQLite would make beside it."""
    return (name, f"{name}-wal", f"{name}-shm", f"{name}-journal")


def good_database(world: World) -> dict[str, str]:
    return world.database(world.tmp / "bot.db")


async def backend_unreachable(world: World) -> dict[str, str]:
    return {
        **good_database(world),
        "GOODFIRE_BASE_URL": world.closed,
        "BACKEND_DEADLINE_SECONDS": "0.5",  # a chat turn gives up sooner
    }


async def backend_rejects_key(world: World) -> dict[str, str]:
    return {**good_database(world), **world.backend(key="wrong-key")}


async def run_backend_unreachable(world: World) -> dict[str, str]:
    return {**await backend_unreachable(world), **world.slack_env(world.slack.api_url)}


async def run_backend_rejects_key(world: World) -> dict[str, str]:
    return {**await backend_rejects_key(world), **world.slack_env(world.slack.api_url)}


async def discord_unreachable(world: World) -> dict[str, str]:
    return {**good_database(world), **world.backend(), **world.discord(f"{world.closed}/api/v10")}


async def discord_rejects(world: World) -> dict[str, str]:
    return {**good_database(world), **world.backend(), **world.discord(world.rejecting)}


async def slack_unreachable(world: World) -> dict[str, str]:
    return {**good_database(world), **world.backend(), **world.slack_env(f"{world.closed}/api/")}


async def slack_rejects(world: World) -> dict[str, str]:
    slack = world.slack_env(world.slack.api_url, bot_token="xoxb-revoked")
    return {**good_database(world), **world.backend(), **slack}


def sae_file(name: str, content: bytes) -> Setup:
    async def setup(world: World) -> dict[str, str]:
        world.write(name, content)
        (world.tmp / "model").mkdir()  # a local model: nothing to download
        return {"HF_HUB_OFFLINE": "1"}

    return setup


async def labels_not_json(world: World) -> dict[str, str]:
    world.write("labels.jsonl", b'{"index": 1, "label": "cats"}\n{"index": 2, "lab')
    return {"HF_HUB_OFFLINE": "1"}


async def port_in_use(world: World) -> dict[str, str]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    world.stack.callback(listener.close)
    world.write("port", str(listener.getsockname()[1]).encode())
    return {"HF_HUB_OFFLINE": "1"}


DB_ERROR = "database error: "
DOCTOR_DB = "PROBLEM  database: "
SERVE = "ember-bot serve: "
SAE_ARGS = "serve --model model --sae"
CASES = [
    # the database, where `console` (and every other command) opens it
    Case("console", "database folder is a file", parent_is_a_file, DB_ERROR,
         "is a file, not a folder", 2, untouched=("afile", "afile/sub")),
    Case("console", "database folder cannot be created", folder_cannot_be_made, DB_ERROR,
         "cannot create the folder", 2),
    Case("console", "database file is not a database", not_a_database, DB_ERROR,
         "is not an SQLite database", 2, untouched=database_files("notes.db")),
    Case("console", "database locked by another process", locked, DB_ERROR,
         "is locked by another process", 2, untouched=("locked.db",)),
    Case("console", "disk full", disk_full, DB_ERROR, "cannot write", 2,
         untouched=("full",), limit_file_size=True),
    # the backend
    Case("console", "backend unreachable", backend_unreachable, "",
         "does not answer", 0, stdin="hello\n"),
    Case("console", "backend rejects the key", backend_rejects_key, "http://",
         "rejected our API key", 2),
    Case("run", "backend unreachable", run_backend_unreachable, "",
         "does not answer", 0, stop_when="connected to Slack (Socket Mode)"),
    Case("run", "backend rejects the key", run_backend_rejects_key, "http://",
         "rejected our API key", 2),
    Case("doctor", "backend unreachable", backend_unreachable, "PROBLEM  backend: ",
         "The model backend is unavailable right now", 1, stream="stdout"),
    Case("doctor", "backend rejects the key", backend_rejects_key, "PROBLEM  backend: ",
         "rejected our API key", 1, stream="stdout"),
    # Discord
    Case("discord", "Discord unreachable", discord_unreachable, "",
         "Could not reach Discord at", 2),
    Case("discord", "Discord rejects the token", discord_rejects, "",
         "Discord rejected DISCORD_BOT_TOKEN", 2),
    Case("discord invite-url", "Discord unreachable", discord_unreachable,
         f"https://discord.com/oauth2/authorize?client_id={APPLICATION_ID}&",
         "oauth2/authorize?client_id=", 0, stream="stdout"),
    Case("discord sync", "Discord unreachable", discord_unreachable, "",
         "Could not reach Discord at", 2),
    Case("discord sync", "Discord rejects the token", discord_rejects, "",
         "Discord rejected DISCORD_BOT_TOKEN", 2),
    # Slack
    Case("slack", "Slack unreachable", slack_unreachable, "", "Could not reach Slack at", 2),
    Case("slack", "Slack rejects the token", slack_rejects, "",
         "Slack rejected SLACK_BOT_TOKEN: invalid_auth", 2),
    Case("slack --http", "Slack unreachable", slack_unreachable, "",
         "Could not reach Slack at", 2),
    Case("slack --http", "Slack rejects the token", slack_rejects, "",
         "Slack rejected SLACK_BOT_TOKEN: invalid_auth", 2),
    # doctor asks about the same faults before anything starts
    Case("doctor", "database folder is a file", parent_is_a_file, DOCTOR_DB,
         "is a file, not a folder", 1, stream="stdout", untouched=("afile", "afile/sub")),
    Case("doctor", "database file is not a database", not_a_database, DOCTOR_DB,
         "is not an SQLite database", 1, stream="stdout", untouched=database_files("notes.db")),
    Case("doctor", "database locked by another process", locked, DOCTOR_DB,
         "is locked by another process", 1, stream="stdout", untouched=("locked.db",)),
    Case("doctor", "Discord unreachable", discord_unreachable, "PROBLEM  discord: ",
         "Could not reach Discord at", 1, stream="stdout"),
    Case("doctor", "Discord rejects the token", discord_rejects, "PROBLEM  discord: ",
         "Discord rejected DISCORD_BOT_TOKEN", 1, stream="stdout"),
    Case("doctor", "Slack unreachable", slack_unreachable, "PROBLEM  slack: ",
         "Could not reach Slack at", 1, stream="stdout"),
    Case("doctor", "Slack rejects the token", slack_rejects, "PROBLEM  slack: ",
         "Slack rejected SLACK_BOT_TOKEN: invalid_auth", 1, stream="stdout"),
    # the model server
    Case(f"{SAE_ARGS} params.npz", "SAE truncated (.npz)", sae_file("params.npz", truncated_npz()),
         SERVE, "is damaged or incomplete (truncated .npz); download it again", 1,
         untouched=("params.npz",), needs_torch=True),
    Case(f"{SAE_ARGS} params.safetensors", "SAE truncated (.safetensors)",
         sae_file("params.safetensors", truncated_safetensors()), SERVE,
         "is damaged or incomplete (truncated .safetensors); download it again", 1,
         untouched=("params.safetensors",), needs_torch=True),
    Case(f"{SAE_ARGS} sae.pth", "SAE truncated (.pth)",
         sae_file("sae.pth", truncated_pth()), SERVE,
         "is damaged or incomplete (truncated .pth); download it again", 1,
         untouched=("sae.pth",), needs_torch=True),
    Case(f"{SAE_ARGS} params.npz", "SAE in the wrong format",
         sae_file("params.npz", b"<html>Not Found</html>\n"), SERVE,
         "is not a NumPy .npz archive (wrong format)", 1, needs_torch=True),
    Case(f"{SAE_ARGS} missing.npz", "SAE missing", sae_file("other.npz", b""), SERVE,
         "SAE not found", 1, needs_torch=True),
    Case("serve --labels labels.jsonl", "labels not JSON", labels_not_json, SERVE,
         "not valid JSON", 1, untouched=("labels.jsonl",), needs_torch=True),
    Case("serve --port {port}", "port in use", port_in_use, SERVE,
         "is already in use on 127.0.0.1; pick another with --port", 1, needs_torch=True),
]  # fmt: skip


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with AsyncExitStack() as stack:
        ember = await stack.enter_async_context(FakeEmber())
        slack = await stack.enter_async_context(FakeSlack())
        rejecting = await stack.enter_async_context(RejectingServer())
        yield World(tmp_path, ember, slack, rejecting, stack)


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


async def run_case(case: Case, world: World, extra_env: dict[str, str]) -> tuple[int, str, str]:
    port = (world.tmp / "port").read_text() if (world.tmp / "port").exists() else ""
    argv = case.command.format(port=port).split()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "adapters",
        *argv,
        cwd=world.tmp,
        env=hermetic_env() | extra_env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=limit_file_size if case.limit_file_size else None,
    )
    if case.stop_when is None:
        out, err = await asyncio.wait_for(process.communicate(case.stdin.encode()), CHILD_TIMEOUT)
        return process.returncode or 0, out.decode(), err.decode()
    assert process.stderr is not None
    seen: list[str] = []
    async with asyncio.timeout(CHILD_TIMEOUT):
        while case.stop_when not in "".join(seen):
            line = await process.stderr.readline()
            assert line, "".join(seen)
            seen.append(line.decode())
        process.send_signal(signal.SIGTERM)
        out, err = await process.communicate()
    return process.returncode or 0, out.decode(), "".join(seen) + err.decode()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_each_fault_ends_in_its_one_documented_line(case: Case, world: World):
    if case.needs_torch and not HAS_TORCH:
        pytest.skip("the model server needs the 'server' extra")
    if case.setup is folder_cannot_be_made and not HAS_PROC:
        pytest.skip("needs Linux's /proc, where no folder can be made")
    extra_env = await case.setup(world)
    watched = [world.tmp / name for name in case.untouched]
    before = snapshot(watched)

    code, out, err = await run_case(case, world, extra_env)

    output = out if case.stream == "stdout" else err
    lines = [line for line in output.splitlines() if case.phrase in line]
    assert len(lines) == 1, f"expected one line with {case.phrase!r}:\n{out}\n{err}"
    assert lines[0].startswith(case.prefix), lines[0]
    assert code == case.code, f"{out}\n{err}"
    for stream in (out, err):
        assert not any(line.startswith("Traceback") for line in stream.splitlines()), stream
    assert snapshot(watched) == before, "changed or created what it should not have"
    assert case.phrase in README, f"README's troubleshooting table lacks {case.phrase!r}"
    assert "fake-ember-key" not in out + err and world.slack.bot_token not in out + err


def test_the_matrix_covers_every_command():
    commands = {case.command.split()[0] for case in CASES}
    assert commands == {"console", "run", "doctor", "discord", "slack", "serve"}
