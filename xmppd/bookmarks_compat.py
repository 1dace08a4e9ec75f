"""XEP-0402 §5.3: bookmarks of older clients (XEP-0048 in XEP-0049 private storage) kept in step with PEP.

The urn:xmpp:bookmarks:1 node is where bookmarks live. An older client that
reads storage:bookmarks gets them converted from the node; one that writes
storage:bookmarks has the node brought to what it wrote: conferences that are
new or changed are published, those it left out are retracted (with
notifications, so newer clients see the change). Its <url/> bookmarks, which
XEP-0402 has no place for, and anything else in the element are kept in
private storage as written. Until an account has the node, storage:bookmarks
is plain private storage. Used by private_xml.py when the pep module is loaded.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lxml import etree

from .jid import JID, InvalidJID
from .stanza import STORED_PARSER, qname

if TYPE_CHECKING:
    from .pep import Pep
    from .storage import Storage

log = logging.getLogger("xmppd.bookmarks")

NS_LEGACY = "storage:bookmarks"
NS_BOOKMARKS = "urn:xmpp:bookmarks:1"
FEATURE = f"{NS_BOOKMARKS}#compat"
LEGACY_CONFERENCE = qname(NS_LEGACY, "conference")
CONFERENCE = qname(NS_BOOKMARKS, "conference")
# XEP-0402 §4: how the node is published.
NODE_OPTIONS = {"pubsub#persist_items": ["true"], "pubsub#access_model": ["whitelist"],
                "pubsub#max_items": ["max"], "pubsub#send_last_published_item": ["never"]}


def legacy_from_items(items: list[tuple[str, etree._Element]], kept: etree._Element | None) -> etree._Element:
    """<storage xmlns='storage:bookmarks'/> from (room JID, XEP-0402 <conference/>) pairs, with what the
    stored element holds besides conferences (<url/> …)."""
    storage = etree.Element(qname(NS_LEGACY, "storage"), nsmap={None: NS_LEGACY})
    for room, conference in items:
        _copy_conference(conference, NS_BOOKMARKS, etree.SubElement(storage, LEGACY_CONFERENCE, jid=room), NS_LEGACY)
    if kept is not None:
        for other in kept:
            if isinstance(other.tag, str) and other.tag != LEGACY_CONFERENCE:
                storage.append(other)
    return storage


def _copy_conference(source: etree._Element, source_ns: str, target: etree._Element, target_ns: str) -> None:
    """What both formats say of a room: name, autojoin ("1"/"true" or not), nick, password."""
    if source.get("name"):
        target.set("name", source.get("name"))
    target.set("autojoin", "true" if source.get("autojoin") in ("1", "true") else "false")
    for name in ("nick", "password"):
        text = source.findtext(qname(source_ns, name))
        if text is not None:
            etree.SubElement(target, qname(target_ns, name)).text = text


def items_from_legacy(storage: etree._Element) -> dict[str, etree._Element]:
    """Room JID -> XEP-0402 <conference/> for each conference with a valid JID in a storage:bookmarks element."""
    items = {}
    for legacy in storage.iterchildren(LEGACY_CONFERENCE):
        try:
            room = str(JID.parse(legacy.get("jid", "")).bare)
        except InvalidJID:
            log.info("storage:bookmarks with a conference JID that is not one (%r), skipped", legacy.get("jid"))
            continue
        conference = etree.Element(CONFERENCE, nsmap={None: NS_BOOKMARKS})
        _copy_conference(legacy, NS_LEGACY, conference, NS_BOOKMARKS)
        items[room] = conference
    return items


class BookmarksCompat:
    def __init__(self, storage: "Storage", pep: "Pep") -> None:
        self.storage = storage
        self.pep = pep

    async def read(self, username: str, stored: str | None) -> etree._Element | None:
        """storage:bookmarks converted from the account's node; None if it has no node."""
        if NS_BOOKMARKS not in await self.storage.pep_nodes(username):
            return None
        items = [(item.item_id, etree.fromstring(item.payload, STORED_PARSER))
                 for item in await self.storage.pep_items(username, NS_BOOKMARKS)]
        return legacy_from_items(items, etree.fromstring(stored, STORED_PARSER) if stored else None)

    async def write(self, username: str, storage: etree._Element, publisher: str) -> None:
        """Bring the node to what an older client wrote (extensions of XEP-0402 items it kept are kept)."""
        existing = {}
        has_node = NS_BOOKMARKS in await self.storage.pep_nodes(username)
        if has_node:
            existing = {item.item_id: etree.fromstring(item.payload, STORED_PARSER)
                        for item in await self.storage.pep_items(username, NS_BOOKMARKS)}
        wanted = items_from_legacy(storage)
        for room, conference in wanted.items():
            before = existing.get(room)
            if before is not None:
                extensions = before.find(qname(NS_BOOKMARKS, "extensions"))
                if extensions is not None:
                    conference.append(extensions)
                if etree.tostring(before, method="c14n") == etree.tostring(conference, method="c14n"):
                    continue
            # A new node is created as XEP-0402 wants it; an existing one keeps the configuration it has.
            await self.pep.publish(username, NS_BOOKMARKS, room, conference, {} if has_node else NODE_OPTIONS,
                                   publisher)
            has_node = True
        for room in existing.keys() - wanted.keys():
            await self.pep.retract(username, NS_BOOKMARKS, room, notify=True)
