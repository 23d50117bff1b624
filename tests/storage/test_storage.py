"""Storage, on SQLite and on PostgreSQL (tests/storage/conftest.py): migrations, variants,
history, audit log, persistence across reopen."""

import asyncio
import contextlib
import sqlite3

import pytest

from bot.domain.types import FeatureEdit, FeatureRef, SessionKey, VariantState
from storage.database import sqlite_path
from storage.migrations import MIGRATIONS
from storage.store import DEFAULT_VARIANT

CHANNEL_A = SessionKey("console", "local", "a")
SESSION = SessionKey("console", "local", "s")
MISSING = SessionKey("console", "local", "missing")

PIRATE = FeatureRef(7, "pirate speech", "0" * 32)


async def test_new_session_gets_default_variant_and_schema_version(backend):
    store = await backend.open()
    assert await store.ensure_session(CHANNEL_A, "m") == DEFAULT_VARIANT
    assert await store.ensure_session(CHANNEL_A, "m") == DEFAULT_VARIANT  # already there
    assert [v.name for v in await store.list_variants(CHANNEL_A)] == ["default"]
    await store.close()
    assert await backend.schema_version() == len(MIGRATIONS)
    if backend.name == "sqlite":
        with sqlite3.connect(sqlite_path(backend.url)) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_variants_are_listed_used_and_deleted_with_audit(backend):
    store = await backend.open()
    await store.ensure_session(SESSION, "m")
    calm = VariantState("calm", "m", {7: FeatureEdit(PIRATE, -0.25)})
    await store.save_variant(SESSION, calm, actor="a", action="variant.create", detail={})
    await store.set_active_variant(SESSION, "calm", actor="a")
    assert await store.ensure_session(SESSION, "m") == "calm"
    assert [v.name for v in await store.list_variants(SESSION)] == ["calm", "default"]
    await store.delete_variant(SESSION, "calm", actor="a")
    assert await store.get_variant(SESSION, "calm") is None
    actions = [entry.action for entry in await store.audit_entries(SESSION)]
    assert actions == ["variant.delete", "variant.use", "variant.create"]
    assert await store.count_audit_entries(SESSION) == 3
    assert [e.action for e in await store.audit_entries(SESSION, limit=1)] == ["variant.delete"]
    await store.close()


async def test_variant_edits_survive_reopen_and_are_audited(backend):
    store = await backend.open()
    await store.ensure_session(SESSION, "m")
    variant = VariantState("default", "m", {7: FeatureEdit(PIRATE, 0.5)})
    await store.save_variant(SESSION, variant, actor="alice", action="steer", detail={"n": 1})
    await store.close()

    store = await backend.open()
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


async def test_history_is_newest_window_oldest_first_and_clearable(backend):
    store = await backend.open()
    await store.ensure_session(SESSION, "m")
    for i in range(5):
        await store.append_message(SESSION, "user", f"m{i}", "bob")
    assert [m.content for m in await store.recent_messages(SESSION, 3)] == ["m2", "m3", "m4"]
    assert (await store.recent_messages(SESSION, 1))[0].author == "bob"
    assert await store.clear_messages(SESSION, actor="bob") == 5
    [entry] = await store.audit_entries(SESSION)
    assert (entry.action, entry.detail) == ("history.clear", {"messages": 5})
    assert await store.recent_messages(SESSION, 3) == []
    await store.close()


async def test_failed_write_rolls_back_audit_entry_too(backend):
    store = await backend.open()
    variant = VariantState("default", "m", {7: FeatureEdit(PIRATE, 0.5)})
    with pytest.raises(backend.integrity_error):  # no such session: foreign key fails
        await store.save_variant(MISSING, variant, actor="a", action="steer", detail={})
    assert await store.audit_entries(MISSING) == []
    await store.ensure_session(MISSING, "m")  # the connection is still usable afterwards
    assert await store.integrity_ok()
    await store.close()


async def test_cancelled_write_leaves_the_connection_usable(backend):
    store = await backend.open()
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


async def test_active_variant_creates_a_new_session_and_follows_the_active_name(backend):
    store = await backend.open()
    created = await store.active_variant(SESSION, "m")
    assert created is not None and (created.name, created.base_model) == ("default", "m")
    calm = VariantState("calm", "m", {7: FeatureEdit(PIRATE, 0.5)})
    await store.save_variant(SESSION, calm, actor="a", action="steer", detail={})
    await store.set_active_variant(SESSION, "calm", actor="a")
    assert await store.active_variant(SESSION, "m") == calm
    await store.delete_variant(SESSION, "calm", actor="a")
    assert await store.active_variant(SESSION, "m") is None  # deleted underneath
    await store.close()
