"""PostgreSQL backend: psycopg 3 in asyncio, connections from an AsyncConnectionPool.

Each call borrows one connection for its duration. Connections are in
autocommit mode, so a single-statement call costs one round trip (no BEGIN /
COMMIT); atomic scripts run inside an explicit transaction. psycopg prepares
a statement server-side after it has run a few times on a connection.

Error messages name the server as host/port/dbname/user taken from the DSN,
never the DSN itself, which may hold a password.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from .base import StorageError
from .migrations import migrate
from .sql import Result, Script, SQLStorage, is_atomic, operation, unknown_user

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10  # seconds, unless the DSN sets connect_timeout


@functools.cache
def _placeholders(sql: str) -> str:
    """The shared SQL's ``?`` placeholders in psycopg's spelling."""
    return sql.replace("?", "%s")


async def _drive(conn: psycopg.AsyncConnection, script) -> Any:
    cursor = conn.cursor()
    result = None
    while True:
        try:
            statement = script.send(result)
        except StopIteration as done:
            return done.value
        sql = _placeholders(statement.sql)
        if statement.result is Result.NOTHING:
            await cursor.executemany(sql, statement.params)
            result = None
        else:
            await cursor.execute(sql, statement.params)
            result = await cursor.fetchall() if statement.result is Result.ROWS else cursor.rowcount


class PostgreSQLStorage(SQLStorage):
    """Storage in a PostgreSQL database (the schema on the connection's search_path)."""

    def __init__(self, dsn: str, pool_size: int = 10):
        if pool_size < 1:
            raise StorageError(f"PostgreSQL pool size must be at least 1, not {pool_size}")
        super().__init__()
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            # The parser's message quotes pieces of the DSN, possibly the password.
            raise StorageError("the PostgreSQL DSN cannot be parsed (not shown: it may contain a password)") from None
        self._dsn = dsn
        self._password = params.get("password")
        self._where = " ".join(
            f"{key}={params[key]}" for key in ("host", "hostaddr", "port", "dbname", "user") if params.get(key)
        ) or "(libpq defaults)"
        self._connect_kwargs = {} if "connect_timeout" in params else {"connect_timeout": CONNECT_TIMEOUT}
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool | None = None

    def _error(self, what: str, exc: Exception) -> StorageError:
        reason = " ".join(str(exc).split())
        if self._password:
            reason = reason.replace(self._password, "***")
        return StorageError(f"PostgreSQL {self._where}: {what}: {reason}")

    async def open(self) -> None:
        # A first, direct connection: it reports why connecting fails (a pool would
        # only time out), and it carries the migration transaction.
        try:
            conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True, **self._connect_kwargs)
        except psycopg.Error as exc:
            raise self._error("cannot connect", exc) from exc
        try:
            async with conn.transaction():
                applied = await _drive(conn, migrate("postgresql"))
        except psycopg.Error as exc:
            raise self._error("schema migration failed", exc) from exc
        finally:
            await conn.close()
        if applied:
            log.info("PostgreSQL %s: applied schema migrations %s", self._where, applied)
        pool = AsyncConnectionPool(
            self._dsn,
            min_size=1,
            max_size=self._pool_size,
            kwargs={"autocommit": True, **self._connect_kwargs},
            open=False,
            name="xmppd",
        )
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        except psycopg.Error as exc:
            await pool.close()
            raise self._error("cannot open the connection pool", exc) from exc
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _execute(self, script: Script, *args: Any) -> Any:
        pool = self._pool
        if pool is None:
            raise StorageError(f"PostgreSQL {self._where}: {operation(script)} after close()")
        try:
            async with pool.connection() as conn:
                if is_atomic(script):
                    async with conn.transaction():
                        return await _drive(conn, script(*args))
                return await _drive(conn, script(*args))
        except psycopg.errors.ForeignKeyViolation as exc:
            raise unknown_user(script, args) from exc
        except psycopg.Error as exc:
            raise self._error(f"{operation(script)} failed", exc) from exc
