"""Opening the database leaves nothing half-made: the folder is checked before anything is
created, every way SQLite can refuse becomes one line naming the fault and the fix
(DatabaseProblem), and what a failed open created (folders, the file, its -wal/-shm) is removed.
An existing file is never changed by a failed open: SQLite refuses before writing to it."""

from __future__ import annotations

import contextlib
from pathlib import Path

from bot.domain.errors import SetupError

SIDE_FILES = ("-wal", "-shm", "-journal")
NEW_PATH = (
    "set DATABASE_URL to a path in a folder this user may write (e.g. sqlite:///data/ember-bot.db)"
)
ANOTHER_DISK = "free some space, or point DATABASE_URL at another disk"
BUSY = ("SQLITE_BUSY", "SQLITE_LOCKED")


class DatabaseProblem(SetupError):
    """The database cannot be used. `problem` is the line without the "database error:" tag."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"database error: {problem}")
        self.problem = problem


class Footprint:
    """What opening the database at `path` creates, so that a failed open can take it back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._files = [path, *(path.with_name(path.name + suffix) for suffix in SIDE_FILES)]
        self._existing = {file for file in self._files if file.exists()}
        self._folders: list[Path] = []  # the folders this open created, deepest first

    def make_folder(self) -> None:
        """Create the database's folder and its missing parents, or raise DatabaseProblem."""
        folder = self.path.parent
        missing = [folder, *folder.parents]
        existing = next((p for p in missing if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise DatabaseProblem(
                f"cannot create {self.path}: {existing} is a file, not a folder; {NEW_PATH}."
            )
        missing = missing[: missing.index(existing)] if existing is not None else missing
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            self._folders = [p for p in missing if p.is_dir()]
            self.remove()
            reason = error.strerror or str(error)
            raise DatabaseProblem(
                f"cannot create the folder {folder} for {self.path} ({reason}); {NEW_PATH}."
            ) from None
        self._folders = missing

    def undo(self, error: BaseException) -> None:
        """Remove what this open created, unless `error` says another process holds the
        database: then the file may be that process's, created after we looked."""
        if not _errorname(error).startswith(BUSY):
            self.remove()

    def remove(self) -> None:
        """Remove the files and folders this open created; leave everything else alone."""
        for file in self._files:
            if file not in self._existing:
                with contextlib.suppress(OSError):
                    file.unlink(missing_ok=True)
        for folder in self._folders:
            with contextlib.suppress(OSError):
                folder.rmdir()


def describe(path: Path, error: BaseException, busy_timeout: float) -> str:
    """The fault and its fix, for an error SQLite (or the OS) raised while opening `path`."""
    name = _errorname(error)
    reason = str(error)
    if name == "SQLITE_NOTADB":
        return (
            f"{path} is not an SQLite database ({reason}); it was left as it was: point "
            "DATABASE_URL at the bot's database, or at a new file."
        )
    if name.startswith(BUSY):
        return (
            f"{path} is locked by another process (still busy after {busy_timeout:g} s); stop "
            "the other program using it, or give this bot its own DATABASE_URL."
        )
    if name == "SQLITE_FULL":
        return f"cannot write {path}: the disk is full; {ANOTHER_DISK}."
    if name.startswith("SQLITE_IOERR"):
        return f"cannot write {path}: disk I/O error (is the disk full?); {ANOTHER_DISK}."
    if name.startswith(("SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH")):
        return (
            f"cannot write {path} ({reason}); give this user write access to the file and its "
            f"folder, or {NEW_PATH}."
        )
    if name.startswith("SQLITE_CORRUPT"):
        return (
            f"{path} is damaged ({reason}); restore it from a backup (README: Backups), or "
            "point DATABASE_URL at a new file."
        )
    if isinstance(error, OSError):
        reason = error.strerror or reason
    return f"cannot open {path} ({reason}); {NEW_PATH}."


def _errorname(error: BaseException) -> str:
    return str(getattr(error, "sqlite_errorname", "") or "")
