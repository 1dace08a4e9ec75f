"""A token bucket for bytes read from one client, without I/O.

Back-pressure and size limits bound memory; this bounds the CPU one client can
take by making it wait (its socket is simply not read for a while), the way
Prosody's mod_limits and ejabberd's shapers do. Waiting is invisible to a
well-behaved client, whose traffic stays far below the rate.
"""

from __future__ import annotations

import time
from typing import Callable


class TokenBucket:
    __slots__ = ("rate", "burst", "_tokens", "_stamp", "_clock")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate          # bytes per second, refilled continuously
        self.burst = burst        # bytes that may arrive at once after a quiet spell
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()

    def take(self, amount: int) -> float:
        """Spend `amount` bytes; return how many seconds the caller must wait before reading more
        (0 while the client stays within the rate)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
