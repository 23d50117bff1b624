"""A real PostgreSQL server for the tests, started once per test session in a temporary folder.

The server binaries come from the Debian `postgresql` package (.ci/run installs it): found on
PATH, under /usr/lib/postgresql/<version>/bin, or where EMBER_POSTGRES_BIN points. PostgreSQL
refuses to run as root, so as root the server runs as the `postgres` user the package creates.
EMBER_TEST_POSTGRES_URL instead names a running server whose user may create databases.

Without either, the PostgreSQL tests fail under CI (CI=true: a skip would hide a broken CI) and
are skipped with the reason elsewhere. Each test gets a fresh database (`postgres_url`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: install them (apt-get install "
    "postgresql; .ci/run does), set EMBER_POSTGRES_BIN to their folder, or set "
    "EMBER_TEST_POSTGRES_URL to a server whose user may create databases"
)
SERVER_OPTIONS = (
    # Test data is thrown away: no need to wait for the disk.
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c max_connections=300 -c listen_addresses=127.0.0.1"
)
_numbers = itertools.count()


def find_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl, or None."""
    if configured := os.environ.get("EMBER_POSTGRES_BIN"):
        return Path(configured)
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return installed[-1].parent if installed else None


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalServer:
    """initdb + pg_ctl start in a temporary folder; stopped and removed by `stop`."""

    def __init__(self, binaries: Path, options: str = SERVER_OPTIONS) -> None:
        self.binaries = binaries
        self.options = options
        self.user = "postgres" if os.geteuid() == 0 else None
        owner = pwd.getpwnam(self.user) if self.user else None  # KeyError: no such user
        self.folder = Path(tempfile.mkdtemp(prefix="ember-postgres-"))
        self.port = free_port()
        if owner is not None:
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        data = self.folder / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._run(
            "pg_ctl", "-D", str(data), "-l", str(self.folder / "log"), "-w", "-t", "60",
            "-o", f"{self.options} -p {self.port} -k {self.folder}", "start",
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        try:
            subprocess.run(
                [str(self.binaries / program), "--no-sync", *args]
                if program == "initdb"
                else [str(self.binaries / program), *args],
                check=True,
                capture_output=True,
                text=True,
                user=self.user,
                cwd=self.folder,
                timeout=120,
            )
        except subprocess.CalledProcessError as error:
            log = self.folder / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{program} failed: {error.stderr}{error.stdout}{tail}") from None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The admin URL of a PostgreSQL server for this test session."""
    if url := os.environ.get("EMBER_TEST_POSTGRES_URL"):
        yield url
        return
    binaries = find_binaries()
    if binaries is None:
        unavailable(INSTALL_HINT)
        return
    try:
        server = LocalServer(binaries)
    except KeyError:  # as root, with no `postgres` user to run the server as
        unavailable(f"{INSTALL_HINT} (as root, the server runs as the package's `postgres` user)")
        return
    try:
        server.start()
        yield server.url
    finally:
        server.stop()


async def new_database(admin_url: str) -> str:
    """A new, empty database on the server; its URL."""
    name = f"ember_test_{os.getpid()}_{next(_numbers)}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
async def postgres_url(postgres_server: str) -> AsyncIterator[str]:
    """A fresh database for one test."""
    yield await new_database(postgres_server)
