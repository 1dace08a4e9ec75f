"""RFC 6121 §2: roster get, set and remove, roster pushes, roster versioning.

Subscription states are changed only by presence subscription stanzas
(presence.py); a roster set may change a contact's name and groups, or remove
the contact, which also cancels the subscriptions both ways (§2.5.2).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from lxml import etree

from .jid import JID, InvalidJID
from .router import require_owner
from .server import SCOPE_ACCOUNT
from .stanza import StanzaError, iq_result, make, qname
from .storage.models import RosterItem
from .subscription import SubState, roster_attributes

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

NS_ROSTER = "jabber:iq:roster"
NS_ROSTERVER = "urn:xmpp:features:rosterver"
NS_PREAPPROVAL = "urn:xmpp:features:pre-approval"
QUERY = qname(NS_ROSTER, "query")
ITEM = qname(NS_ROSTER, "item")
GROUP = qname(NS_ROSTER, "group")

MAX_NAME_LENGTH = 1024      # bytes of a handle or group name we keep
MAX_GROUPS = 100            # groups per contact
MAX_ROSTER_SIZE = 5000      # contacts per account


class Roster:
    def __init__(self, server: "Server") -> None:
        self.server = server
        server.add_iq_handler(QUERY, self.handle_iq, scopes=(SCOPE_ACCOUNT,))
        server.add_stream_feature(lambda: etree.Element(qname(NS_ROSTERVER, "ver"), nsmap={None: NS_ROSTERVER}))
        server.add_stream_feature(lambda: etree.Element(qname(NS_PREAPPROVAL, "sub"), nsmap={None: NS_PREAPPROVAL}))

    async def handle_iq(self, iq: etree._Element, origin: "Session | None", to: JID):
        require_owner(origin, to)
        if iq.get("type") == "get":
            return await self._get(iq, origin)
        return await self._set(iq, origin)

    async def _get(self, iq: etree._Element, session: "Session") -> etree._Element:
        session.roster_requested = True
        version, items = await self.server.storage.get_roster(session.username)
        if iq[0].get("ver") == str(version):
            # RFC 6121 §2.6.3: the client's copy is current; changes will come as pushes.
            return iq_result(iq)
        query = etree.Element(QUERY, nsmap={None: NS_ROSTER})
        query.set("ver", str(version))
        for item in items:
            query.append(item_element(item))
        return iq_result(iq, query)

    async def _set(self, iq: etree._Element, session: "Session") -> etree._Element:
        items = iq[0].findall(ITEM)
        if len(items) != 1 or len(iq[0]) != 1:
            raise StanzaError("bad-request", "a roster set carries exactly one item")
        element = items[0]
        try:
            contact = JID.parse(element.get("jid", ""))
        except InvalidJID as error:
            raise StanzaError("jid-malformed", str(error)) from None
        contact_bare = str(contact)  # RFC 6121 keeps whatever the client names, usually a bare JID
        subscription = element.get("subscription")
        if subscription == "remove":
            await self._remove(session, contact)
            return iq_result(iq)
        if subscription not in (None, "none", "to", "from", "both") or element.get("ask") not in (None, "subscribe"):
            # Only the server changes subscription states (RFC 6121 §2.1.2.5); 'remove' is the one command.
            raise StanzaError("bad-request", "subscription can only be 'remove'")
        name = element.get("name")
        if name is not None and len(name.encode()) > MAX_NAME_LENGTH:
            raise StanzaError("not-acceptable", "the name is too long")
        groups = [g.text or "" for g in element.findall(GROUP)]
        if any(not g for g in groups) or any(len(g.encode()) > MAX_NAME_LENGTH for g in groups):
            raise StanzaError("not-acceptable", "a group name must be 1 to 1024 bytes")
        if len(set(groups)) != len(groups) or len(groups) > MAX_GROUPS:
            raise StanzaError("bad-request", "duplicate or too many groups")
        storage = self.server.storage
        # The item also holds the subscription state, which presence.py may be changing at this moment.
        async with self.server.modules["presence"].hold(session.username):
            item = await storage.get_roster_item(session.username, contact_bare)
            if item is None:
                await check_room(storage, session.username)
                item = RosterItem(jid=contact_bare)
            item.name = name or None
            item.groups = groups
            version = await storage.set_roster_item(session.username, item)
            self.push(session.username, item_element(item), version)
        return iq_result(iq)

    async def _remove(self, session: "Session", contact: JID) -> None:
        """RFC 6121 §2.5: the subscriptions end both ways, then the item goes."""
        storage = self.server.storage
        presence = self.server.modules["presence"]
        contact_bare = str(contact)
        async with presence.hold(session.username, contact):
            existing = await storage.get_roster_item(session.username, contact_bare)
            if existing is None:
                raise StanzaError("item-not-found", f"{contact_bare} is not in the roster")
            await presence.cancel_both_ways(session, existing)
            version = await storage.delete_roster_item(session.username, contact_bare)
            self.push(session.username, removed_element(contact_bare), version)

    def push(self, username: str, item: etree._Element, version: int) -> None:
        """Send a roster push to every interested resource of the user (RFC 6121 §2.1.6)."""
        bare = f"{username}@{self.server.domain}"
        for session in self.server.sessions_of(bare).values():
            if not session.roster_requested:
                continue
            push = make("iq", {"type": "set", "id": "push-" + secrets.token_hex(6), "to": session.full,
                               "from": bare})
            query = etree.SubElement(push, QUERY, nsmap={None: NS_ROSTER})
            query.set("ver", str(version))
            query.append(etree.fromstring(etree.tostring(item)))
            session.deliver(push)


async def check_room(storage, username: str) -> None:
    """MAX_ROSTER_SIZE bounds what one account stores, whether an item comes from a roster set or from a
    subscription stanza (presence.py). not-allowed: the server will not do this for anyone, and retrying
    does not help until the user removes a contact (resource-constraint would say "try later")."""
    _, items = await storage.get_roster(username)
    if len(items) >= MAX_ROSTER_SIZE:
        raise StanzaError("not-allowed", f"a roster holds at most {MAX_ROSTER_SIZE} contacts")


def item_element(item: RosterItem) -> etree._Element:
    element = etree.Element(ITEM, nsmap={None: NS_ROSTER})
    element.set("jid", item.jid)
    if item.name:
        element.set("name", item.name)
    subscription, ask = roster_attributes(SubState(item.subscription, item.ask, False, item.approved))
    element.set("subscription", subscription)
    if ask:
        element.set("ask", "subscribe")
    if item.approved:
        element.set("approved", "true")
    for group in item.groups:
        etree.SubElement(element, GROUP).text = group
    return element


def removed_element(jid: str) -> etree._Element:
    element = etree.Element(ITEM, nsmap={None: NS_ROSTER})
    element.set("jid", jid)
    element.set("subscription", "remove")
    return element


def setup(server: "Server") -> Roster:
    return Roster(server)
