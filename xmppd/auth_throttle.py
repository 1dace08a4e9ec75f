"""Slowing down repeated login failures, per client address and per username.

The caller waits delay() seconds before answering an attempt, so guessing
passwords gets slow while a user who mistypes once does not notice. Failures
are counted for any username, existing or not, so the delays reveal nothing
about which accounts exist. IPv6 clients are counted per /64, because one
attacker usually holds a whole /64. Memory stays bounded: only failures
within the window are kept, at most enough per key to reach max_delay, and
at most max_entries keys, the least recently failing evicted first.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict, deque
from typing import Callable


def address_key(address: str) -> str:
    """The group an address is counted in: an IPv4 address, an IPv6 /64, or the string itself."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class AuthThrottle:
    """Failure counts in a sliding window, keyed by address group and by username."""

    def __init__(self, *, free_failures: int = 3, base_delay: float = 1.0, max_delay: float = 30.0,
                 window: float = 600.0, clock: Callable[[], float] = time.monotonic, max_entries: int = 100000):
        if free_failures < 0:
            raise ValueError("free_failures must not be negative")
        if base_delay <= 0 or max_delay < 0 or (max_delay and base_delay > max_delay):
            raise ValueError("need 0 < base_delay <= max_delay, or max_delay 0 (no throttling)")
        if window <= 0:
            raise ValueError("window must be positive")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._free_failures = free_failures
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._window = window
        self._clock = clock
        self._max_entries = max_entries
        # Beyond this many failures the delay is max_delay anyway, so older timestamps need not be kept.
        self._kept_per_key = max(1, free_failures + math.ceil(math.log2(max(max_delay, base_delay) / base_delay)))
        # Key -> failure times, oldest first; ordered by last failure, so expired keys sit at the front.
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def __len__(self) -> int:
        """Keys (address groups and usernames) currently tracked."""
        self._forget_expired(self._clock())
        return len(self._failures)

    def delay(self, address: str, username: str | None) -> float:
        """Seconds the caller must wait before answering the next attempt from this address / for this
        username: 0 until `free_failures` failures within `window`, then base_delay doubling per further
        failure, capped at max_delay; the larger of the per-address and per-username delays. Identical for
        existing and non-existing usernames."""
        if not self._max_delay:
            return 0.0   # throttling is off
        now = self._clock()
        self._forget_expired(now)
        return max(self._delay_for(key, now) for key in self._keys(address, username))

    def record_failure(self, address: str, username: str | None) -> None:
        """Count a failed attempt against the address group and, if known, the username."""
        now = self._clock()
        self._forget_expired(now)
        for key in self._keys(address, username):
            times = self._failures.pop(key, None)
            if times is None:
                times = deque(maxlen=self._kept_per_key)
            times.append(now)
            self._failures[key] = times
        while len(self._failures) > self._max_entries:
            self._failures.popitem(last=False)

    def record_success(self, address: str, username: str) -> None:
        """A correct login clears that username and that address group."""
        for key in self._keys(address, username):
            self._failures.pop(key, None)

    @staticmethod
    def _keys(address: str, username: str | None) -> list[tuple[str, str]]:
        keys = [("address", address_key(address))]
        if username is not None:
            keys.append(("username", username))
        return keys

    def _delay_for(self, key: tuple[str, str], now: float) -> float:
        times = self._failures.get(key)
        if not times:
            return 0.0
        while times and times[0] <= now - self._window:
            times.popleft()
        excess = len(times) - self._free_failures
        if excess < 0:
            return 0.0
        return min(self._max_delay, self._base_delay * 2**excess)

    def _forget_expired(self, now: float) -> None:
        while self._failures:
            key, times = next(iter(self._failures.items()))
            if times[-1] > now - self._window:
                break
            del self._failures[key]
