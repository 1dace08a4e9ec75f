"""XEP-0160: messages for an account with no available resource are kept and handed over at login.

The router gives this module every message for an existing account that has
no available resource. What matters to a person (importance.py) of type chat
or normal is stored with a XEP-0203 delay stamp; the rest (chat states,
receipts) is dropped, as RFC 6121 §8.5.2.2.1 allows. When the account's
first resource with a non-negative priority sends initial presence, the
messages are delivered in the order they arrived and then deleted. A full
store answers the sender with <resource-constraint/> instead of dropping the
message silently.

Without XEP-0198 a message counts as handed over once it is written to the
client's socket; stream management (issue #3) will delete only on the
client's acknowledgement.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from lxml import etree

from .aio import settle
from .importance import is_important
from .jid import JID
from .stanza import NS_DELAY, qname, serialize

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

log = logging.getLogger("xmppd.offline")

NS_OFFLINE_FEATURE = "msgoffline"
# Messages read from storage at a time while handing them over, so a full store is not all in memory.
DELIVERY_BATCH = 100


class OfflineStore:
    def __init__(self, server: "Server") -> None:
        self.server = server
        self.max_messages = server.config.offline.max_messages
        self._delivering: set[str] = set()   # accounts whose messages are being handed over right now
        server.router.offline_handler = self.store
        server.add_feature(NS_OFFLINE_FEATURE)
        server.on("initial-presence", self.deliver)

    async def store(self, stanza: etree._Element, to: JID) -> None:
        """Keep a message for `to`, an existing account with no available resource."""
        if stanza.get("type", "normal") not in ("normal", "chat") or not is_important(stanza):
            return
        delay = etree.SubElement(stanza, qname(NS_DELAY, "delay"), nsmap={None: NS_DELAY})
        delay.set("from", self.server.domain)
        delay.set("stamp", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        delay.text = "Offline Storage"
        stored = await self.server.storage.store_offline(to.local, serialize(stanza).decode(),
                                                         max_messages=self.max_messages)
        if stored is None:
            log.warning("offline storage of %s@%s is full (%d messages): message from %s refused",
                        to.local, self.server.domain, self.max_messages, stanza.get("from"))
            await settle(self.server.router.bounce(
                stanza, "resource-constraint", "the recipient is offline and their message store is full"))

    async def deliver(self, session: "Session") -> None:
        """Hand the stored messages to the first resource that comes online (RFC 6121 §8.5.2.2.1 wants
        a non-negative priority), oldest first."""
        if session.priority < 0 or session.username in self._delivering:
            return
        self._delivering.add(session.username)
        storage = self.server.storage
        delivered = 0
        try:
            while not session.closed:
                batch = await storage.list_offline(session.username, limit=DELIVERY_BATCH)
                if not batch or session.closed:
                    break
                for _, xml in batch:
                    session.deliver_bytes(xml.encode())
                await storage.delete_offline(session.username, [message_id for message_id, _ in batch])
                delivered += len(batch)
        finally:
            self._delivering.discard(session.username)
        if delivered:
            log.info("offline messages for %s: %d delivered", session.full, delivered)


def setup(server: "Server") -> OfflineStore:
    return OfflineStore(server)
