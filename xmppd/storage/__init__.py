"""Persistent storage: one async interface (Storage), SQLite and PostgreSQL backends.

Everything else imports from here: open_storage(), Storage, StorageError and
the record types.
"""

from __future__ import annotations

from .base import Storage, StorageError
from .models import (ARCHIVE_DEFAULTS, SCRAM_MECHANISMS, SUBSCRIPTIONS, AppServerRegistration, ArchivedMessage,
                     ArchiveFilter, ArchivePrefs, ArchiveRow, PushRegistration, RosterItem, ScramCredentials)
from .postgresql import PostgreSQLStorage
from .sqlite import SQLiteStorage

__all__ = [
    "ARCHIVE_DEFAULTS",
    "ArchiveFilter",
    "ArchivePrefs",
    "ArchiveRow",
    "ArchivedMessage",
    "SCRAM_MECHANISMS",
    "SUBSCRIPTIONS",
    "AppServerRegistration",
    "PushRegistration",
    "RosterItem",
    "ScramCredentials",
    "Storage",
    "StorageError",
    "open_storage",
]

BACKENDS = ("sqlite", "postgresql")


async def open_storage(
    backend: str,
    *,
    sqlite_path: str | None = None,
    postgresql_dsn: str | None = None,
    pool_size: int = 10,
) -> Storage:
    """Open the configured backend and bring its schema up to date.

    Raises StorageError with a message for the operator when the
    configuration is incomplete or the database cannot be reached.
    """
    if backend == "sqlite":
        if not sqlite_path:
            raise StorageError("the sqlite storage backend needs a database path")
        storage: Storage = SQLiteStorage(sqlite_path)
    elif backend == "postgresql":
        if not postgresql_dsn:
            raise StorageError("the postgresql storage backend needs a DSN (e.g. postgresql://user@host/dbname)")
        storage = PostgreSQLStorage(postgresql_dsn, pool_size)
    else:
        raise StorageError(f"unknown storage backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    await storage.open()
    return storage
