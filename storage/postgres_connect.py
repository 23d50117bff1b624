"""Connecting to PostgreSQL: the pool, the schema migrations, and one line for each way the
server can refuse (DatabaseProblem), naming where and the fix; the password is never shown."""

from __future__ import annotations

import asyncio
import os
from urllib.parse import unquote, urlsplit

import asyncpg

from storage.opening import DatabaseProblem
from storage.postgres_schema import HISTORIES, MIGRATION_LOCK, VERSIONS_TABLE

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(url: str) -> bool:
    return url.startswith(POSTGRES_SCHEMES)


def where(url: str) -> str:
    """`user@host:port/database` for messages and logs: the URL without its password."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or 5432
    user = unquote(parts.username or "")
    database = parts.path.lstrip("/") or user or "postgres"
    return f"{user + '@' if user else ''}{host}:{port}/{database}"


async def create_pool(
    url: str, *, pool_size: int, connect_timeout: float, min_size: int = 1, light_reset: bool = True
) -> asyncpg.Pool:
    """`light_reset`: a connection back in the pool only has an open transaction rolled back,
    not asyncpg's full reset (a round trip after every query: RESET ALL, unlock advisory
    locks, ...). For connections that never change session state: the store's."""
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min(min_size, pool_size),
            max_size=pool_size,
            timeout=connect_timeout,
            command_timeout=None,
            reset=_rollback_if_open if light_reset else None,
        )
    except Exception as error:
        raise DatabaseProblem(describe(url, error, connect_timeout)) from None
    assert pool is not None
    return pool


async def _rollback_if_open(connection: asyncpg.Connection) -> None:
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


async def migrate(pool: asyncpg.Pool, url: str) -> None:
    """Apply what is missing of each history, all in one transaction, while holding a lock that
    makes processes starting together wait for the first one's migration."""
    try:
        async with pool.acquire() as db, db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await db.execute(VERSIONS_TABLE)
            for name, history in HISTORIES.items():
                version = await db.fetchval(
                    "SELECT version FROM schema_versions WHERE name = $1", name
                )
                version = version or 0
                if version > len(history):
                    raise DatabaseProblem(
                        f"{where(url)} has {name} schema version {version}, newer than this "
                        f"bot's {len(history)}; upgrade the bot, or point DATABASE_URL at "
                        "another database."
                    )
                for script in history[version:]:
                    await db.execute(script)
                await db.execute(
                    "INSERT INTO schema_versions VALUES ($1, $2) "
                    "ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version",
                    name,
                    len(history),
                )
    except (asyncpg.PostgresError, OSError) as error:
        raise DatabaseProblem(describe(url, error, 0)) from None


def describe(url: str, error: BaseException, timeout: float) -> str:
    """The fault and its fix, for an error raised while connecting to or preparing `url`."""
    at = where(url)
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, asyncio.TimeoutError | TimeoutError):
        return (
            f"PostgreSQL at {at} did not answer within {timeout:g} s; check that the server "
            "runs and the host and port in DATABASE_URL."
        )
    if isinstance(error, OSError):
        # getaddrinfo's errors have negative errnos that os.strerror does not know.
        number = error.errno or 0
        reason = os.strerror(number) if number > 0 else (error.strerror or reason)
        return (
            f"cannot connect to PostgreSQL at {at} ({reason}); start the server, or fix the "
            "host and port in DATABASE_URL."
        )
    if isinstance(
        error,
        asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError,
    ):
        return (
            f"PostgreSQL at {at} refused the login ({reason}); fix the user and password in "
            "DATABASE_URL."
        )
    if isinstance(error, asyncpg.InvalidCatalogNameError):
        return (
            f"PostgreSQL at {at}: {reason}; create it (createdb), or fix the database name in "
            "DATABASE_URL."
        )
    if isinstance(error, asyncpg.InsufficientPrivilegeError):
        return (
            f"PostgreSQL at {at}: {reason}; grant this user CREATE on the database's schema, "
            "or use the database's owner in DATABASE_URL."
        )
    if isinstance(error, asyncpg.TooManyConnectionsError):
        return (
            f"PostgreSQL at {at} has no free connections ({reason}); lower DATABASE_POOL_SIZE "
            "or the number of bot processes, or raise the server's max_connections."
        )
    return f"cannot use PostgreSQL at {at} ({reason}); check DATABASE_URL."
