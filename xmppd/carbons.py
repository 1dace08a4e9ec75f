"""XEP-0280 Message Carbons: every device of an account sees the whole conversation.

A client enables carbons for its session. From then on it gets a copy of each
chat message its account receives on another resource (<received/>), and of
each one the user sends from another resource (<sent/>), wrapped in a XEP-0297
<forwarded/>. The core tells this module about messages through two hooks:
'message-delivered' (a message for the account, with the sessions that get the
original) and 'message-sent' (a message a local session sends).

Which messages are copied follows XEP-0280 §6 (advertised as
urn:xmpp:carbons:rules:0): chat messages (chat states included, as §9.2 wants),
normal messages with a body, and XEP-0353 call messages of either type, so that
when one device answers a call the others stop ringing. Never errors,
groupchat, headlines, messages from or to a MUC occupant, nor carbons
themselves. A <private/> (urn:xmpp:carbons:2) or XEP-0334 <no-copy/> keeps a
message from being copied; the receiving side takes <private/> out before the
message is delivered.

Copies go through Session.deliver like any stanza: a hibernated stream-managed
session queues them, CSI holds or sends them as importance.py decides for the
message they carry, and push wakes a phone for a received copy but never for a
sent one.
"""

from __future__ import annotations

import logging
from copy import deepcopy
from typing import TYPE_CHECKING, Iterable

from lxml import etree

from .importance import BODY, CALL, CALL_SIGNALS, ENCRYPTED
from .jid import JID
from .router import require_owner
from .server import SCOPE_ACCOUNT, SCOPE_SERVER
from .stanza import MESSAGE, StanzaError, iq_result, make, qname

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

log = logging.getLogger("xmppd.carbons")

NS_CARBONS = "urn:xmpp:carbons:2"
NS_CARBONS_RULES = "urn:xmpp:carbons:rules:0"
NS_FORWARD = "urn:xmpp:forward:0"
NS_HINTS = "urn:xmpp:hints"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"

PRIVATE = qname(NS_CARBONS, "private")
NO_COPY = qname(NS_HINTS, "no-copy")
# A message that already is a carbon (or claims to be one) is never copied again.
WRAPPERS = frozenset(qname(NS_CARBONS, name) for name in ("received", "sent"))
MUC_USER = qname(NS_MUC_USER, "x")

RECEIVED = "received"
SENT = "sent"


def is_eligible(message: etree._Element) -> bool:
    """XEP-0280 §6: is this message copied to the account's other resources? (<private/> aside.)"""
    message_type = message.get("type", "normal")
    if message.tag != MESSAGE or message_type not in ("chat", "normal"):
        return False
    copyable = message_type == "chat"
    for child in message:
        tag = child.tag
        if tag in WRAPPERS or tag == NO_COPY or tag == PRIVATE or tag == MUC_USER:
            return False
        if tag == BODY or tag in ENCRYPTED or tag in CALL or tag in CALL_SIGNALS:
            copyable = True
    return copyable


def wrap(direction: str, message: etree._Element, account: str, to: str) -> etree._Element:
    """The carbon of `message` for the resource `to` of `account` (a bare JID): <received/> or <sent/>
    around a <forwarded/> copy, of the same type as the message (XEP-0280 §7, §8)."""
    carbon = make("message", {"from": account, "to": to, "type": message.get("type")})
    holder = etree.SubElement(carbon, qname(NS_CARBONS, direction), nsmap={None: NS_CARBONS})
    forwarded = etree.SubElement(holder, qname(NS_FORWARD, "forwarded"), nsmap={None: NS_FORWARD})
    forwarded.append(deepcopy(message))
    return carbon


def take_private(message: etree._Element) -> bool:
    """Remove a <private/> from a message about to be delivered (XEP-0280 §9); whether it had one."""
    private = [child for child in message if child.tag == PRIVATE]
    for child in private:
        message.remove(child)
    return bool(private)


class Carbons:
    def __init__(self, server: "Server") -> None:
        self.server = server
        # Sessions that enabled carbons. A session keeps its Session object through a resumption
        # (XEP-0198), and with it its carbons; it leaves this set when it ends.
        self.enabled: set["Session"] = set()
        server.add_iq_handler(qname(NS_CARBONS, "enable"), self._enable, scopes=(SCOPE_SERVER, SCOPE_ACCOUNT))
        server.add_iq_handler(qname(NS_CARBONS, "disable"), self._disable, scopes=(SCOPE_SERVER, SCOPE_ACCOUNT))
        server.add_feature(NS_CARBONS, scopes=(SCOPE_SERVER, SCOPE_ACCOUNT))
        server.add_feature(NS_CARBONS_RULES, scopes=(SCOPE_SERVER, SCOPE_ACCOUNT))
        server.on("message-delivered", self._delivered)
        server.on("message-sent", self._sent)
        server.on("session-ended", self.enabled.discard)

    # ------------------------------------------------------------ enable / disable (XEP-0280 §4, §5)
    def _enable(self, iq: etree._Element, origin: "Session | None", to: JID) -> etree._Element:
        self._require_own_session(iq, origin, to)
        self.enabled.add(origin)
        log.debug("carbons enabled for %s", origin.full)
        return iq_result(iq)

    def _disable(self, iq: etree._Element, origin: "Session | None", to: JID) -> etree._Element:
        self._require_own_session(iq, origin, to)
        self.enabled.discard(origin)
        log.debug("carbons disabled for %s", origin.full)
        return iq_result(iq)

    @staticmethod
    def _require_own_session(iq: etree._Element, origin: "Session | None", to: JID) -> None:
        # §4.1: a request that is not from a client of this server gets <not-allowed/>. One addressed to
        # another account is answered as for an account that does not exist.
        if origin is None:
            raise StanzaError("not-allowed", "carbons are enabled by a client for its own session")
        require_owner(origin, to)
        if iq.get("type") != "set":
            raise StanzaError("bad-request", "carbons are enabled and disabled with an iq of type 'set'")

    # ------------------------------------------------------------ the copies
    def _delivered(self, message: etree._Element, username: str, sessions: Iterable["Session"]) -> None:
        """Received carbons (§7): for every carbons-enabled resource of the recipient that does not get
        the message itself, and is not the resource that sent it (a message to the user's own account)."""
        if take_private(message) or not is_eligible(message):
            return
        account = f"{username}@{self.server.domain}"
        targets = [session for session in self.server.sessions_of(account).values()
                   if session in self.enabled and session not in sessions and session.full != message.get("from")]
        self._send(RECEIVED, message, account, targets)

    def _sent(self, origin: "Session", message: etree._Element, to: JID) -> None:
        """Sent carbons (§8): for the sender's other carbons-enabled resources. A message to the user's
        own account reaches those as a received carbon instead (or as the message itself)."""
        if to.bare == origin.bare_jid or not is_eligible(message):
            return
        targets = [session for session in self.server.sessions_of(origin.bare).values()
                   if session in self.enabled and session is not origin]
        self._send(SENT, message, origin.bare, targets)

    @staticmethod
    def _send(direction: str, message: etree._Element, account: str, targets: list["Session"]) -> None:
        for session in targets:
            session.deliver(wrap(direction, message, account, session.full))


def setup(server: "Server") -> Carbons:
    return Carbons(server)
