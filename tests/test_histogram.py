"""xmppd/histogram.py: which bucket an observation lands in, and the cumulative view Prometheus wants."""

from xmppd.histogram import Histogram


def test_observations_land_at_or_below_their_bound():
    histogram = Histogram((0.001, 0.01, 0.1))
    for value in (0.0005, 0.001, 0.002, 0.1, 3.0):
        histogram.observe(value)
    assert histogram.counts == [2, 1, 1, 1]          # a value equal to a bound counts in that bucket
    assert histogram.cumulative() == {"0.001": 2, "0.01": 3, "0.1": 4, "+Inf": 5}
    assert histogram.count == 5 and abs(histogram.total - 3.1035) < 1e-9
