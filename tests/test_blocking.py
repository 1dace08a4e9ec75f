"""XEP-0191 blocking with real slixmpp clients, on both backends."""

from __future__ import annotations

import asyncio
import secrets
from xml.etree import ElementTree

import pytest

from tests.harness import iq_error_condition, run
from tests.lean_client import LeanClient
from tests.test_carbons import Device, device, raw_message
from tests.test_im import next_of_type, wait_for_own_presence

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
MAX_ITEMS = 5

XMPPD_EXTRA_CONFIG = f"""
[blocking]
max_items = {MAX_ITEMS}
"""


async def blocklist(client: Device) -> set[str]:
    return {str(jid) for jid in await client.plugin["xep_0191"].get_blocked_jids(timeout=5)}


def command_iq(client: Device, payload: str, iq_type: str = "set", to: str | None = None):
    """An iq with this payload (slixmpp has no "unblock all", nor bad commands)."""
    iq = client.make_iq(itype=iq_type, ito=to)
    iq.xml.append(ElementTree.fromstring(payload))
    return iq


def pushed(push) -> set[str]:
    """The JIDs in a block or unblock push."""
    return {item.get("jid") for item in push.xml.iter(f"{{{NS_BLOCKING}}}item")}


async def befriend(a: Device, b: Device) -> None:
    """Mutual presence subscription between two online clients (each gets the other's presence)."""
    for one, other in ((a, b), (b, a)):
        one.send_presence(pto=other.boundjid.bare, ptype="subscribe")
        await next_of_type(other.presences, "subscribe")
        other.send_presence(pto=one.boundjid.bare, ptype="subscribed")
        await next_of_type(one.presences, "subscribed")
        assert (await next_of_type(one.presences, "available"))["from"] == other.boundjid   # RFC 6121 §3.1.5


async def no_presence(client: Device, quiet: float = 0.7) -> None:
    with pytest.raises(asyncio.TimeoutError):
        presence = await asyncio.wait_for(client.presences.get(), quiet)
        raise AssertionError(f"unexpected {presence}")


def test_block_list_pushes_and_unblock_all(xmppd, account):
    (alice, pa), (bob, _), (carol, _) = account("alice"), account("bob"), account("carol")

    async def scenario():
        first = await device(xmppd, alice, pa)
        second = await device(xmppd, alice, pa)
        silent = await device(xmppd, alice, pa)   # never asks for the list: gets no pushes
        pushes: asyncio.Queue = asyncio.Queue()
        second.add_event_handler("blocked", pushes.put_nowait)
        second.add_event_handler("unblocked", pushes.put_nowait)
        assert await blocklist(first) == set()
        assert await blocklist(second) == set()

        await first.plugin["xep_0191"].block([bob, "Example.ORG"], timeout=5)
        push = await asyncio.wait_for(pushes.get(), 5)
        assert pushed(push) == {bob, "example.org"}   # prepared JIDs
        assert await blocklist(second) == {bob, "example.org"}
        await first.plugin["xep_0191"].block([bob, carol], timeout=5)        # bob again: only carol is new
        push = await asyncio.wait_for(pushes.get(), 5)
        assert pushed(push) == {carol}

        await first.plugin["xep_0191"].unblock([bob], timeout=5)
        push = await asyncio.wait_for(pushes.get(), 5)
        assert pushed(push) == {bob}
        await command_iq(first, f"<unblock xmlns='{NS_BLOCKING}'/>").send(timeout=5)   # unblock all: an empty push
        push = await asyncio.wait_for(pushes.get(), 5)
        assert push.xml.find(f"{{{NS_BLOCKING}}}unblock") is not None and not pushed(push)
        assert await blocklist(first) == set()
        await silent.nothing_more()
        for client in (first, second, silent):
            await client.close()

        # The list is the account's, across sessions.
        again = await device(xmppd, alice, pa)
        await again.plugin["xep_0191"].block([carol], timeout=5)
        await again.close()
        later = await device(xmppd, alice, pa)
        assert await blocklist(later) == {carol}
        await later.close()

    run(scenario())


