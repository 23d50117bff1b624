"""`ember-bot db copy`: a 10k-session SQLite installation moved to PostgreSQL and verified."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

from bot.domain.types import FeatureEdit, FeatureRef, SessionKey, VariantState
from storage.database import open_database
from storage.store import Store, edits_to_json

SESSIONS = 10_000
PIRATE = FeatureEdit(FeatureRef(7, "pirate speech", "0" * 32), 0.5)


def key(n: int) -> str:
    return str(SessionKey("slack", "T1", f"C{n}"))


async def make_installation(path: Path) -> None:
    """10k sessions with a variant each, 2 messages and an audit entry each, and one session
    built through the store itself (a second variant, made active)."""
    store = await Store.open(path)
    session = SessionKey("slack", "T1", "C0")
    await store.ensure_session(session, "m")
    calm = VariantState("calm", "m", {7: PIRATE})
    await store.save_variant(session, calm, actor="alice", action="steer", detail={"n": 1})
    await store.set_active_variant(session, "calm", actor="alice")
    await store.close()
    edits = edits_to_json({7: PIRATE})
    with sqlite3.connect(path) as raw:
        raw.executemany(
            "INSERT INTO sessions (key, created_at) VALUES (?, 1.0)",
            [(key(n),) for n in range(1, SESSIONS)],
        )
        raw.executemany(
            "INSERT INTO variants VALUES (?, 'default', 'm', ?, 2.0, '[]')",
            [(key(n), edits) for n in range(1, SESSIONS)],
        )
        raw.executemany(
            "INSERT INTO messages (session_key, role, author, content, created_at) "
            "VALUES (?, ?, 'bob', ?, 3.0)",
            [
                (key(n), role, f"{role} {n}")
                for n in range(SESSIONS)
                for role in ("user", "assistant")
            ],
        )
        raw.executemany(
            "INSERT INTO audit_log (session_key, actor, action, detail_json, created_at) "
            "VALUES (?, 'bob', 'steer', '{\"n\": 2}', 4.0)",
            [(key(n),) for n in range(1, SESSIONS)],
        )


def db_copy(source: str, target: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "adapters", "db", "copy", "--from", source, "--to", target]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


async def test_db_copy_moves_ten_thousand_sessions_and_verifies_them(tmp_path, postgres_url):
    path = tmp_path / "bot.db"
    await make_installation(path)

    done = await asyncio.to_thread(db_copy, f"sqlite:///{path}", postgres_url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1:5] == [
        f"sessions   {SESSIONS:>10} {SESSIONS:>10}",
        f"variants   {SESSIONS + 1:>10} {SESSIONS + 1:>10}",
        f"messages   {2 * SESSIONS:>10} {2 * SESSIONS:>10}",
        f"audit_log  {SESSIONS + 1:>10} {SESSIONS + 1:>10}",
    ]
    assert lines[-1].startswith(f"copied and verified: {path} -> postgres@127.0.0.1:")

    database = await open_database(postgres_url)
    store = database.store
    first = SessionKey("slack", "T1", "C0")
    assert await store.ensure_session(first, "m") == "calm"
    assert (await store.get_variant(first, "calm")).edits == {7: PIRATE}
    [entry] = await store.audit_entries(SessionKey("slack", "T1", "C9999"))
    assert (entry.actor, entry.action, entry.detail) == ("bob", "steer", {"n": 2})
    later = SessionKey("slack", "T1", "C42")
    assert [m.content for m in await store.recent_messages(later, 5)] == [
        "user 42",
        "assistant 42",
    ]
    await store.append_message(later, "user", "after the copy")  # ids continue past the copy
    assert (await store.recent_messages(later, 1))[0].content == "after the copy"
    await database.close()

    again = await asyncio.to_thread(db_copy, f"sqlite:///{path}", postgres_url)
    assert again.returncode == 2
    assert again.stderr.strip().endswith(
        f"already holds {SESSIONS} sessions; copy into an empty database."
    )


async def test_db_copy_refuses_what_it_cannot_copy_in_one_line(tmp_path, postgres_url):
    missing = await asyncio.to_thread(db_copy, f"sqlite:///{tmp_path / 'none.db'}", postgres_url)
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        f"database error: {tmp_path / 'none.db'} does not exist; "
        "--from names the bot's SQLite file."
    )
    backwards = await asyncio.to_thread(db_copy, postgres_url, f"sqlite:///{tmp_path / 'x.db'}")
    assert backwards.returncode == 2 and "--from sqlite:///path" in backwards.stderr
    assert "Traceback" not in missing.stderr + backwards.stderr
