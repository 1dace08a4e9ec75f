"""Glue for code that is synchronous on the fast path and async only when it must wait.

Routing returns None when it is done and an awaitable when storage had to be
asked; these two helpers let callers treat both the same way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable

log = logging.getLogger("xmppd")


async def settle(result: Any) -> None:
    """Await a routing result if it is an awaitable."""
    if result is not None:
        await result


# Tasks running in the background. Holding them here keeps them from being garbage-collected mid-run
# (asyncio keeps only weak references) and lets shutdown wait for them.
_background: set[asyncio.Future] = set()


def run_soon(pending: Awaitable | None, what: str) -> asyncio.Future | None:
    """Let an awaitable finish in the background; a failure is logged with `what` it was doing."""
    if pending is None:
        return None
    task = asyncio.ensure_future(pending)
    _background.add(task)

    def done(finished: asyncio.Future) -> None:
        _background.discard(finished)
        if not finished.cancelled() and finished.exception() is not None:
            log.error("%s failed", what, exc_info=finished.exception())

    task.add_done_callback(done)
    return task


async def drain(timeout: float) -> int:
    """Wait up to `timeout` seconds for background work (including work it starts); cancel what is left.
    Returns how many tasks had to be cancelled."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while _background and loop.time() < deadline:
        await asyncio.wait(set(_background), timeout=deadline - loop.time())
    left = list(_background)
    for task in left:
        task.cancel()
    return len(left)


def reactor_clock(clock: Any = None) -> Any:
    """The clock a module keeps its timers on: seconds() and callLater(). Tests pass Twisted's
    task.Clock; otherwise the reactor, imported late because main.py installs it first."""
    if clock is not None:
        return clock
    from twisted.internet import reactor

    return reactor
