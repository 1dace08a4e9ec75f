"""XEP-0198 protocol logic without sockets: AckQueue's counters and timers, and the wire helpers."""

import asyncio
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


def test_an_extended_hibernation_suspends_presence_first_then_expires():
    sm = queue()
    sm.window = 300
    sm.extension = 1000
    sm.hibernated_at = 0.0
    assert sm.deadline() == 300.0
    assert sm.poll(300.0) == "suspend"
    sm.presence_suspended = True
    assert sm.deadline() == 1300.0
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


# ---------------------------------------------------------------- the module, with Twisted's Clock
def module_setup(**settings):
    import dataclasses

    from twisted.internet.task import Clock

    from tests.fakes import FakeConnection
    from xmppd.config import default_config
    from xmppd.server import Server
    from xmppd.stream_mgmt import StreamManagementModule

    config = default_config()
    config = dataclasses.replace(config, stream_mgmt=dataclasses.replace(config.stream_mgmt, **settings))
    server = Server(config, storage=None)
    clock = Clock()
    clock.advance(1_000_000)
    module = StreamManagementModule(server, clock)
    connection = FakeConnection()
    session = server.bind(connection, "bob", "phone")
    return server, module, clock, session, connection


def enable(server, session, **attributes) -> None:
    from xmppd.stream_mgmt import ENABLE

    server.nonza_handler(ENABLE)(session, etree.Element(ENABLE, {k: str(v) for k, v in attributes.items()}))


def answer(server, session, h) -> None:
    from xmppd.stream_mgmt import ANSWER

    server.nonza_handler(ANSWER)(session, etree.Element(ANSWER, h=str(h)))


def message(n: int) -> etree._Element:
    stanza = etree.Element("{jabber:client}message", {"from": "alice@localhost/pc", "id": str(n)})
    return stanza


def test_module_enable_answers_and_caps_the_window():
    server, module, _, session, connection = module_setup(resume_timeout=300)
    assert [e.tag for e in server.stream_features()] == ["{urn:xmpp:sm:3}sm"]
    enable(server, session, resume="true", max=900)
    enabled = connection.take()[0]
    assert enabled.tag == "{urn:xmpp:sm:3}enabled" and enabled.get("max") == "300"
    enable(server, session)
    assert connection.take()[0][0].tag == "{urn:ietf:params:xml:ns:xmpp-stanzas}unexpected-request"


def test_module_asks_for_acks_and_forgets_what_was_acknowledged():
    server, module, clock, session, connection = module_setup(request_after_stanzas=3, request_after_seconds=5)
    enable(server, session)
    connection.take()
    session.deliver(message(1))
    assert [e.tag for e in connection.take()] == ["{jabber:client}message"]
    clock.advance(5)                                   # one stanza waited request_after_seconds
    assert [e.tag for e in connection.take()] == ["{urn:xmpp:sm:3}r"]
    session.deliver(message(2))
    session.deliver(message(3))
    session.deliver(message(4))
    assert [e.tag for e in connection.take()].count("{urn:xmpp:sm:3}r") == 0   # one request is out
    answer(server, session, 4)
    assert len(session.sm.queue) == 0 and clock.getDelayedCalls() == []


def test_module_an_unanswered_request_closes_the_connection_as_timed_out():
    server, module, clock, session, connection = module_setup(request_after_stanzas=1, ack_timeout=30)
    enable(server, session, resume="true")
    session.deliver(message(1))
    clock.advance(29)
    assert connection.closed is None
    clock.advance(1)
    assert connection.closed[0] == "connection-timeout"


def test_module_too_high_h_ends_the_stream():
    server, module, clock, session, connection = module_setup()
    enable(server, session)
    session.deliver(message(1))
    answer(server, session, 2)
    assert connection.closed[0] == "undefined-condition"


def test_module_hibernation_queues_then_expires_and_remembers_h():
    server, module, clock, session, connection = module_setup(resume_timeout=60)
    enable(server, session, resume="true")
    resume_id = session.sm.resume_id
    session.sm.received()
    server.connection_lost(session, resumable=True)
    assert module.hibernated == 1 and server.session(session.jid) is session
    connection.take()
    session.deliver(message(1))
    assert connection.take() == [] and len(session.sm.queue) == 1   # queued, nothing written
    clock.advance(59)
    assert not session.closed
    clock.advance(1)
    assert session.closed and server.session(session.jid) is None
    assert module.hibernated == 0
    assert module._ended[resume_id][:2] == ("bob", 1)


def test_module_a_clean_close_ends_a_resumable_session():
    server, module, clock, session, connection = module_setup()
    enable(server, session, resume="true")
    server.connection_lost(session, resumable=False)
    assert session.closed and module.hibernated == 0