def test_blocked_contact_gets_nothing_and_learns_nothing(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        a = await device(xmppd, alice, pa)
        other = await device(xmppd, alice, pa)
        b = await device(xmppd, bob, pb)
        await befriend(a, b)
        while not other.presences.empty():
            other.presences.get_nowait()
        await blocklist(a)

        await a.plugin["xep_0191"].block([bob], timeout=5)
        # §3.3: as if alice went offline, from each of her available resources.
        gone = {(await next_of_type(b.presences, "unavailable"))["from"] for _ in range(2)}
        assert gone == {a.boundjid, other.boundjid}

        # Bob's message: an error as from an offline account; neither of alice's resources sees it.
        raw_message(b, alice, "<body>hello?</body>")
        error = await b.next_stanza()
        assert error["type"] == "error" and error["error"]["condition"] == "service-unavailable"
        raw_message(b, a.boundjid.full, "<body>to the resource</body>")
        assert (await b.next_stanza())["error"]["condition"] == "service-unavailable"
        # Bob's iq to alice's resource: service-unavailable too.
        assert await iq_error_condition(b.plugin["xep_0030"].get_info(jid=a.boundjid.full, timeout=5)) \
            == "service-unavailable"
        # Bob's presence changes and probes reach nobody; alice's presence reaches bob no more.
        b.send_presence(pstatus="still here")
        await wait_for_own_presence(b)
        a.send_presence(pstatus="busy")
        await wait_for_own_presence(a)
        await no_presence(b)
        await a.nothing_more()
        await other.nothing_more()

        # Alice writes to bob: refused with <blocked/>.
        raw_message(a, bob, "<body>can you hear me?</body>")
        refusal = await a.next_stanza()
        assert refusal["type"] == "error" and refusal["error"]["condition"] == "not-acceptable"
        assert refusal.xml.find(f"{{jabber:client}}error/{{{NS_BLOCKING_ERRORS}}}blocked") is not None
        await b.nothing_more()

        # Bob logs in again: no presence of alice (she is subscribed-to, but blocks him).
        await b.close()
        b = await device(xmppd, bob, pb)
        await no_presence(b)

        # Unblocking: bob gets alice's current presence, and messages flow again.
        await a.plugin["xep_0191"].unblock([bob], timeout=5)
        back = await next_of_type(b.presences, "available")
        assert back["from"].bare == alice and back["status"] == "busy"
        b.send_message(mto=alice, mbody="there you are", mtype="chat")
        assert (await a.next_stanza())["body"] == "there you are"
        for client in (a, other, b):
            await client.close()

    run(scenario())


def test_blocked_sender_is_not_stored_offline(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        a = await device(xmppd, alice, pa)
        await a.plugin["xep_0191"].block([bob], timeout=5)
        await a.close()
        b = await device(xmppd, bob, pb)
        raw_message(b, alice, "<body>while you were away</body>")
        assert (await b.next_stanza())["error"]["condition"] == "service-unavailable"
        b.send_presence(pto=alice, ptype="subscribe")                 # no request is kept either
        await asyncio.sleep(0.5)
        a = Device(xmppd, alice, pa)
        await a.login()
        a.send_presence()
        await wait_for_own_presence(a)
        await a.nothing_more(1.0)
        await no_presence(a)
        for client in (a, b):
            await client.close()

    run(scenario())


def test_full_jid_and_domain_items(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        a = await device(xmppd, alice, pa)
        home = await device(xmppd, bob, pb, resource="home")
        work = await device(xmppd, bob, pb, resource="work")
        await a.plugin["xep_0191"].block([f"{bob}/home"], timeout=5)
        raw_message(home, alice, "<body>from home</body>")
        assert (await home.next_stanza())["error"]["condition"] == "service-unavailable"
        raw_message(work, alice, "<body>from work</body>")
        assert (await a.next_stanza())["body"] == "from work"

        # A domain item blocks everyone there, but never the user's own account or the server.
        await a.plugin["xep_0191"].block(["localhost"], timeout=5)
        raw_message(work, alice, "<body>from work again</body>")
        assert (await work.next_stanza())["error"]["condition"] == "service-unavailable"
        mine = await device(xmppd, alice, pa)
        raw_message(mine, a.boundjid.full, "<body>note to self</body>")
        assert (await a.next_stanza())["body"] == "note to self"
        await a.plugin["xep_0199"].ping(jid="localhost", timeout=5)
        await a.plugin["xep_0030"].get_info(jid="localhost", timeout=5)
        for client in (a, home, work, mine):
            await client.close()

    run(scenario())


def test_bad_block_commands(xmppd, account):
    (alice, pa), (bob_jid, bob_password) = account("alice"), account("bob")

    async def scenario():
        a = await device(xmppd, alice, pa)

        async def condition(payload: str, iq_type: str = "set") -> str:
            return await iq_error_condition(command_iq(a, payload, iq_type).send(timeout=5))

        assert await condition(f"<block xmlns='{NS_BLOCKING}'/>") == "bad-request"
        assert await condition(f"<block xmlns='{NS_BLOCKING}'><item jid='a@b@c'/></block>") == "jid-malformed"
        assert await condition(f"<block xmlns='{NS_BLOCKING}'><item/></block>") == "bad-request"
        assert await condition(f"<block xmlns='{NS_BLOCKING}'><item jid='x@y.example'/></block>", "get") \
            == "bad-request"
        assert await condition(f"<blocklist xmlns='{NS_BLOCKING}'/>", "set") == "bad-request"
        # Full: the whole command is refused and nothing changes.
        items = [f"u{n}@example.org" for n in range(MAX_ITEMS - 1)]
        await a.plugin["xep_0191"].block(items, timeout=5)
        # (slixmpp does not know RFC 6120's <policy-violation/>: a lean client reads the answer.)
        lean = LeanClient(alice, pa, port=xmppd.tls_port, direct_tls=True, cafile=xmppd.cert)
        await lean.login()
        refused = await lean.iq(f"<iq type='set' id='{{id}}'><block xmlns='{NS_BLOCKING}'>"
                                "<item jid='x@example.org'/><item jid='y@example.org'/></block></iq>")
        assert refused.get("type") == "error"
        assert refused.find(f"{{jabber:client}}error/{{{NS_STANZAS}}}policy-violation") is not None
        await lean.close()
        assert await blocklist(a) == set(items)
        assert "block list of" in xmppd.log() and "is full" in xmppd.log()
        # Nobody else manages alice's list.
        b = await device(xmppd, bob_jid, bob_password)
        iq = command_iq(b, f"<blocklist xmlns='{NS_BLOCKING}'/>", "get", to=alice)
        assert await iq_error_condition(iq.send(timeout=5)) == "service-unavailable"
        for client in (a, b):
            await client.close()

    run(scenario())


def test_blocking_is_advertised(xmppd, account):
    alice, pa = account("alice")

    async def scenario():
        a = await device(xmppd, alice, pa)
        info = await a.plugin["xep_0030"].get_info(jid="localhost", timeout=5)
        assert NS_BLOCKING in info["disco_info"]["features"]
        await a.close()

    run(scenario())


def test_a_block_touches_only_its_owners_traffic(xmppd, account):
    """A block by one account does not touch another's traffic."""
    (alice, pa), (bob, pb), (carol, pc) = account("alice"), account("bob"), account("carol")

    async def scenario():
        a = await device(xmppd, alice, pa)
        c = await device(xmppd, carol, pc)
        b = await device(xmppd, bob, pb)
        await a.plugin["xep_0191"].block([bob], timeout=5)
        body = secrets.token_hex(4)
        b.send_message(mto=carol, mbody=body, mtype="chat")
        assert (await c.next_stanza())["body"] == body
        for client in (a, b, c):
            await client.close()

    run(scenario())
