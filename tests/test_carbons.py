"""XEP-0280 carbons and XEP-0353 calls across devices, with real slixmpp clients, on both backends."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from tests.harness import Client, iq_error_condition, run
from tests.test_im import wait_for_own_presence

NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_JMI = "urn:xmpp:jingle-message:0"
CLIENT = "{jabber:client}"


class Device(Client):
    """A client with carbons, blocking and jingle-message support that records every message it gets."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for plugin in ("xep_0280", "xep_0191", "xep_0353", "xep_0334"):
            self.register_plugin(plugin)
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.register_handler(Callback("every message", MatchXPath(f"{CLIENT}message"), self.inbox.put_nowait))

    async def next_stanza(self, timeout: float = 5.0):
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def nothing_more(self, quiet: float = 0.5) -> None:
        with pytest.raises(asyncio.TimeoutError):
            stanza = await self.next_stanza(quiet)
            raise AssertionError(f"unexpected {stanza}")


async def device(xmppd, jid: str, password: str, *, carbons: bool = True, priority: int | None = None,
                 resource: str | None = None) -> Device:
    client = Device(xmppd, f"{jid}/{resource}" if resource else jid, password)
    await client.login()
    await client.get_roster(timeout=5)
    if carbons:
        await client.plugin["xep_0280"].enable(timeout=5)
    client.send_presence(ppriority=priority)
    await wait_for_own_presence(client)
    return client


def carbon_of(stanza, direction: str):
    """The forwarded message of a carbon (checking the wrapper as a client must), else None."""
    xml = stanza.xml
    holder = xml.find(f"{{{NS_CARBONS}}}{direction}")
    if holder is None:
        return None
    assert xml.get("from") == stanza["to"].bare, "a carbon comes from the user's own bare JID"
    return holder.find(f"{{{NS_FORWARD}}}forwarded/{CLIENT}message")


async def next_carbon(client: Device, direction: str, timeout: float = 5.0):
    stanza = await client.next_stanza(timeout)
    inner = carbon_of(stanza, direction)
    assert inner is not None, f"expected a {direction} carbon, got {stanza}"
    return inner


def raw_message(sender: Client, to: str, payload: str, message_type: str | None = "chat") -> str:
    message_id = secrets.token_hex(4)
    type_attribute = f" type='{message_type}'" if message_type else ""
    sender.send_raw(f"<message xmlns='jabber:client' to='{to}' id='{message_id}'{type_attribute}>{payload}</message>")
    return message_id


