"""XEP-0198 over real sockets: acknowledgements, hibernation, resumption, and what happens when it fails.

The clients are lean_client.LeanClient, which keeps the XEP-0198 counters in plain sight (slixmpp's
plugin hides them). Each test uses fresh accounts on a server per backend.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import run
from tests.lean_client import LeanClient, random_password

XMPPD_EXTRA_CONFIG = """require_encryption = false
max_bytes_per_second = 10000000

[stream_mgmt]
resume_timeout = 3.0
max_queue = 10
request_after_stanzas = 5
request_after_seconds = 1.0
ack_timeout = 2.0
"""


def client(xmppd, prefix: str, **kwargs) -> LeanClient:
    name = f"{prefix}-{random_password()[:8].lower()}"
    password = random_password()
    jid = xmppd.add_user(name, password)
    return LeanClient(jid, password, port=xmppd.port, **kwargs)


async def both_online(alice: LeanClient, bob: LeanClient) -> str:
    """Alice with stream management (and resumption), Bob without; returns Alice's bare JID."""
    await alice.login(sm=True)
    await bob.login()
    return alice.jid.split("/")[0]


def bodies(received) -> list[str]:
    return [message.body for message in received if message.body is not None]


def test_stream_feature_enable_and_acks(xmppd):
    alice = client(xmppd, "alice")
    bob = client(xmppd, "bob")

    async def scenario():
        await alice.connect()
        assert alice.offers_sm()
        await alice.bind()
        await alice.enable_sm(resume=True, max_resume=600)
        assert alice.sm_resume and alice.sm_id and alice.sm_max == 3   # capped by resume_timeout
        await bob.login()
        for n in range(3):
            alice.send_message(bob.jid.split("/")[0], f"m{n}", id=f"a{n}")
        assert await alice.ack() == 3
        assert alice.acked_ids == ["a0", "a1", "a2"]
        await bob.wait_until(lambda: len(bodies(bob.received)) == 3)
        await alice.close()
        await bob.close()
    run(scenario())


def test_enable_before_bind_and_twice_fails(xmppd):
    alice = client(xmppd, "alice")

    async def scenario():
        await alice.connect()
        with pytest.raises(Exception, match="unexpected-request"):
            await alice.enable_sm()
        await alice.bind()
        await alice.enable_sm(resume=False)
        assert alice.sm_id is None
        with pytest.raises(Exception, match="unexpected-request"):
            await alice.enable_sm()
        await alice.close()
    run(scenario())


def test_resume_redelivers_unacknowledged_once_in_order_with_delay(xmppd):
    alice = client(xmppd, "alice", auto_ack=False)
    bob = client(xmppd, "bob")

    async def scenario():
        alice_bare = await both_online(alice, bob)
        for n in range(3):
            bob.send_message(alice_bare, f"before-{n}")
        await alice.wait_until(lambda: len(bodies(alice.received)) == 3)
        alice.abort()                       # the phone loses its radio without a word
        await asyncio.sleep(0.3)
        for n in range(2):
            bob.send_message(alice_bare, f"during-{n}")
        await asyncio.sleep(0.3)
        alice.received.clear()
        h_before = alice.h_in
        await alice.connect()
        alice.h_in = 0                      # pretend the client handled none of the three
        result = await alice.resume()
        assert result.resumed
        await alice.wait_until(lambda: len(bodies(alice.received)) == 5)
        await asyncio.sleep(0.3)
        assert bodies(alice.received) == ["before-0", "before-1", "before-2", "during-0", "during-1"]
        assert all(message.delayed for message in alice.received)
        assert h_before >= 3
        # acknowledged now: nothing comes again on the next resumption
        alice.send_ack()
        await asyncio.sleep(0.2)
        alice.abort()
        await asyncio.sleep(0.2)
        alice.received.clear()
        await alice.connect()
        assert (await alice.resume()).resumed
        await asyncio.sleep(0.5)
        assert bodies(alice.received) == []
        await alice.close()
        await bob.close()
    run(scenario())


def test_resume_after_the_window_fails_and_messages_arrive_offline(xmppd):
    alice = client(xmppd, "alice", auto_ack=False)
    bob = client(xmppd, "bob")

    async def scenario():
        alice_bare = await both_online(alice, bob)
        bob.send_message(alice_bare, "one")
        await alice.wait_until(lambda: len(bodies(alice.received)) == 1)
        alice.abort()
        await asyncio.sleep(0.3)
        bob.send_message(alice_bare, "two")
        await asyncio.sleep(4.0)            # resume_timeout is 3 s
        await alice.connect()
        alice.h_in = 0
        result = await alice.resume()
        assert not result.resumed and result.condition == "item-not-found"
        assert result.h is not None         # the server remembers the expired session's count
        alice.received.clear()
        await alice.bind()
        alice.send_presence()
        await alice.wait_until(lambda: len(bodies(alice.received)) == 2)
        assert bodies(alice.received) == ["one", "two"]
        assert all(message.delayed for message in alice.received)
        await alice.close()
        await bob.close()
    run(scenario())


def test_bogus_previd_fails_and_a_fresh_bind_works(xmppd):
    alice = client(xmppd, "alice")

    async def scenario():
        await alice.connect()
        alice.sm_id = "no-such-session"
        result = await alice.resume()
        assert not result.resumed and result.condition == "item-not-found" and result.h is None
        await alice.bind()
        await alice.enable_sm()
        await alice.close()
    run(scenario())


