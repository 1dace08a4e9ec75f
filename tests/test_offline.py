"""XEP-0160 offline storage over real sockets, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import start_xmppd
from tests.harness import Client, drain_messages, listening, run


def test_messages_wait_for_login_in_order_with_delay_stamps(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        a = await Client(xmppd, alice, pa).login()
        for n in range(3):
            a.send_message(mto=bob, mbody=f"message {n}", mtype="chat")
        composing = a.make_message(mto=bob, mtype="chat")      # a chat state alone is not kept
        composing.xml.append(composing.xml.makeelement("{http://jabber.org/protocol/chatstates}composing", {}))
        composing.send()
        omemo = a.make_message(mto=bob, mtype="chat")
        omemo.xml.append(omemo.xml.makeelement("{eu.siacs.conversations.axolotl}encrypted", {}))
        omemo.send()
        await a.plugin["xep_0199"].ping(jid="localhost", timeout=5)   # everything above has been handled
        b = await listening(Client(xmppd, bob, pb)).login()
        b.send_presence()
        received = await drain_messages(b)
        assert [m["body"] for m in received] == ["message 0", "message 1", "message 2", ""]
        assert received[3].xml.find("{eu.siacs.conversations.axolotl}encrypted") is not None
        for message in received:
            assert message["from"] == a.boundjid
            delay = message.xml.find("{urn:xmpp:delay}delay")
            assert delay is not None and delay.get("from") == "localhost" and delay.get("stamp").endswith("Z")
        await b.close()
        again = await listening(Client(xmppd, bob, pb)).login()      # handed over once, then deleted
        again.send_presence()
        assert await drain_messages(again) == []
        await again.close()
        await a.close()

    run(scenario())


def test_negative_priority_does_not_take_the_messages(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        a = await Client(xmppd, alice, pa).login()
        a.send_message(mto=bob, mbody="for a real device", mtype="chat")
        await a.plugin["xep_0199"].ping(jid="localhost", timeout=5)
        lurker = await listening(Client(xmppd, bob, pb)).login()
        lurker.send_presence(ppriority=-1)
        assert await drain_messages(lurker) == []
        phone = await listening(Client(xmppd, bob, pb)).login()
        phone.send_presence(ppriority=0)
        assert [m["body"] for m in await drain_messages(phone)] == ["for a real device"]
        for client in (a, lurker, phone):
            await client.close()

    run(scenario())


def test_msgoffline_is_advertised(xmppd, account):
    alice, pa = account("alice")

    async def scenario():
        a = await Client(xmppd, alice, pa).login()
        info = await a.plugin["xep_0030"].get_info(jid="localhost", timeout=5)
        assert "msgoffline" in info["disco_info"]["features"]
        await a.close()

    run(scenario())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_full_store_refuses_with_an_error_and_keeps_what_it_has(request, tmp_path_factory, certificate, backend):
    server = start_xmppd(request, tmp_path_factory, certificate, backend, "[offline]\nmax_messages = 2\n")
    alice = server.add_user("alice", "alice-password")
    bob = server.add_user("bob", "bob-password")

    async def scenario():
        a = await Client(server, alice, "alice-password").login()
        errors = asyncio.Queue()
        a.add_event_handler("message_error", errors.put_nowait)
        for n in range(3):
            a.send_message(mto=bob, mbody=f"message {n}", mtype="chat")
        error = await asyncio.wait_for(errors.get(), 5)
        assert error["error"]["condition"] == "resource-constraint" and error["body"] == "message 2"
        b = await listening(Client(server, bob, "bob-password")).login()
        b.send_presence()
        assert [m["body"] for m in await drain_messages(b)] == ["message 0", "message 1"]
        await a.close()
        await b.close()

    run(scenario())
    assert "offline storage of bob@localhost is full (2 messages)" in server.log()
