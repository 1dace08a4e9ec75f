"""XEP-0198 protocol logic without sockets: AckQueue's counters and timers, and the wire helpers."""

import pytest
from lxml import etree

from xmppd.stream_mgmt import (WRAP, AckQueue, HandledCountTooHigh, answer_bytes, enabled_bytes, failed_bytes,
                               parse_h, resumed_bytes, too_high_bytes)


def queue(**kwargs) -> AckQueue:
    settings = dict(request_after=3, request_delay=10.0, ack_timeout=60.0)
    settings.update(kwargs)
    return AckQueue(**settings)


def test_counts_what_the_client_sent_and_wraps_at_32_bits():
    sm = queue()
    sm.handled = WRAP - 2
    sm.received()
    sm.received()
    assert sm.handled == 0
    sm.received()
    assert sm.handled == 1


def test_acknowledge_returns_the_acknowledged_stanzas_in_order():
    sm = queue(request_after=100)
    for n in range(5):
        sm.push(f"<message id='{n}'/>".encode(), None, float(n))
    assert sm.sent == 5
    done = sm.acknowledge(3)
    assert [item.data for item in done] == [b"<message id='0'/>", b"<message id='1'/>", b"<message id='2'/>"]
    assert len(sm.queue) == 2 and sm.acked == 3
    assert sm.acknowledge(3) == []          # the same h again acknowledges nothing
    assert [item.queued_at for item in sm.acknowledge(5)] == [3.0, 4.0]


def test_an_h_beyond_what_was_sent_is_an_error():
    sm = queue(request_after=100)
    sm.push(b"<message/>", None, 0.0)
    with pytest.raises(HandledCountTooHigh) as raised:
        sm.acknowledge(2)
    assert (raised.value.h, raised.value.sent) == (2, 1)
    assert len(sm.queue) == 1               # nothing was taken out


def test_acknowledgements_across_the_wrap():
    sm = queue(request_after=100)
    sm.acked = WRAP - 2
    for n in range(4):
        sm.push(str(n).encode(), None, 0.0)
    assert sm.sent == 2
    assert [item.data for item in sm.acknowledge(1)] == [b"0", b"1", b"2"]
    assert sm.acked == 1
    with pytest.raises(HandledCountTooHigh):
        sm.acknowledge(3)
    assert sm.acknowledge(WRAP - 1) == []   # behind the last acknowledgement: stale, ignored


def test_asks_for_an_ack_after_n_stanzas_and_not_again_while_one_is_out():
    sm = queue(request_after=3)
    assert not sm.push(b"1", None, 0.0)
    assert not sm.push(b"2", None, 0.0)
    assert sm.push(b"3", None, 0.0)
    sm.requested(0.0)
    assert not any(sm.push(b"x", None, 0.0) for _ in range(5))
    sm.acknowledge(3)
    assert sm.push(b"y", None, 1.0)          # 6 unrequested now, the request was answered


def test_timer_asks_after_the_delay_then_gives_up_after_the_ack_timeout():
    sm = queue(request_after=10, request_delay=10.0, ack_timeout=60.0)
    assert sm.deadline() is None
    sm.push(b"1", None, 100.0)
    sm.push(b"2", None, 105.0)
    assert sm.deadline() == 110.0            # counted from the first stanza not asked about
    assert sm.poll(109.9) is None
    assert sm.poll(110.0) == "request"
    sm.requested(110.0)
    assert sm.deadline() == 170.0
    assert sm.poll(169.0) is None
    assert sm.poll(170.0) == "timeout"
    sm.acknowledge(2)
    assert sm.deadline() is None


def test_a_hibernated_stream_expires_at_the_end_of_its_window():
    sm = queue()
    sm.window = 300
    sm.push(b"1", None, 0.0)
    sm.requested(0.0)
    sm.hibernated_at = 1000.0
    assert sm.deadline() == 1300.0           # the ack timeout no longer applies
    assert sm.poll(1299.0) is None
    assert sm.poll(1300.0) == "expire"


@pytest.mark.parametrize("text, value", [("0", 0), ("4294967295", WRAP - 1), ("4294967296", None),
                                         ("-1", None), ("1.5", None), ("", None), (None, None), ("١٢", None)])
def test_parse_h(text, value):
    assert parse_h(text) == value


def test_wire_format():
    ns = "{urn:xmpp:sm:3}"
    enabled = etree.fromstring(enabled_bytes("abc", 300))
    assert (enabled.tag, enabled.get("id"), enabled.get("resume"), enabled.get("max")) == \
        (ns + "enabled", "abc", "true", "300")
    assert etree.fromstring(enabled_bytes(None, 0)).attrib == {}
    assert etree.fromstring(answer_bytes(7)).get("h") == "7"
    resumed = etree.fromstring(resumed_bytes("abc", 9))
    assert (resumed.get("previd"), resumed.get("h")) == ("abc", "9")
    failed = etree.fromstring(failed_bytes("item-not-found", 4))
    assert failed.get("h") == "4"
    assert failed[0].tag == "{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found"
    assert "h" not in etree.fromstring(failed_bytes("unexpected-request")).attrib
    too_high = etree.fromstring(too_high_bytes(HandledCountTooHigh(9, 4)))
    assert (too_high.tag, too_high.get("h"), too_high.get("send-count")) == (ns + "handled-count-too-high", "9", "4")
