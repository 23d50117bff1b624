"""A PostgreSQL that cannot be used is one line naming the fault and the fix, never the
password, and `ember-bot doctor`'s database finding says the same."""

from __future__ import annotations

import pytest

from bot.ops.doctor import database_finding
from bot.settings import Settings
from storage.database import open_database
from storage.opening import DatabaseProblem
from tests.support.postgres_server import free_port


async def test_nothing_listening_is_one_line_without_the_password():
    port = free_port()
    with pytest.raises(DatabaseProblem) as refused:
        await open_database(f"postgresql://ember:s3cret@127.0.0.1:{port}/ember")
    assert str(refused.value) == (
        f"database error: cannot connect to PostgreSQL at ember@127.0.0.1:{port}/ember "
        "(Connection refused); start the server, or fix the host and port in DATABASE_URL."
    )
    assert "s3cret" not in str(refused.value)


async def test_a_host_that_does_not_resolve_is_named_in_words():
    with pytest.raises(DatabaseProblem) as unknown:
        await open_database("postgresql://ember:s3cret@no-such-host.invalid/ember")
    message = str(unknown.value)
    assert message.startswith(
        "database error: cannot connect to PostgreSQL at ember@no-such-host.invalid:5432/ember ("
    )
    assert "Unknown error" not in message and "s3cret" not in message


async def test_a_missing_database_says_to_create_it(postgres_server: str):
    url = postgres_server.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(DatabaseProblem) as missing:
        await open_database(url)
    assert str(missing.value) == (
        "database error: PostgreSQL at postgres@127.0.0.1:"
        f'{url.split(":")[2].split("/")[0]}/no_such_database: database "no_such_database" '
        "does not exist; create it (createdb), or fix the database name in DATABASE_URL."
    )


async def test_doctor_checks_a_postgres_database(postgres_url: str, tmp_path):
    settings = Settings(_env_file=None, database_url=postgres_url)  # type: ignore[call-arg]
    finding = await database_finding(settings)
    assert finding.problem is None
    assert finding.detail.startswith("postgres@127.0.0.1:")
