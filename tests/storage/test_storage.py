"""SQLite storage: migrations, variants, history, audit log, persistence across reopen."""

import asyncio
import contextlib
import sqlite3

import pytest

from bot.domain.types import FeatureEdit, FeatureRef, SessionKey, VariantState
from storage.migrations import MIGRATIONS
from storage.store import DEFAULT_VARIANT, Store

CHANNEL_A = SessionKey("console", "local", "a")
SESSION = SessionKey("console", "local", "s")
MISSING = SessionKey("console", "local", "missing")

PIRATE = FeatureRef(7, "pirate speech", "0" * 32)


async def test_new_session_gets_default_variant_and_schema_version(tmp_path):
    store = await Store.open(tmp_path / "db" / "bot.db")
    assert await store.ensure_session(CHANNEL_A, "m") == DEFAULT_VARIANT
    assert [v.name for v in await store.list_variants(CHANNEL_A)] == ["default"]
    await store.close()
    with sqlite3.connect(tmp_path / "db" / "bot.db") as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_variant_edits_survive_reopen_and_are_audited(tmp_path):
    path = tmp_path / "bot.db"
    store = await Store.open(path)
    await store.ensure_session(SESSION, "m")
    variant = VariantState("default", "m", {7: FeatureEdit(PIRATE, 0.5)})
    await store.save_variant(SESSION, variant, actor="alice", action="steer", detail={"n": 1})
    await store.close()

    store = await Store.open(path)
    loaded = await store.get_variant(SESSION, "default")
    assert loaded is not None and loaded.edits == {7: FeatureEdit(PIRATE, 0.5)}
    [entry] = await store.audit_entries(SESSION)
    assert (entry.actor, entry.action, entry.detail) == (
        "alice",
        "steer",
        {"variant": "default", "n": 1},
    )
    assert await store.integrity_ok()
    await store.close()


async def test_history_is_newest_window_oldest_first_and_clearable(tmp_path):
    store = await Store.open(tmp_path / "bot.db")
    await store.ensure_session(SESSION, "m")
    for i in range(5):
        await store.append_message(SESSION, "user", f"m{i}", "bob")
    assert [m.content for m in await store.recent_messages(SESSION, 3)] == ["m2", "m3", "m4"]
    assert await store.clear_messages(SESSION, actor="bob") == 5
    assert await store.recent_messages(SESSION, 3) == []
    await store.close()


async def test_failed_write_rolls_back_audit_entry_too(tmp_path):
    store = await Store.open(tmp_path / "bot.db")
    variant = VariantState("default", "m", {7: FeatureEdit(PIRATE, 0.5)})
    with pytest.raises(sqlite3.IntegrityError):  # no such session: foreign key fails
        await store.save_variant(MISSING, variant, actor="a", action="steer", detail={})
    assert await store.audit_entries(MISSING) == []
    await store.ensure_session(MISSING, "m")  # the connection is still usable afterwards
    assert await store.integrity_ok()
    await store.close()


async def test_cancelled_write_leaves_the_connection_usable(tmp_path):
    store = await Store.open(tmp_path / "bot.db")
    await store.ensure_session(SESSION, "m")
    variant = VariantState("default", "m", {7: FeatureEdit(PIRATE, 0.5)})
    for _ in range(20):  # cancel at different points of BEGIN / INSERT / COMMIT
        task = asyncio.create_task(
            store.save_variant(SESSION, variant, actor="a", action="steer", detail={})
        )
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await store.save_variant(SESSION, variant, actor="a", action="steer", detail={})
    assert (await store.get_variant(SESSION, "default")).edits == variant.edits
    assert await store.integrity_ok()
    await store.close()
