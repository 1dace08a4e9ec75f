"""Login throttling with a fake clock."""

import pytest

from xmppd.auth_throttle import AuthThrottle, address_key


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


def throttle(clock, **options):
    return AuthThrottle(clock=clock, **options)


def test_delay_doubles_after_free_failures_and_is_capped(clock):
    t = throttle(clock)
    delays = []
    for _ in range(10):
        delays.append(t.delay("192.0.2.1", "juliet"))
        t.record_failure("192.0.2.1", "juliet")
    assert delays == [0, 0, 0, 1, 2, 4, 8, 16, 30, 30]


def test_custom_parameters(clock):
    t = throttle(clock, free_failures=1, base_delay=0.5, max_delay=3.0)
    delays = []
    for _ in range(6):
        delays.append(t.delay("192.0.2.1", None))
        t.record_failure("192.0.2.1", None)
    assert delays == [0, 0.5, 1, 2, 3, 3]


def test_only_failures_within_the_window_count(clock):
    t = throttle(clock, window=600)
    for _ in range(2):
        t.record_failure("192.0.2.1", "juliet")
    clock.now += 500
    for _ in range(2):
        t.record_failure("192.0.2.1", "juliet")
    clock.now += 50
    assert t.delay("192.0.2.1", "juliet") == 2  # four failures in the last 600 s
    clock.now += 50  # the first two are now 600 s old
    assert t.delay("192.0.2.1", "juliet") == 0
    clock.now += 500
    assert t.delay("192.0.2.1", "juliet") == 0 and len(t) == 0


def test_window_still_counts_after_the_per_key_cap(clock):
    t = throttle(clock)
    for _ in range(50):  # far more than the timestamps kept per key
        t.record_failure("192.0.2.1", None)
    assert t.delay("192.0.2.1", None) == 30
    clock.now += 599
    assert t.delay("192.0.2.1", None) == 30
    clock.now += 1
    assert t.delay("192.0.2.1", None) == 0


def test_larger_of_address_and_username(clock):
    t = throttle(clock)
    for i in range(5):  # one username tried from many addresses
        t.record_failure(f"198.51.100.{i}", "juliet")
    assert t.delay("203.0.113.9", "juliet") == 4
    assert t.delay("203.0.113.9", "romeo") == 0
    assert t.delay("203.0.113.9", None) == 0
    for name in ("a", "b", "c", "d"):  # many usernames from one address
        t.record_failure("203.0.113.9", name)
    assert t.delay("203.0.113.9", "e") == 2
    assert t.delay("203.0.113.9", "juliet") == 4


def test_usernames_are_counted_whether_or_not_they_exist(clock):
    """The throttle never asks whether an account exists, so the caller records every failed name."""
    t = throttle(clock)
    for name in ("juliet", "nobody-by-this-name"):
        for i in range(3):
            t.record_failure(f"198.51.100.{i}", name)
    assert t.delay("192.0.2.1", "juliet") == t.delay("192.0.2.1", "nobody-by-this-name") == 1


def test_success_clears_that_username_and_that_address(clock):
    t = throttle(clock)
    for _ in range(3):
        t.record_failure("192.0.2.1", "juliet")
        t.record_failure("192.0.2.2", "romeo")
    t.record_success("192.0.2.1", "juliet")
    assert t.delay("192.0.2.1", "juliet") == 0
    assert t.delay("192.0.2.2", None) == 1
    assert t.delay("192.0.2.3", "romeo") == 1


def test_ipv6_is_grouped_by_64(clock):
    t = throttle(clock)
    for i in range(3):
        t.record_failure(f"2001:db8:1:2::{i + 1}", None)
    assert t.delay("2001:db8:1:2:ffff:ffff:ffff:ffff", None) == 1
    assert t.delay("2001:db8:1:3::1", None) == 0
    assert t.delay("192.0.2.1", None) == 0


def test_address_key():
    assert address_key("2001:db8:1:2:3:4:5:6") == address_key("2001:DB8:1:2::") == "2001:db8:1:2::/64"
    assert address_key("::ffff:192.0.2.1") == address_key("192.0.2.1") == "192.0.2.1"
    assert address_key("192.0.2.1") != address_key("192.0.2.2")
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("/run/xmppd.sock") == "/run/xmppd.sock"


def test_memory_is_bounded_and_oldest_evicted(clock):
    t = throttle(clock, max_entries=10)
    for i in range(100):
        for _ in range(3):
            t.record_failure(f"10.0.0.{i}", None)
        clock.now += 1
    assert len(t) == 10
    assert t.delay("10.0.0.0", None) == 0  # evicted
    assert t.delay("10.0.0.99", None) == 1  # most recent kept


def test_expired_entries_are_forgotten(clock):
    t = throttle(clock, window=60)
    t.record_failure("192.0.2.1", "juliet")
    clock.now += 30
    t.record_failure("192.0.2.2", None)
    assert len(t) == 3
    clock.now += 30
    assert len(t) == 1
    clock.now += 30
    assert len(t) == 0


@pytest.mark.parametrize("options", [
    {"free_failures": -1}, {"base_delay": 0}, {"base_delay": 5, "max_delay": 1}, {"max_delay": -1}, {"window": 0},
    {"max_entries": 0},
])
def test_invalid_options(options):
    with pytest.raises(ValueError):
        AuthThrottle(**options)


def test_the_ends_of_the_configured_ranges(clock):
    """[auth] throttle_free_failures may be 0 and throttle_max_delay 0 ("turns throttling off"): the
    server must start with them, not fail on a value the configuration accepted."""
    none_free = throttle(clock, free_failures=0, base_delay=0.5, max_delay=0.5)
    delays = []
    for _ in range(3):
        delays.append(none_free.delay("192.0.2.1", None))
        none_free.record_failure("192.0.2.1", None)
    assert delays == [0, 0.5, 0.5]
    off = throttle(clock, max_delay=0)
    for _ in range(10):
        off.record_failure("192.0.2.1", "juliet")
    assert off.delay("192.0.2.1", "juliet") == 0