def test_an_h_higher_than_sent_ends_the_stream(xmppd):
    alice = client(xmppd, "alice")

    async def scenario():
        await alice.login(sm=True)
        alice.write(b"<a xmlns='urn:xmpp:sm:3' h='1000'/>")
        await alice.wait_until(lambda: alice.stream_error is not None, timeout=5)
        assert alice.stream_error == "undefined-condition"
        await asyncio.sleep(0.2)
        assert "closing: handled count too high" in xmppd.log()
    run(scenario())


def test_queue_overflow_goes_to_offline_storage_and_comes_back(xmppd):
    alice = client(xmppd, "alice", auto_ack=False)
    bob = client(xmppd, "bob")

    async def scenario():
        await alice.login(sm=True)
        await bob.login()
        alice.abort()
        await asyncio.sleep(0.3)
        alice_bare = alice.jid.split("/")[0]
        for n in range(25):                 # max_queue is 10 (the initial presence echo takes a place)
            bob.send_message(alice_bare, f"m{n:02}")
        await asyncio.sleep(0.5)
        alice.received.clear()
        await alice.connect()
        alice.h_in = 0
        assert (await alice.resume()).resumed
        alice.auto_ack = True
        alice.send_ack()
        await alice.wait_until(lambda: len(bodies(alice.received)) == 25, timeout=10)
        await asyncio.sleep(0.3)
        assert bodies(alice.received) == [f"m{n:02}" for n in range(25)]
        assert "its messages go to offline storage" in xmppd.log()
        await alice.close()
        await bob.close()
    run(scenario())


def test_a_client_that_stops_reading_is_detected_and_hibernated(xmppd):
    alice = client(xmppd, "alice")
    bob = client(xmppd, "bob")

    async def scenario():
        await alice.login(sm=True)
        await bob.login()
        alice.stop_reading()
        alice_bare = alice.jid.split("/")[0]
        for n in range(6):
            bob.send_message(alice_bare, f"m{n}")
        # the server asks for an ack after 5 stanzas; no answer within ack_timeout (2 s) closes the connection
        await asyncio.sleep(3.5)
        assert "did not acknowledge stanzas" in xmppd.log() and "hibernated" in xmppd.log()
        fresh = LeanClient(alice.username + "@" + alice.domain, alice.password, port=xmppd.port, auto_ack=False)
        fresh.sm_id = alice.sm_id
        await fresh.connect()
        assert (await fresh.resume()).resumed
        await fresh.wait_until(lambda: len(bodies(fresh.received)) == 6)
        assert bodies(fresh.received) == [f"m{n}" for n in range(6)]
        alice.abort()
        await fresh.close()
        await bob.close()
    run(scenario())


def test_an_iq_for_a_session_whose_window_ends_gets_an_error(xmppd):
    alice = client(xmppd, "alice", auto_ack=False)
    bob = client(xmppd, "bob")

    async def scenario():
        await alice.login(sm=True)
        await bob.login()
        alice.abort()
        await asyncio.sleep(0.3)
        reply = await bob.iq(f"<iq type='get' id='{{id}}' to='{alice.jid}'>"
                             "<query xmlns='jabber:iq:version'/></iq>", timeout=8)
        assert reply.get("type") == "error"
        assert reply.find("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}service-unavailable") \
            is not None
        await bob.close()
    run(scenario())


def test_what_csi_held_is_handed_over_on_resumption(xmppd):
    alice = client(xmppd, "alice", auto_ack=False)
    bob = client(xmppd, "bob")

    async def scenario():
        await alice.login(sm=True)
        await bob.login()
        alice.write(b"<inactive xmlns='urn:xmpp:csi:0'/>")
        await asyncio.sleep(0.2)
        alice_bare = alice.jid.split("/")[0]
        bob.send_raw(f"<message to='{alice_bare}' type='chat' id='cs1'>"
                     "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>".encode())
        await asyncio.sleep(0.3)
        assert alice.received == []          # held: a chat state does not wake an inactive client
        alice.abort()
        await asyncio.sleep(0.3)
        await alice.connect()
        alice.h_in = 0
        assert (await alice.resume()).resumed
        await alice.wait_until(lambda: any(message.id == "cs1" for message in alice.received))
        await alice.close()
        await bob.close()
    run(scenario())


def test_resuming_while_the_old_connection_is_open_closes_it(xmppd):
    alice = client(xmppd, "alice", auto_ack=False)
    bob = client(xmppd, "bob")

    async def scenario():
        alice_bare = await both_online(alice, bob)
        bob.send_message(alice_bare, "while-open")
        await alice.wait_until(lambda: len(bodies(alice.received)) == 1)
        second = LeanClient(f"{alice.username}@{alice.domain}", alice.password, port=xmppd.port)
        second.sm_id = alice.sm_id
        await second.connect()
        assert (await second.resume()).resumed
        await alice.wait_until(lambda: alice.stream_error is not None, timeout=5)
        assert alice.stream_error == "conflict"
        await second.wait_until(lambda: bodies(second.received) == ["while-open"])
        bob.send_message(alice_bare, "after")
        await second.wait_until(lambda: bodies(second.received) == ["while-open", "after"])
        await second.close()
        await bob.close()
    run(scenario())
