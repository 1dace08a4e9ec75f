"""The one "does this matter to a person" policy, stanza by stanza."""

from __future__ import annotations

import pytest
from lxml import etree

from xmppd.importance import carried_message, is_call_signal, is_important, is_kept, is_time_critical


def stanza(xml: str):
    return etree.fromstring(xml.replace("<message", "<message xmlns='jabber:client'", 1)
                            .replace("<presence", "<presence xmlns='jabber:client'", 1))


@pytest.mark.parametrize("xml, important", [
    ("<message type='chat'><body>hi</body></message>", True),
    ("<message><body>normal type too</body></message>", True),
    ("<message type='groupchat'><body>in a room</body></message>", True),
    ("<message type='chat'><body>   </body></message>", False),
    ("<message type='chat'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>", True),
    ("<message type='chat'><encrypted xmlns='urn:xmpp:omemo:2'/></message>", True),
    ("<message type='chat'><openpgp xmlns='urn:xmpp:openpgp:0'>x</openpgp></message>", True),
    ("<message><propose xmlns='urn:xmpp:jingle-message:0' id='c1'/></message>", True),
    ("<message><retract xmlns='urn:xmpp:jingle-message:0' id='c1'/></message>", True),
    ("<message><accept xmlns='urn:xmpp:jingle-message:0' id='c1'/></message>", False),
    ("<message type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>", False),
    ("<message><received xmlns='urn:xmpp:receipts' id='m1'/></message>", False),
    ("<message><displayed xmlns='urn:xmpp:chat-markers:0' id='m1'/></message>", False),
    ("<message type='headline'><body>news</body></message>", False),
    ("<message type='error'><body>bounced</body></message>", False),
    ("<presence type='subscribe'/>", True),
    ("<presence/>", False),
    ("<presence type='unavailable'/>", False),
    ("<presence type='subscribed'/>", False),
])
def test_is_important(xml, important):
    assert is_important(stanza(xml)) is important


@pytest.mark.parametrize("name", ["ringing", "accept", "proceed", "reject", "finish"])
def test_call_signalling_after_the_offer_is_time_critical_but_wakes_nobody(name):
    signal = stanza(f"<message><{name} xmlns='urn:xmpp:jingle-message:0' id='c1'/></message>")
    assert is_time_critical(signal) and not is_important(signal)


def test_ordinary_stanzas_are_not_time_critical():
    assert not is_time_critical(stanza("<message type='chat'><body>hi</body></message>"))
    assert not is_time_critical(stanza("<presence/>"))


def carbon(direction: str, inner: str):
    """A XEP-0280 copy of `inner` (a message without its xmlns) as the server sends it."""
    inner = inner.replace("<message", "<message xmlns='jabber:client'", 1)
    return stanza(f"<message from='me@x' to='me@x/phone' type='chat'><{direction} xmlns='urn:xmpp:carbons:2'>"
                  f"<forwarded xmlns='urn:xmpp:forward:0'>{inner}</forwarded></{direction}></message>")


@pytest.mark.parametrize("direction", ["received", "sent"])
def test_a_carbon_matters_as_much_as_the_message_it_carries(direction):
    assert is_important(carbon(direction, "<message type='chat'><body>hi</body></message>"))
    chat_state = "<message type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
    assert not is_important(carbon(direction, chat_state))
    accept = carbon(direction, "<message type='chat'><accept xmlns='urn:xmpp:jingle-message:0' id='c1'/></message>")
    assert is_time_critical(accept) and not is_important(accept)
    # Never kept: the original is, for the device it went to.
    assert not is_kept(carbon(direction, "<message type='chat'><body>hi</body></message>"))


def test_carried_message_of_a_carbon_and_of_anything_else():
    plain = stanza("<message type='chat'><body>hi</body></message>")
    assert carried_message(plain) is plain
    copy = carbon("sent", "<message type='chat' to='you@y'><body>hi</body></message>")
    assert carried_message(copy).get("to") == "you@y"
    hollow = stanza("<message><sent xmlns='urn:xmpp:carbons:2'/></message>")
    assert carried_message(hollow) is hollow


@pytest.mark.parametrize("name", ["propose", "ringing", "accept", "proceed", "reject", "retract", "finish"])
def test_every_call_message_is_a_call_signal(name):
    assert is_call_signal(stanza(f"<message type='chat'><{name} xmlns='urn:xmpp:jingle-message:0' id='c1'/></message>"))


def test_other_messages_are_no_call_signals():
    assert not is_call_signal(stanza("<message type='chat'><body>hi</body></message>"))
    assert not is_call_signal(stanza("<presence/>"))