def test_received_and_sent_carbons(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        desktop = await device(xmppd, alice, pa, resource="desktop")
        phone = await device(xmppd, alice, pa, resource="phone")
        old = await device(xmppd, alice, pa, carbons=False, resource="old")
        b = await device(xmppd, bob, pb, carbons=False)

        b.send_message(mto=desktop.boundjid.full, mbody="to your desktop", mtype="chat")
        original = await desktop.next_stanza()
        assert original["body"] == "to your desktop" and carbon_of(original, "received") is None
        copy = await next_carbon(phone, "received")
        assert copy.findtext(f"{CLIENT}body") == "to your desktop"
        assert copy.get("from") == b.boundjid.full and copy.get("to") == desktop.boundjid.full

        phone.send_message(mto=bob, mbody="from my phone", mtype="chat")
        assert (await b.next_stanza())["body"] == "from my phone"
        copy = await next_carbon(desktop, "sent")
        assert copy.findtext(f"{CLIENT}body") == "from my phone"
        assert copy.get("from") == phone.boundjid.full and copy.get("to") == bob

        await phone.nothing_more()          # never a copy of its own message, nor a second one
        await old.nothing_more()            # carbons not enabled: the resource gets nothing
        for client in (desktop, phone, old, b):
            await client.close()

    run(scenario())


def test_message_to_the_bare_jid_reaches_lower_priority_resources_as_carbon(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        desktop = await device(xmppd, alice, pa, priority=5)
        phone = await device(xmppd, alice, pa, priority=0)
        away = await device(xmppd, alice, pa, priority=-1)     # never gets bare-JID messages itself
        b = await device(xmppd, bob, pb, carbons=False)
        b.send_message(mto=alice, mbody="to alice", mtype="chat")
        assert (await desktop.next_stanza())["body"] == "to alice"
        for other in (phone, away):
            copy = await next_carbon(other, "received")
            assert copy.findtext(f"{CLIENT}body") == "to alice" and copy.get("to") == alice
        await desktop.nothing_more()
        for client in (desktop, phone, away, b):
            await client.close()

    run(scenario())


def test_what_is_not_copied(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        desktop = await device(xmppd, alice, pa)
        phone = await device(xmppd, alice, pa)
        b = await device(xmppd, bob, pb, carbons=False)
        to_desktop = desktop.boundjid.full

        # <private/>: no copy, and the recipient gets the message without it (XEP-0280 §9).
        raw_message(b, to_desktop, f"<body>secret</body><private xmlns='{NS_CARBONS}'/>")
        original = await desktop.next_stanza()
        assert original["body"] == "secret"
        assert original.xml.find(f"{{{NS_CARBONS}}}private") is None
        # XEP-0334 <no-copy/>, from either side.
        raw_message(b, to_desktop, "<body>no copy</body><no-copy xmlns='urn:xmpp:hints'/>")
        assert (await desktop.next_stanza())["body"] == "no copy"
        raw_message(phone, bob, "<body>mine only</body><no-copy xmlns='urn:xmpp:hints'/>")
        raw_message(phone, bob, f"<body>private</body><private xmlns='{NS_CARBONS}'/>")
        assert (await b.next_stanza())["body"] == "mine only"
        assert (await b.next_stanza())["body"] == "private"
        # Not instant messages: headline, normal without a body, groupchat; errors never.
        raw_message(b, to_desktop, "<body>news</body>", "headline")
        raw_message(b, to_desktop, "<x xmlns='urn:example:custom'/>", None)
        assert (await desktop.next_stanza())["type"] == "headline"
        assert (await desktop.next_stanza())["type"] == "normal"
        raw_message(phone, f"nobody-{secrets.token_hex(3)}@localhost", "<body>hello?</body>")
        error = await phone.next_stanza()
        assert error["type"] == "error" and error["error"]["condition"] == "service-unavailable"
        # The message was sent, so the desktop has a copy (XEP-0280 §8), but none of the error.
        assert (await next_carbon(desktop, "sent")).findtext(f"{CLIENT}body") == "hello?"
        # A client cannot make the server copy a carbon it forged: delivered as it is, from bob (a client
        # ignores a carbon that does not come from its own account), and not copied.
        raw_message(b, to_desktop, f"<received xmlns='{NS_CARBONS}'><forwarded xmlns='{NS_FORWARD}'>"
                                   f"<message xmlns='jabber:client' type='chat'><body>forged</body></message>"
                                   f"</forwarded></received>")
        forged = await desktop.next_stanza()
        assert forged["from"] == b.boundjid and forged.xml.find(f"{{{NS_CARBONS}}}received") is not None

        # A chat state is a chat message: copied (XEP-0280 §9.2). It also marks the end of the check.
        raw_message(b, to_desktop, "<active xmlns='http://jabber.org/protocol/chatstates'/>")
        assert (await desktop.next_stanza()).xml.find("{http://jabber.org/protocol/chatstates}active") is not None
        copy = await next_carbon(phone, "received")
        assert copy.find("{http://jabber.org/protocol/chatstates}active") is not None
        await phone.nothing_more()
        await desktop.nothing_more()        # nor any sent carbon of the phone's private messages
        for client in (desktop, phone, b):
            await client.close()

    run(scenario())


def test_enable_disable_and_discovery(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        desktop = await device(xmppd, alice, pa)
        phone = await device(xmppd, alice, pa)
        b = await device(xmppd, bob, pb, carbons=False)
        info = await phone.plugin["xep_0030"].get_info(jid="localhost", timeout=5)
        assert {NS_CARBONS, "urn:xmpp:carbons:rules:0"} <= set(info["disco_info"]["features"])
        # Nobody enables carbons for someone else: answered as for an account that does not exist.
        foreign = b.make_iq_set(ito=alice)
        foreign.enable("carbon_enable")
        assert await iq_error_condition(foreign.send(timeout=5)) == "service-unavailable"
        await phone.plugin["xep_0280"].enable(timeout=5)   # enabling twice is fine (§10.1)
        await phone.plugin["xep_0280"].disable(timeout=5)
        await phone.plugin["xep_0280"].disable(timeout=5)
        b.send_message(mto=desktop.boundjid.full, mbody="one", mtype="chat")
        assert (await desktop.next_stanza())["body"] == "one"
        await phone.nothing_more()
        await phone.plugin["xep_0280"].enable(timeout=5)
        b.send_message(mto=desktop.boundjid.full, mbody="two", mtype="chat")
        assert (await next_carbon(phone, "received")).findtext(f"{CLIENT}body") == "two"
        for client in (desktop, phone, b):
            await client.close()

    run(scenario())


def test_messages_to_own_account_and_between_own_resources(xmppd, account):
    alice, pa = account("alice")

    async def scenario():
        desktop = await device(xmppd, alice, pa, priority=1)
        phone = await device(xmppd, alice, pa, priority=0)
        tablet = await device(xmppd, alice, pa, priority=0)
        # Resource to resource: the target gets it, the third resource a received carbon, the sender nothing.
        phone.send_message(mto=desktop.boundjid.full, mbody="note to desktop", mtype="chat")
        assert (await desktop.next_stanza())["body"] == "note to desktop"
        assert (await next_carbon(tablet, "received")).findtext(f"{CLIENT}body") == "note to desktop"
        await phone.nothing_more()
        for client in (desktop, phone, tablet):
            await client.close()

    run(scenario())


# ------------------------------------------------------------ XEP-0353 calls across devices

def jmi(stanza, name: str):
    return stanza.xml.find(f"{{{NS_JMI}}}{name}")


async def next_call_signal(client: Device, name: str, call_id: str, *, carbon: str | None = None):
    """The next message must carry the call element `name` (directly, or inside a carbon)."""
    stanza = await client.next_stanza()
    message = stanza.xml if carbon is None else carbon_of(stanza, carbon)
    assert message is not None, f"expected a {carbon} carbon of <{name}/>, got {stanza}"
    element = message.find(f"{{{NS_JMI}}}{name}")
    assert element is not None and element.get("id") == call_id, f"expected <{name} id='{call_id}'/>, got {stanza}"
    return message


def test_a_call_rings_everywhere_and_stops_where_it_was_not_answered(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        caller = await device(xmppd, bob, pb)
        # Two devices of different priority: a call still rings on both.
        a = await device(xmppd, alice, pa, priority=10, resource="phone-a")
        b = await device(xmppd, alice, pa, priority=0, resource="phone-b")

        # slixmpp sends call messages without a type (normal) and without a body.
        call_id = secrets.token_hex(8)
        caller.plugin["xep_0353"].propose(alice, call_id, [("urn:xmpp:jingle:apps:rtp:1", "audio")])
        for callee in (a, b):
            await next_call_signal(callee, "propose", call_id)
        # Device A answers: proceed to the caller, accept to its own account (Conversations does both).
        a.plugin["xep_0353"].proceed(bob, call_id)
        await next_call_signal(caller, "proceed", call_id)
        proceed = await next_call_signal(b, "proceed", call_id, carbon="sent")
        assert proceed.get("from") == a.boundjid.full
        a.plugin["xep_0353"].accept(alice, call_id)
        await next_call_signal(b, "accept", call_id)      # B stops ringing
        await next_call_signal(a, "accept", call_id)      # the account's resources all get it, A too
        await caller.nothing_more()
        # The caller hangs up.
        raw_message(caller, alice, f"<finish xmlns='{NS_JMI}' id='{call_id}'><reason xmlns='urn:xmpp:jingle:1'>"
                                   "<success/></reason></finish><store xmlns='urn:xmpp:hints'/>")
        for callee in (a, b):
            await next_call_signal(callee, "finish", call_id)

        # A second call is withdrawn before anyone answers: it stops ringing on both devices.
        call_id = secrets.token_hex(8)
        caller.plugin["xep_0353"].propose(alice, call_id, [("urn:xmpp:jingle:apps:rtp:1", "video")])
        for callee in (a, b):
            await next_call_signal(callee, "propose", call_id)
        caller.plugin["xep_0353"].retract(alice, call_id)
        for callee in (a, b):
            await next_call_signal(callee, "retract", call_id)

        # A third one is declined on B (type chat, as XEP-0353 0.4+ clients send it): A learns at once.
        call_id = secrets.token_hex(8)
        raw_message(caller, alice, f"<propose xmlns='{NS_JMI}' id='{call_id}'><description "
                                   "xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/></propose>"
                                   "<store xmlns='urn:xmpp:hints'/>")
        for callee in (a, b):
            await next_call_signal(callee, "propose", call_id)
        raw_message(b, bob, f"<reject xmlns='{NS_JMI}' id='{call_id}'><reason xmlns='urn:xmpp:jingle:1'><busy/>"
                            "</reason></reject><store xmlns='urn:xmpp:hints'/>")
        await next_call_signal(caller, "reject", call_id)
        await next_call_signal(a, "reject", call_id, carbon="sent")
        for client in (a, b, caller):
            await client.nothing_more()
            await client.close()

    run(scenario())


def test_a_device_with_negative_priority_rings_through_its_carbon(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        caller = await device(xmppd, bob, pb, carbons=False)
        a = await device(xmppd, alice, pa, priority=0)
        hidden = await device(xmppd, alice, pa, priority=-5)
        call_id = secrets.token_hex(8)
        caller.plugin["xep_0353"].propose(alice, call_id, [("urn:xmpp:jingle:apps:rtp:1", "audio")])
        await next_call_signal(a, "propose", call_id)
        await next_call_signal(hidden, "propose", call_id, carbon="received")
        for client in (a, hidden, caller):
            await client.close()

    run(scenario())


def test_carbons_follow_the_importance_policy_of_an_inactive_client(xmppd, account):
    """XEP-0352: a carbon of a chat state waits; a carbon of a call being answered elsewhere, or of a
    message, goes out at once, after what waited."""
    (alice, pa), (bob, pb) = account("alice"), account("bob")
    chat_states = "http://jabber.org/protocol/chatstates"

    async def scenario():
        desktop = await device(xmppd, alice, pa, priority=5)
        phone = await device(xmppd, alice, pa, priority=0)
        b = await device(xmppd, bob, pb, carbons=False)
        phone.send_raw("<inactive xmlns='urn:xmpp:csi:0'/>")
        await phone.plugin["xep_0199"].ping(jid="localhost", timeout=5)   # the nonza is handled

        raw_message(b, alice, f"<composing xmlns='{chat_states}'/>")
        assert (await desktop.next_stanza()).xml.find(f"{{{chat_states}}}composing") is not None
        await phone.nothing_more(1.0)                                      # held ([csi] max_hold is 60 s)

        call_id = secrets.token_hex(8)
        desktop.plugin["xep_0353"].proceed(bob, call_id)                   # answered on the desktop
        held = await next_carbon(phone, "received", timeout=5)
        assert held.find(f"{{{chat_states}}}composing") is not None
        await next_call_signal(phone, "proceed", call_id, carbon="sent")   # the phone stops ringing now

        raw_message(b, alice, f"<paused xmlns='{chat_states}'/>")
        await phone.nothing_more(1.0)
        b.send_message(mto=alice, mbody="are you there?", mtype="chat")
        assert (await next_carbon(phone, "received")).find(f"{{{chat_states}}}paused") is not None
        assert (await next_carbon(phone, "received")).findtext(f"{CLIENT}body") == "are you there?"
        for client in (desktop, phone, b):
            await client.close()

    run(scenario())
