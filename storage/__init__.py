"""Persistence (SQLite) for sessions, variants, history and the audit log."""
