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


def run_soon(pending: Awaitable | None, what: str) -> None:
    """Let an awaitable finish in the background; a failure is logged with `what` it was doing."""
    if pending is None:
        return
    task = asyncio.ensure_future(pending)

    def done(finished: asyncio.Future) -> None:
        if not finished.cancelled() and finished.exception() is not None:
            log.error("%s failed", what, exc_info=finished.exception())

    task.add_done_callback(done)
