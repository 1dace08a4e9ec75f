"""The per-connection token bucket, with a fake clock."""

from __future__ import annotations

import pytest

from xmppd.rate_limit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_within_the_burst_nothing_waits():
    clock = Clock()
    bucket = TokenBucket(rate=1000, burst=5000, clock=clock)
    assert bucket.take(5000) == 0.0


def test_over_the_burst_the_wait_pays_the_deficit_at_the_rate():
    clock = Clock()
    bucket = TokenBucket(rate=1000, burst=5000, clock=clock)
    assert bucket.take(7000) == pytest.approx(2.0)
    clock.now += 2.0                       # the caller waited as told
    assert bucket.take(0) == 0.0
    assert bucket.take(500) == pytest.approx(0.5)


def test_a_quiet_spell_refills_only_up_to_the_burst():
    clock = Clock()
    bucket = TokenBucket(rate=1000, burst=5000, clock=clock)
    bucket.take(5000)
    clock.now += 3600
    assert bucket.take(5000) == 0.0
    assert bucket.take(1000) == pytest.approx(1.0)


def test_steady_traffic_at_the_rate_never_waits():
    clock = Clock()
    bucket = TokenBucket(rate=1000, burst=1000, clock=clock)
    for _ in range(100):
        clock.now += 0.1
        assert bucket.take(100) == 0.0