def test_module_overflow_answers_iqs_and_drops_presence_when_full():
    server, module, clock, session, connection = module_setup(max_queue=10, request_after_stanzas=100)
    enable(server, session, resume="true")
    server.connection_lost(session, resumable=True)
    for n in range(10):
        session.deliver(message(n))
    assert len(session.sm.queue) == 10 and not session.sm.overflowed
    presence = etree.Element("{jabber:client}presence", {"from": "alice@localhost/pc"})
    session.deliver(presence)
    assert session.sm.overflowed and len(session.sm.queue) == 10     # nothing overwritten


def test_module_a_graceful_stop_saves_resumable_sessions_and_a_start_restores_them():
    import asyncio
    import json
    from datetime import datetime, timezone

    async def scenario():
        server, module, clock, session, connection = module_setup(resume_timeout=300, request_after_stanzas=100)
        enable(server, session, resume="true")
        resume_id = session.sm.resume_id
        session.sm.received()
        session.sm.received()
        received_at = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
        stored = server.journal.adopt("bob", 17, received_at)   # a message that is a row of offline_messages
        session.deliver(message(1))
        session.deliver_stored(b"<message xmlns='jabber:client' id='2'><body>hi</body></message>", stored)
        session.deliver(etree.fromstring(b"<iq xmlns='jabber:client' type='get' id='q' from='alice@localhost/pc'/>"))
        answer(server, session, 1)
        server.stopping = True
        server.connection_lost(session, resumable=False)   # the stop closed the stream: it hibernates
        assert not session.closed and module.hibernated == 1
        clock.advance(100)
        [saved] = module.saved_state(clock.seconds())
        assert (saved.resume_id, saved.username, saved.resource) == (resume_id, "bob", "phone")
        assert (saved.handled, saved.acked, saved.remaining) == (2, 1, 200.0)
        queue = json.loads(saved.details)["queue"]
        assert [(row, received) for _, row, _, received in queue] == [(17, received_at.isoformat()), (None, None)]

        restarted, keeper, restart_clock, bound, _ = module_setup(resume_timeout=300)
        await keeper.restore([saved])
        assert restarted.session(session.jid) is bound     # a session of that resource exists: left alone
        restarted.unbind(bound)
        await keeper.restore([saved])
        restored = restarted.session(session.jid)
        sm = restored.sm
        assert sm.resume_id == resume_id and sm.hibernated_at is not None and sm.presence_suspended
        assert (sm.handled, sm.acked, sm.window) == (2, 1, 200.0)
        assert [item.data for item in sm.queue] == [item.data for item in session.sm.queue]
        assert sm.queue[0].entry.id == 17 and restarted.journal.in_hand(17)   # offline delivery skips it
        restart_clock.advance(199)
        assert not restored.closed
        restart_clock.advance(1)
        assert restored.closed and not restarted.journal.in_hand(17)   # an offline message again

    asyncio.run(scenario())


def test_module_an_unreadable_saved_session_is_skipped_and_claims_nothing(caplog):
    import asyncio
    import json
    from datetime import datetime, timezone

    from xmppd.storage.models import ResumableSession

    async def scenario():
        server, keeper, _, bound, _ = module_setup()
        server.unbind(bound)
        queue = [["<message xmlns='jabber:client'/>", 5, 0.0, "2024-05-06T07:08:09+00:00"], ["<iq/>", "x", 0.0, None]]
        broken = ResumableSession("id-1", "bob", "phone", 1, 0, 60.0, json.dumps({"queue": queue}),
                                  datetime.now(timezone.utc))
        await keeper.restore([broken, ResumableSession("id-2", "bob", "pad", 0, 0, 60.0, "{", broken.saved_at)])
        assert server.sessions_of("bob@localhost") == {} and not server.journal.in_hand(5)

    asyncio.run(scenario())
    assert "saved session id-1 of bob@localhost is unreadable" in caplog.text
    assert "saved session id-2 of bob@localhost is unreadable" in caplog.text


def test_module_answers_requests_in_order_even_when_a_later_barrier_settles_first():
    """Two <r/>: the first waits for a journal commit, the second finds nothing pending. The second
    answer must not overtake the first (h would go back on the client)."""
    from xmppd.stream_mgmt import REQUEST

    async def scenario():
        server, module, _, session, connection = module_setup()
        enable(server, session)
        connection.take()
        loop = asyncio.get_running_loop()
        first, settled = loop.create_future(), loop.create_future()
        settled.set_result(None)
        barriers = iter((first, settled))
        module.journal.barrier = lambda: next(barriers)
        session.sm.handled = 11
        server.nonza_handler(REQUEST)(session, etree.Element(REQUEST))
        await asyncio.sleep(0)              # the first answer is now waiting for its commit
        session.sm.handled = 12
        server.nonza_handler(REQUEST)(session, etree.Element(REQUEST))
        first.set_result(None)
        await asyncio.sleep(0.05)
        assert [a.get("h") for a in connection.take()] == ["11", "12"]

    asyncio.run(scenario())
