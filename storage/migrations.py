"""Versioned schema migrations, applied in order; PRAGMA user_version records the last one."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: sessions, variants, messages, audit log
    """
    CREATE TABLE sessions (
        key TEXT PRIMARY KEY,
        active_variant TEXT NOT NULL DEFAULT 'default',
        created_at REAL NOT NULL
    );
    CREATE TABLE variants (
        session_key TEXT NOT NULL REFERENCES sessions(key) ON DELETE CASCADE,
        name TEXT NOT NULL,
        base_model TEXT NOT NULL,
        edits_json TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (session_key, name)
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_key TEXT NOT NULL REFERENCES sessions(key) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        author TEXT NOT NULL DEFAULT '',
        content TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX messages_by_session ON messages(session_key, id);
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_key TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        detail_json TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX audit_by_session ON audit_log(session_key, id);
    """,
    # 2: guards on variants (stop generation when a feature fires), as JSON like the edits
    """
    ALTER TABLE variants ADD COLUMN guards_json TEXT NOT NULL DEFAULT '[]';
    """,
]
