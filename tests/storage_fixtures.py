"""Storage for tests, on both backends.

``storage`` is a pytest fixture (import it into a test module, or into
conftest.py) giving an opened Storage, once per backend. The PostgreSQL pool
lives in the event loop it was opened in, so the fixture installs its own
loop as the thread's current one; drive the storage with ``run(coro)`` from
here, not asyncio.run() (which makes a new loop). Tests that run their own
loop (asyncio.run, or Twisted's asyncio reactor) call make_storage() in it.

Each PostgreSQL store gets a fresh schema, dropped afterwards; set
XMPPD_TEST_PG_DSN to test against another server.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from xmppd.storage import Storage, open_storage

PG_DSN = os.environ.get("XMPPD_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgresql"]

T = TypeVar("T")


async def backend_config(backend: str, tmp_path: Path) -> tuple[dict, Callable[[], Awaitable[None]]]:
    """open_storage() keyword arguments for a fresh, empty store, and an async function that removes it."""
    if backend == "sqlite":
        return {"sqlite_path": str(tmp_path / "xmppd.sqlite")}, _nothing
    if backend != "postgresql":
        raise ValueError(f"unknown backend {backend!r}")
    schema = f"xmppd_test_{secrets.token_hex(8)}"
    await _pg_execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))

    async def drop() -> None:
        await _pg_execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))

    return {"postgresql_dsn": make_conninfo(PG_DSN, options=f"-csearch_path={schema}"), "pool_size": 4}, drop


async def make_storage(backend: str, tmp_path: Path) -> tuple[Storage, Callable[[], Awaitable[None]]]:
    """Open a store with fresh, empty data; await the returned cleanup() when done."""
    config, remove = await backend_config(backend, tmp_path)
    try:
        storage = await open_storage(backend, **config)
    except BaseException:
        await remove()
        raise

    async def cleanup() -> None:
        try:
            await storage.close()
        finally:
            await remove()

    return storage, cleanup


async def _nothing() -> None:
    """SQLite's files go with tmp_path."""


async def _pg_execute(statement: sql.Composable) -> None:
    async with await psycopg.AsyncConnection.connect(PG_DSN, autocommit=True) as conn:
        await conn.execute(statement)


def run(coro: Awaitable[T]) -> T:
    """Run coro on this thread's current event loop: the one the storage fixture opened its store on."""
    return asyncio.get_event_loop().run_until_complete(coro)


@pytest.fixture(params=BACKENDS)
def storage(request, tmp_path):
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        store, cleanup = loop.run_until_complete(make_storage(request.param, tmp_path))
        try:
            yield store
        finally:
            loop.run_until_complete(cleanup())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
