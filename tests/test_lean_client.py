"""The lean test client itself: its XEP-0198 bookkeeping without a server, and log-in and messages
against a real xmppd on both backends."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from tests.harness import run
from tests.lean_client import (MOD32, NS_SM, ConnectionLost, LeanClient, XmppError, stream_header)

XMPPD_EXTRA_CONFIG = "require_encryption = false\nmax_bytes_per_second = 0\n"


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def abort(self) -> None:
        self.aborted = True


def offline_client() -> tuple[LeanClient, FakeTransport]:
    """A client on a fake transport, its stream open and stream management on."""
    client = LeanClient("alice@localhost", "secret")
    transport = FakeTransport()
    client.connection_made(transport)
    client._open_stream()
    client.data_received(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
                         b"from='localhost' id='x' version='1.0'>")
    client.sm_enabled = True
    transport.written = b""
    return client, transport


# ---------------------------------------------------------------- without a server
def test_acks_move_sent_stanzas_in_order_across_the_32_bit_wrap():
    async def scenario():
        client, _ = offline_client()
        client.acked_h = MOD32 - 2
        ids = [client.send_message("bob@localhost", f"n{n}", id=f"id{n}") for n in range(5)]
        client.data_received(f"<a xmlns='{NS_SM}' h='{MOD32 - 1}'/>".encode())
        assert client.acked_ids == ids[:1]
        client.data_received(f"<a xmlns='{NS_SM}' h='2'/>".encode())   # wrapped: 4 stanzas acknowledged
        assert client.acked_ids == ids[:4] and [s.id for s in client.unacked] == ids[4:]
        assert client.acked_h == 2 and client.protocol_errors == []

    run(scenario())


def test_an_ack_for_more_than_was_sent_is_recorded_as_a_server_error():
    async def scenario():
        client, _ = offline_client()
        client.send_message("bob@localhost", "one", id="one")
        client.data_received(f"<a xmlns='{NS_SM}' h='3'/>".encode())
        assert client.acked_ids == ["one"]
        assert client.protocol_errors and "acknowledges 3 stanzas" in client.protocol_errors[0]

    run(scenario())


def test_stanzas_are_counted_and_requests_answered_byte_by_byte():
    async def scenario():
        client, transport = offline_client()
        data = (b"<message from='bob@localhost/x' id='m1' type='chat'><body>hi</body>"
                b"<delay xmlns='urn:xmpp:delay' stamp='2020-01-01T00:00:00Z'/></message>"
                b"<presence from='bob@localhost/x'/><r xmlns='urn:xmpp:sm:3'/>"
                b"<iq type='get' id='p1' from='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
                b"<r xmlns='urn:xmpp:sm:3'/>")
        for byte in data:
            client.data_received(bytes([byte]))
        assert client.h_in == 3
        assert transport.written.startswith(f"<a xmlns='{NS_SM}' h='2'/>".encode())
        assert b"<iq type='result' id=\"p1\" to=\"localhost\"/>" in transport.written
        assert transport.written.endswith(f"<a xmlns='{NS_SM}' h='3'/>".encode())
        [message] = client.received
        assert (message.id, message.from_, message.body, message.delayed) == ("m1", "bob@localhost/x", "hi", True)
        # the iq result we sent is ours to count
        assert len(client.unacked) == 1

    run(scenario())


def test_the_end_of_the_stream_and_a_lost_connection_wake_waiters():
    async def scenario():
        client, transport = offline_client()
        waiter = asyncio.ensure_future(client.wait_until(lambda: False, 5))
        await asyncio.sleep(0)
        client.data_received(b"</stream:stream>")
        assert client.stream_closed and transport.aborted
        client.connection_lost(None)
        with pytest.raises(ConnectionLost):
            await waiter

    run(scenario())


def test_stream_header():
    assert stream_header("localhost").startswith(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client'")


# ---------------------------------------------------------------- against xmppd
def _accounts(xmppd, count: int) -> tuple[list[str], str]:
    password = secrets.token_urlsafe(12)
    return xmppd.add_users([f"lean-{secrets.token_hex(4)}" for _ in range(count)], password), password


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_log_in_with_scram_in_clear_text_and_exchange_messages(xmppd, mechanism):
    (alice, bob), password = _accounts(xmppd, 2)

    async def scenario():
        a = await LeanClient(alice, password, port=xmppd.port, mechanism=mechanism).login(resource="phone")
        b = await LeanClient(bob, password, port=xmppd.port, mechanism=mechanism).login()
        assert a.jid == f"{alice}/phone" and b.jid.startswith(bob + "/")
        await b.ping()                       # b's initial presence is handled: b is available
        a.send_message(bob, "hello <&> there", id="first")
        await b.wait_until(lambda: b.received, 5)
        [message] = b.received
        assert (message.id, message.from_, message.body, message.delayed) == ("first", a.jid, "hello <&> there", False)
        await a.close()
        await b.close()
        assert not a.connected and not b.connected

    run(scenario())


def test_plain_over_direct_tls(xmppd):
    (alice,), password = _accounts(xmppd, 1)

    async def scenario():
        a = await LeanClient(alice, password, port=xmppd.tls_port, direct_tls=True, cafile=xmppd.cert,
                             mechanism="PLAIN").login()
        await a.ping()
        await a.close()

    run(scenario())
    assert f"authenticated as {alice} (PLAIN)" in xmppd.log()


def test_a_wrong_password_fails(xmppd):
    (alice,), _ = _accounts(xmppd, 1)

    async def scenario():
        with pytest.raises(XmppError, match="authentication failed"):
            await LeanClient(alice, "wrong", port=xmppd.port).connect()

    run(scenario())


def test_offline_messages_arrive_with_a_delay_stamp(xmppd):
    (alice, bob), password = _accounts(xmppd, 2)

    async def scenario():
        a = await LeanClient(alice, password, port=xmppd.port).login()
        for n in range(3):
            a.send_message(bob, f"offline {n}", id=f"off{n}")
        await a.ping()
        b = await LeanClient(bob, password, port=xmppd.port).login()
        await b.wait_until(lambda: len(b.received) == 3, 5)
        assert [(m.id, m.body, m.delayed) for m in b.received] == [(f"off{n}", f"offline {n}", True) for n in range(3)]
        await a.close()
        await b.close()

    run(scenario())
