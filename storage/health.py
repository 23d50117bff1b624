"""A database health probe on its own short-lived connection, so it never disturbs the bot's."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path


def database_problem(path: Path, timeout: float) -> str | None:
    """None if the database takes a write right now (rolled back); else what is wrong."""
    if str(path) == ":memory:":
        return None
    try:
        uri = f"{path.resolve().as_uri()}?mode=rw"  # never create a missing database
        with closing(sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("CREATE TABLE health_probe (x)")
            db.execute("ROLLBACK")
    except sqlite3.Error as error:
        return f"database not writable: {error}"
    return None
