"""RFC 6121 over real sockets: roster, subscriptions both ways, probes, presence, chat, iq routing."""

from __future__ import annotations

import asyncio

import pytest
from slixmpp.exceptions import IqError

from tests.harness import Client, iq_error_condition, run


async def online(xmppd, jid, password, *, presence=True, roster=True) -> Client:
    client = await Client(xmppd, jid, password).login()
    if roster:
        await client.get_roster(timeout=5)
    if presence:
        client.send_presence()
        await wait_for_own_presence(client)
    return client


async def wait_for_own_presence(client: Client) -> None:
    """The server echoes presence to its sender (RFC 6121 §4.2.2): then it is surely available."""
    while True:
        stanza = await asyncio.wait_for(client.presences.get(), 5)
        if stanza["from"] == client.boundjid and stanza["type"] != "unavailable":
            return


async def next_of_type(queue: asyncio.Queue, presence_type: str, timeout: float = 5.0):
    while True:
        stanza = await asyncio.wait_for(queue.get(), timeout)
        if stanza["type"] == presence_type:
            return stanza


async def roster_item(client: Client, contact: str) -> dict | None:
    """The contact's item from a full roster fetch (no version, so never the "unchanged" answer)."""
    iq = client.Iq(stype="get")
    iq.enable("roster")
    result = await iq.send(timeout=5)
    return result["roster"]["items"].get(contact)


