"""The protocol logic of carbons (XEP-0280) and blocking (XEP-0191), without sockets."""

from __future__ import annotations

import asyncio
import logging

import pytest
from lxml import etree

from tests.fakes import FakeConnection
from tests.storage_fixtures import make_storage
from tests.test_modules_unit import BASE_TOML
from xmppd.aio import settle
from xmppd.blocking import command, matches, parse_items
from xmppd.carbons import is_eligible, take_private, wrap
from xmppd.config import parse_config
from xmppd.jid import JID
from xmppd.server import CORE_MODULES, Server
from xmppd.stanza import NS_STANZAS, StanzaError
from xmppd.storage import StorageError


def message(xml: str) -> etree._Element:
    return etree.fromstring(xml.replace("<message", "<message xmlns='jabber:client'", 1))


@pytest.mark.parametrize("xml, eligible", [
    ("<message type='chat'><body>hi</body></message>", True),
    ("<message type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>", True),
    ("<message type='chat'><received xmlns='urn:xmpp:receipts' id='m1'/></message>", True),
    ("<message><body>normal with a body</body></message>", True),
    ("<message type='normal'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>", True),
    ("<message><propose xmlns='urn:xmpp:jingle-message:0' id='c'/></message>", True),
    ("<message><proceed xmlns='urn:xmpp:jingle-message:0' id='c'/></message>", True),
    ("<message><accept xmlns='urn:xmpp:jingle-message:0' id='c'/></message>", True),
    ("<message><received xmlns='urn:xmpp:receipts' id='m1'/></message>", False),
    ("<message><x xmlns='urn:example'/></message>", False),
    ("<message type='headline'><body>news</body></message>", False),
    ("<message type='groupchat'><body>room</body></message>", False),
    ("<message type='error'><body>bounced</body></message>", False),
    ("<message type='chat'><body>pm</body><x xmlns='http://jabber.org/protocol/muc#user'/></message>", False),
    ("<message type='chat'><body>hi</body><private xmlns='urn:xmpp:carbons:2'/></message>", False),
    ("<message type='chat'><body>hi</body><no-copy xmlns='urn:xmpp:hints'/></message>", False),
    ("<message type='chat'><sent xmlns='urn:xmpp:carbons:2'/></message>", False),
    ("<message type='chat'><received xmlns='urn:xmpp:carbons:2'/></message>", False),
])
def test_which_messages_are_copied(xml, eligible):
    assert is_eligible(message(xml)) is eligible


def test_wrap_keeps_type_and_forwards_a_copy():
    original = message("<message type='chat' from='bob@x/home' to='alice@y/desk'><body>hi</body></message>")
    carbon = wrap("received", original, "alice@y", "alice@y/phone")
    assert (carbon.get("from"), carbon.get("to"), carbon.get("type")) == ("alice@y", "alice@y/phone", "chat")
    inner = carbon.find("{urn:xmpp:carbons:2}received/{urn:xmpp:forward:0}forwarded/{jabber:client}message")
    assert inner is not original and inner.get("from") == "bob@x/home" and inner.findtext("{jabber:client}body") == "hi"
    assert original.getparent() is None                  # the original is left as it was
    untyped = wrap("sent", message("<message><body>x</body></message>"), "alice@y", "alice@y/phone")
    assert untyped.get("type") is None


def test_take_private():
    private = message("<message type='chat'><body>x</body><private xmlns='urn:xmpp:carbons:2'/></message>")
    assert take_private(private) is True
    assert private.find("{urn:xmpp:carbons:2}private") is None and take_private(private) is False


@pytest.mark.parametrize("item, jid, blocked", [
    ("romeo@montague.net/orchard", "romeo@montague.net/orchard", True),
    ("romeo@montague.net/orchard", "romeo@montague.net/garden", False),
    ("romeo@montague.net/orchard", "romeo@montague.net", False),
    ("romeo@montague.net", "romeo@montague.net/garden", True),
    ("romeo@montague.net", "romeo@montague.net", True),
    ("romeo@montague.net", "juliet@montague.net", False),
    ("montague.net/orchard", "montague.net/orchard", True),
    ("montague.net/orchard", "romeo@montague.net/orchard", False),
    ("montague.net", "montague.net", True),
    ("montague.net", "romeo@montague.net/garden", True),
    ("montague.net", "montague.net/x", True),
    ("montague.net", "conference.montague.net", True),
    ("montague.net", "room@conference.montague.net/nick", True),
    ("montague.net", "notmontague.net", False),
    ("montague.net", "montague.net.evil", False),
])
def test_block_items_match_as_xep_0191_says(item, jid, blocked):
    assert matches({item}, JID.parse(jid)) is blocked


def test_an_empty_list_blocks_nobody():
    assert not matches(set(), JID.parse("anyone@example.org"))


def test_parse_items_prepares_jids_and_refuses_bad_ones():
    block = etree.fromstring("<block xmlns='urn:xmpp:blocking'><item jid='Romeo@Montague.NET/Orchard'/>"
                             "<item jid='EXAMPLE.org'/></block>")
    assert parse_items(block) == ["romeo@montague.net/Orchard", "example.org"]
    for bad, condition in (("<item/>", "bad-request"), ("<item jid='a@b@c'/>", "jid-malformed"),
                           ("<thing jid='a@b'/>", "bad-request")):
        with pytest.raises(StanzaError) as caught:
            parse_items(etree.fromstring(f"<block xmlns='urn:xmpp:blocking'>{bad}</block>"))
        assert caught.value.condition == condition


def test_command_element():
    element = command("unblock", ["a@b", "c"])
    assert element.tag == "{urn:xmpp:blocking}unblock"
    assert [item.get("jid") for item in element] == ["a@b", "c"]
    assert len(command("unblock", ())) == 0


# ---------------------------------------------------------------- the blocking screen, on a real Server
def test_a_failing_block_list_read_answers_the_sender_and_loses_nothing_silently(tmp_path, caplog):
    """Storage fails while a message to an offline account is screened: the sender gets
    <internal-server-error/>, and the log says what failed."""
    async def main() -> None:
        storage, cleanup = await make_storage("sqlite", tmp_path)
        try:
            server = Server(parse_config(BASE_TOML), storage)
            server.load_modules(CORE_MODULES + ("blocking",))
            alice = server.bind(FakeConnection(), "alice", "phone")
            await asyncio.sleep(0.1)                 # the session-bound hook read alice's (empty) list

            async def broken(username: str) -> list[str]:
                raise StorageError("the database is gone")

            storage.get_blocklist = broken
            message = etree.fromstring("<message xmlns='jabber:client' type='chat' to='bob@localhost' "
                                       "from='alice@localhost/phone'><body>hi</body></message>")
            await settle(server.router.from_client(alice, message))
            [reply] = alice.connection.take()
            assert reply.get("type") == "error"
            assert reply.find(f"{{jabber:client}}error/{{{NS_STANZAS}}}internal-server-error") is not None
        finally:
            await cleanup()

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert "screening a message to bob@localhost failed" in caplog.text
