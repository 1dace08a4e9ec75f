"""The one policy that decides whether a stanza matters to a person (DESIGN.md, invariant 6).

Offline storage, the durable journal, CSI buffering and (soon) push
notifications ask these functions, so that a phone is never woken for something it would not
show, nor left asleep for something it would. Extending it (a new encrypted
payload, a new call namespace) is a change to this file only.
"""

from __future__ import annotations

from lxml import etree

from .stanza import MESSAGE, PRESENCE

BODY = "{jabber:client}body"

# End-to-end encrypted payloads: their body is a placeholder or absent, yet they are messages.
ENCRYPTED = frozenset((
    "{eu.siacs.conversations.axolotl}encrypted",   # OMEMO (legacy namespace, still the most used)
    "{urn:xmpp:omemo:2}encrypted",                 # OMEMO 2 (XEP-0384)
    "{urn:xmpp:openpgp:0}openpgp",                 # OpenPGP for XMPP (XEP-0373)
    "{jabber:x:encrypted}x",                        # legacy OpenPGP (XEP-0027)
))

# XEP-0353 Jingle Message Initiation: a call starts ringing, or stops before anyone answered.
CALL = frozenset(("{urn:xmpp:jingle-message:0}propose", "{urn:xmpp:jingle-message:0}retract"))


# The rest of a call's signalling (XEP-0353): ringing, another device answered, the callee declined,
# the call ended. Nothing a sleeping phone must be woken for, but a client that is awake must see it at
# once, or it keeps ringing after the call was taken elsewhere.
CALL_SIGNALS = frozenset(f"{{urn:xmpp:jingle-message:0}}{name}"
                         for name in ("ringing", "accept", "proceed", "reject", "finish"))


# XEP-0280 carbons: a copy of a message the user sent or received elsewhere, the message inside
# <forwarded/>. A copy matters exactly as much as the message it carries.
CARBONS = frozenset(("{urn:xmpp:carbons:2}received", "{urn:xmpp:carbons:2}sent"))
FORWARDED_MESSAGE = "{urn:xmpp:forward:0}forwarded/{jabber:client}message"


def carried_message(stanza: etree._Element) -> etree._Element:
    """The message a carbon copy carries; any other stanza is itself."""
    if stanza.tag == MESSAGE:
        for child in stanza:
            if child.tag in CARBONS:
                inner = child.find(FORWARDED_MESSAGE)
                return stanza if inner is None else inner
    return stanza


def is_call_signal(stanza: etree._Element) -> bool:
    """A XEP-0353 call message of any kind (propose, ringing, proceed, accept, reject, retract, finish).
    Sent to a bare JID it rings, or stops ringing, on every device of the account."""
    return stanza.tag == MESSAGE and any(child.tag in CALL or child.tag in CALL_SIGNALS for child in stanza)


def is_important(stanza: etree._Element) -> bool:
    """A message with a body, an encrypted message, a call being offered or withdrawn, or a
    subscription request, or a carbon copy of one of these. Not: chat states, receipts, markers,
    other presence, headlines, errors."""
    stanza = carried_message(stanza)
    if stanza.tag == PRESENCE:
        return stanza.get("type") == "subscribe"
    if stanza.tag != MESSAGE or stanza.get("type") in ("error", "headline"):
        return False
    for child in stanza:
        if child.tag == BODY:
            if child.text and child.text.strip():
                return True
        elif child.tag in ENCRYPTED or child.tag in CALL:
            return True
    return False


def is_time_critical(stanza: etree._Element) -> bool:
    """Must reach a connected client without delay (CSI never holds it), though it wakes no phone."""
    stanza = carried_message(stanza)
    return stanza.tag == MESSAGE and any(child.tag in CALL_SIGNALS for child in stanza)


def is_kept(stanza: etree._Element) -> bool:
    """A message the server keeps for its recipient: stored offline when no resource can take it
    (XEP-0160), recorded durably on its way to a stream-managed one. Chat or normal, and it matters;
    never a carbon copy (the original is kept for the device it was sent to)."""
    return (stanza.tag == MESSAGE and stanza.get("type", "normal") in ("normal", "chat")
            and carried_message(stanza) is stanza and is_important(stanza))


# XEP-0334 hints a sender gives about archiving.
HINT_STORE = "{urn:xmpp:hints}store"
HINTS_NO_STORE = frozenset(("{urn:xmpp:hints}no-store", "{urn:xmpp:hints}no-permanent-store"))
# Kept in the archive besides what matters: the rest of a call's signalling (XEP-0353 asks for it, so that
# every device can show that a call was answered elsewhere, declined or missed) and chat markers
# (XEP-0333), which tell a user's other devices what was read. Receipts and chat states are not kept.
ARCHIVED_SIGNALS = CALL_SIGNALS | frozenset(f"{{urn:xmpp:chat-markers:0}}{name}"
                                            for name in ("received", "displayed", "acknowledged"))


def is_archived(stanza: etree._Element) -> bool:
    """A 1:1 message the message archive (XEP-0313) keeps for both parties: chat or normal, not marked
    no-store, not a carbon copy, and one that matters (body, encrypted payload, call offer), a call signal,
    a chat marker, or one whose sender asked for it to be stored (XEP-0334 <store/>)."""
    if stanza.tag != MESSAGE or stanza.get("type", "normal") not in ("normal", "chat"):
        return False
    wanted = False
    for child in stanza:
        if child.tag in HINTS_NO_STORE or child.tag in CARBONS:
            return False
        if child.tag == HINT_STORE or child.tag in ARCHIVED_SIGNALS:
            wanted = True
    return wanted or is_important(stanza)