def test_chat_between_two_clients(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        a = await online(xmppd, alice, pa)
        b = await online(xmppd, bob, pb)
        a.send_message(mto=bob, mbody="hello bob", mtype="chat")
        message = await b.next_message()
        assert message["body"] == "hello bob"
        assert message["from"] == a.boundjid      # stamped by the server with the full JID
        b.send_message(mto=a.boundjid.full, mbody="hi alice", mtype="chat")
        reply = await a.next_message()
        assert reply["body"] == "hi alice"
        await a.close()
        await b.close()

    run(scenario())


def test_message_to_bare_jid_goes_to_highest_priority(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        a = await online(xmppd, alice, pa)
        low = await online(xmppd, bob, pb, presence=False)
        high = await online(xmppd, bob, pb, presence=False)
        low.send_presence(ppriority=1)
        high.send_presence(ppriority=5)
        await wait_for_own_presence(low)
        await wait_for_own_presence(high)
        a.send_message(mto=bob, mbody="to the top", mtype="chat")
        message = await high.next_message()
        assert message["body"] == "to the top"
        with pytest.raises(asyncio.TimeoutError):
            await low.next_message(timeout=0.5)
        for client in (a, low, high):
            await client.close()

    run(scenario())


def test_message_to_unknown_users_and_domains_is_answered(xmppd, account):
    alice, pa = account("alice")

    async def scenario():
        a = await online(xmppd, alice, pa)
        errors = asyncio.Queue()
        a.add_event_handler("message_error", errors.put_nowait)
        a.send_message(mto="nobody-at-all@localhost", mbody="hello?", mtype="chat")
        error = await asyncio.wait_for(errors.get(), 5)
        assert error["error"]["condition"] == "service-unavailable"
        a.send_message(mto="someone@elsewhere.example", mbody="hello?", mtype="chat")
        error = await asyncio.wait_for(errors.get(), 5)
        assert error["error"]["condition"] == "remote-server-not-found"
        await a.close()

    run(scenario())


def test_roster_set_pushes_to_other_resource_and_versions(xmppd, account):
    (alice, pa), (bob, _) = account("alice"), account("bob")

    async def scenario():
        first = await online(xmppd, alice, pa)
        second = await online(xmppd, alice, pa)
        while not second.roster_pushes.empty():
            second.roster_pushes.get_nowait()
        first.update_roster(bob, name="Bob", groups=["Friends", "Work"])
        push = await asyncio.wait_for(second.roster_pushes.get(), 5)
        item = push["roster"]["items"][bob]
        assert item["name"] == "Bob" and sorted(item["groups"]) == ["Friends", "Work"]
        assert item["subscription"] == "none"
        version = push["roster"]["ver"]
        assert version
        # The same version asked again: the server says "nothing changed" with an empty result.
        iq = first.Iq(stype="get")
        iq.enable("roster")
        iq["roster"]["ver"] = version
        result = await iq.send(timeout=5)
        assert result.xml.find("{jabber:iq:roster}query") is None
        # Remove: both resources see the removal.
        await first.del_roster_item(bob)
        removal = await asyncio.wait_for(second.roster_pushes.get(), 5)
        assert removal["roster"]["items"][bob]["subscription"] == "remove"
        await first.close()
        await second.close()

    run(scenario())


def test_roster_errors(xmppd, account):
    (alice, pa), (bob, _) = account("alice"), account("bob")

    async def scenario():
        a = await online(xmppd, alice, pa)
        iq = a.Iq(stype="set")
        iq.enable("roster")
        iq["roster"].set_items({bob: {"name": "B"}, "carol@localhost": {"name": "C"}})
        assert await iq_error_condition(iq.send(timeout=5)) == "bad-request"   # one item per set
        # A client cannot set a subscription state (RFC 6121 §2.1.2.5): the value is ignored.
        iq = a.Iq(stype="set")
        iq.enable("roster")
        iq["roster"].set_items({bob: {"name": "B", "subscription": "both", "groups": []}})
        await iq.send(timeout=5)
        assert (await roster_item(a, bob))["subscription"] == "none"
        # Someone else's roster is off limits, and answered as for an account that does not exist (RFC 6121
        # §8.5.1), so that the answer does not tell who has an account; a ping is answered only to the owner.
        for to in (bob, "nobody-here@localhost"):
            other = a.Iq(stype="get", sto=to)
            other.enable("roster")
            assert await iq_error_condition(other.send(timeout=5)) == "service-unavailable"
            ping = a.Iq(stype="get", sto=to)
            ping.enable("ping")
            assert await iq_error_condition(ping.send(timeout=5)) == "service-unavailable"
        await a.close()

    run(scenario())


def test_subscription_handshake_both_ways(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        a = await online(xmppd, alice, pa)
        b = await online(xmppd, bob, pb)
        a.send_presence(pto=bob, ptype="subscribe")
        request = await next_of_type(b.presences, "subscribe")
        assert request["from"].bare == alice
        b.send_presence(pto=alice, ptype="subscribed")
        # Alice is told, and gets Bob's presence at once (RFC 6121 §3.1.5).
        await next_of_type(a.presences, "subscribed")
        available = await next_of_type(a.presences, "available")
        assert available["from"].bare == bob
        # And back: Bob subscribes to Alice.
        b.send_presence(pto=alice, ptype="subscribe")
        await next_of_type(a.presences, "subscribe")
        a.send_presence(pto=bob, ptype="subscribed")
        await next_of_type(b.presences, "subscribed")
        await asyncio.sleep(0.3)
        assert (await roster_item(a, bob))["subscription"] == "both"
        assert (await roster_item(b, alice))["subscription"] == "both"
        # Unavailable on disconnect reaches the subscriber.
        await b.close()
        gone = await next_of_type(a.presences, "unavailable")
        assert gone["from"].bare == bob
        await a.close()

    run(scenario())


def test_subscription_request_to_offline_user_waits_for_login(xmppd, account):
    (alice, pa), (carol, pc) = account("alice"), account("carol")

    async def scenario():
        a = await online(xmppd, alice, pa)
        a.send_presence(pto=carol, ptype="subscribe")
        await asyncio.sleep(0.5)
        pending = await roster_item(a, carol)
        assert (pending["subscription"], pending["ask"]) == ("none", "subscribe")
        await a.close()
        c = await online(xmppd, carol, pc)
        request = await next_of_type(c.presences, "subscribe")
        assert request["from"].bare == alice
        c.send_presence(pto=alice, ptype="subscribed")
        await asyncio.sleep(0.5)
        await c.close()
        a = await online(xmppd, alice, pa)
        assert (await roster_item(a, carol))["subscription"] == "to"
        await a.close()

    run(scenario())


def test_probe_on_login_delivers_contacts_presence(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        a = await online(xmppd, alice, pa)
        b = await online(xmppd, bob, pb)
        a.send_presence(pto=bob, ptype="subscribe")
        await next_of_type(b.presences, "subscribe")
        b.send_presence(pto=alice, ptype="subscribed")
        await next_of_type(a.presences, "subscribed")
        await a.close()
        b.send_presence(pstatus="in a meeting", pshow="dnd")
        await asyncio.sleep(0.3)
        a = await online(xmppd, alice, pa)
        presence = await next_of_type(a.presences, "dnd")
        assert presence["from"] == b.boundjid and presence["status"] == "in a meeting"
        await a.close()
        await b.close()

    run(scenario())


def test_directed_presence_and_its_unavailable(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        a = await online(xmppd, alice, pa)
        b = await online(xmppd, bob, pb)
        a.send_presence(pto=b.boundjid.full, pstatus="just for you")
        presence = await next_of_type(b.presences, "available")
        assert presence["status"] == "just for you"
        await a.close()
        gone = await next_of_type(b.presences, "unavailable")
        assert gone["from"].bare == alice
        await b.close()

    run(scenario())


def test_iq_routing_errors(xmppd, account):
    alice, pa = account("alice")

    async def scenario():
        a = await online(xmppd, alice, pa)
        unknown = a.Iq(stype="get", sto="localhost")
        unknown.xml.append(unknown.xml.makeelement("{urn:example:nothing}query", {}))
        assert await iq_error_condition(unknown.send(timeout=5)) == "service-unavailable"
        to_nobody = a.Iq(stype="get", sto="nobody-here@localhost/x")
        to_nobody.enable("disco_info")
        assert await iq_error_condition(to_nobody.send(timeout=5)) == "service-unavailable"
        to_nobody_bare = a.Iq(stype="get", sto="nobody-here@localhost")
        to_nobody_bare.enable("vcard_temp")
        assert await iq_error_condition(to_nobody_bare.send(timeout=5)) == "service-unavailable"
        await a.close()

    run(scenario())


def test_disco_ping_version(xmppd, account):
    alice, pa = account("alice")

    async def scenario():
        a = await online(xmppd, alice, pa)
        info = await a.plugin["xep_0030"].get_info(jid="localhost", timeout=5)
        features = set(info["disco_info"]["features"])
        assert {"urn:xmpp:ping", "http://jabber.org/protocol/disco#info", "jabber:iq:version",
                "vcard-temp"} <= features
        assert ("server", "im", None, "xmppd") in info["disco_info"]["identities"]
        own = await a.plugin["xep_0030"].get_info(jid=alice, timeout=5)
        assert ("account", "registered", None, None) in own["disco_info"]["identities"]
        await a.plugin["xep_0199"].ping(jid="localhost", timeout=5)
        session = a.Iq(stype="set")
        session.xml.append(session.xml.makeelement("{urn:ietf:params:xml:ns:xmpp-session}session", {}))
        assert (await session.send(timeout=5))["type"] == "result"   # RFC 3921 leftover, still answered
        version = await a.plugin["xep_0092"].get_version("localhost", timeout=5)
        assert version["software_version"]["name"] == "xmppd"
        assert not version["software_version"]["os"]
        await a.close()

    run(scenario())


def test_vcard_set_and_get_by_another_user(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        a = await online(xmppd, alice, pa)
        b = await online(xmppd, bob, pb)
        vcard = a.plugin["xep_0054"].make_vcard()
        vcard["FN"] = "Alice Example"
        await a.plugin["xep_0054"].publish_vcard(vcard, timeout=5)
        fetched = await b.plugin["xep_0054"].get_vcard(jid=alice, cached=False, timeout=5)
        assert fetched["vcard_temp"]["FN"] == "Alice Example"
        try:
            await b.plugin["xep_0054"].publish_vcard(vcard, jid=alice, timeout=5)
        except IqError as error:
            assert error.iq["error"]["condition"] == "service-unavailable"  # as for an account that does not exist
        else:
            raise AssertionError("Bob changed Alice's vCard")
        await a.close()
        await b.close()

    run(scenario())


def test_server_pings_a_silent_client_and_drops_it(request, tmp_path_factory, certificate):
    from tests.conftest import start_xmppd

    server = start_xmppd(request, tmp_path_factory, certificate, "sqlite",
                         "ping_interval = 1.0\nping_timeout = 1.0\n")
    jid = server.add_user("sleepy", "sleepy-password")

    async def scenario():
        client = await Client(server, jid, "sleepy-password").login()
        gone = asyncio.get_running_loop().create_future()
        client.add_event_handler("disconnected", lambda *_: gone.done() or gone.set_result(True))
        client.transport.pause_reading()   # a phone that went away without closing its socket
        for _ in range(100):
            if "did not answer a ping" in server.log():
                break
            await asyncio.sleep(0.1)
        client.transport.resume_reading()
        await asyncio.wait_for(gone, 5)    # the server closed the connection

    run(scenario())
    assert "did not answer a ping" in server.log()
