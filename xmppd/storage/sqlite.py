"""SQLite backend: one connection, used only by one dedicated worker thread.

Python's sqlite3 blocks, so every call is handed to a single-thread executor
and the event loop only awaits it. One thread means calls run one at a time in
the order they were made, with no locking of our own; other processes (the
CLI) are kept out by SQLite's file locks, waited for up to BUSY_TIMEOUT.

Durability: WAL journal with ``synchronous = FULL``. A transaction is
committed once its WAL frames are written *and fsynced*, before the call
returns. So anything a call acknowledged survives the process being
SIGKILLed (the WAL is in the file system and is replayed on the next open)
and also an OS crash or power cut, given a disk that honours fsync; that
matches PostgreSQL's default ``synchronous_commit = on``. (``NORMAL`` would
still survive SIGKILL but could lose the last commits on power loss.)
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .base import StorageError
from .migrations import migrate
from .sql import Result, Script, SQLStorage, is_atomic, operation, unknown_user

log = logging.getLogger(__name__)

BUSY_TIMEOUT = 5.0  # seconds to wait for another process's lock before failing


class SQLiteStorage(SQLStorage):
    """Storage in one SQLite file (or ":memory:")."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xmppd-sqlite")
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._connect)
            applied = await self._run(migrate, "sqlite")
        except BaseException:
            await self.close()
            raise
        if applied:
            log.info("SQLite database %s: applied schema migrations %s", self._path, applied)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # Queued calls run first: the executor is FIFO.
        await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        executor.shutdown(wait=True)

    async def _execute(self, script: Script, *args: Any) -> Any:
        if self._executor is None:
            raise StorageError(f"SQLite database {self._path}: {operation(script)} after close()")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run_in_thread, script, args)

    # -- in the worker thread ------------------------------------------------

    def _connect(self) -> None:
        try:
            conn = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open SQLite database {self._path}: {exc}") from exc
        try:
            # isolation_level=None: statements autocommit unless we BEGIN ourselves.
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode not in ("wal", "memory"):
                raise StorageError(
                    f"SQLite database {self._path}: cannot use WAL mode (got {mode!r});"
                    " the file system may not support the shared memory WAL needs"
                )
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            conn.close()
            raise StorageError(f"cannot open SQLite database {self._path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run_in_thread(self, script: Script, args: tuple) -> Any:
        conn = self._conn
        assert conn is not None
        try:
            if is_atomic(script):
                # IMMEDIATE takes the write lock now, so a busy database is waited for
                # (busy timeout) instead of failing when a read lock would be upgraded.
                conn.execute("BEGIN IMMEDIATE")
            try:
                result = self._drive(conn, script(*args))
                if conn.in_transaction:
                    conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" in str(exc):
                raise unknown_user(script, args) from exc
            raise StorageError(f"SQLite database {self._path}: {operation(script)} failed: {exc}") from exc
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite database {self._path}: {operation(script)} failed: {exc}") from exc

    @staticmethod
    def _drive(conn: sqlite3.Connection, script) -> Any:
        result = None
        while True:
            try:
                statement = script.send(result)
            except StopIteration as done:
                return done.value
            if statement.result is Result.NOTHING:
                conn.executemany(statement.sql, statement.params)
                result = None
            else:
                cursor = conn.execute(statement.sql, statement.params)
                result = cursor.fetchall() if statement.result is Result.ROWS else cursor.rowcount
