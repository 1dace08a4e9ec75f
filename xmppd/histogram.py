"""A latency histogram kept in plain Python, read by the metrics endpoint at scrape time.

The hot paths that time themselves (every storage call, every push) only add to a list; nothing is
exported until Prometheus asks, so prometheus-client's locks and objects stay off those paths.
"""

from __future__ import annotations

from bisect import bisect_left


class Histogram:
    """Counts of observations at or below each bound (not cumulative here), their sum and number."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)   # the last: above every bound
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> dict[str, int]:
        """Prometheus-style buckets: "le" bound (as text, "+Inf" last) -> observations at or below it."""
        out, running = {}, 0
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            running += count
            out["+Inf" if bound == float("inf") else repr(bound)] = running
        return out
