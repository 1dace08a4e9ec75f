"""XEP-0160: messages for an account with no available resource are kept and handed over at login.

The router gives this module every message for an existing account that has
no available resource. What importance.is_kept() accepts (chat or normal, and
it matters to a person) is recorded in the journal (journal.py), with the
account's quota; the rest (chat states, receipts) is dropped, as RFC 6121
§8.5.2.2.1 allows. A full store answers the sender with
<resource-constraint/> instead of dropping the message silently.

The journal's rows are also where messages on their way to stream-managed
sessions live until the client acknowledges them; a row that no session holds
is an offline message. When the account's first resource with a non-negative
priority sends initial presence, they are delivered in the order they
arrived, with XEP-0203 delay stamps. A row is deleted when a stream-managed
client acknowledges it, or, for a client without stream management, once it
is written to the socket.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from lxml import etree

from .aio import run_soon, settle
from .importance import is_kept
from .jid import JID
from .stanza import serialize, with_delay

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
        self.journal = server.journal
        self.configure(server.config)
        server.on("config-reloaded", self.configure)
        # Accounts whose messages are being handed over right now -> whether another pass was asked for.
        self._running: dict[str, bool] = {}
        server.router.offline_handler = self.store
        server.add_feature(NS_OFFLINE_FEATURE)
        server.on("initial-presence", self.deliver)

    def configure(self, config) -> None:
        """[offline] max_messages, for messages stored from now on (at start and on reload)."""
        self.max_messages = config.offline.max_messages

    async def store(self, stanza: etree._Element, to: JID) -> None:
        """Keep a message for `to`, an existing account with no available resource."""
        if not is_kept(stanza):
            return
        entry = self.journal.add(to.local, serialize(stanza), datetime.now(timezone.utc),
                                 max_messages=self.max_messages)
        if not await entry.stored:
            log.warning("offline storage of %s@%s is full (%d messages): message from %s refused",
                        to.local, self.server.domain, self.max_messages, stanza.get("from"))
            await settle(self.server.router.bounce(
                stanza, "resource-constraint", "the recipient is offline and their message store is full"))
            return
        self.server.fire("parked", to.local, stanza, None)   # push may wake a phone
        # A resource may have come online while the message was being stored: it must not wait for the
        # next login.
        self.hand_over(str(to))

    async def deliver(self, session: "Session") -> None:
        """Hand the account's offline messages to `session`, oldest first (RFC 6121 §8.5.2.2.1 wants a
        resource with a non-negative priority). One hand-over per account at a time; a call while one
        runs makes it look again once it is done, so nothing stored meanwhile is left behind."""
        username = session.username
        if session.priority < 0 or session.closed:
            return
        if username in self._running:
            self._running[username] = True
            return
        self._running[username] = False
        delivered = 0
        try:
            while True:
                delivered += await self._deliver_once(session)
                if session.closed or not self._running[username]:
                    break
                self._running[username] = False
        finally:
            del self._running[username]
        if delivered:
            log.info("offline messages for %s: %d delivered", session.full, delivered)

    async def _deliver_once(self, session: "Session") -> int:
        await self.journal.barrier()   # messages recorded before this moment are readable
        delivered = 0
        after = 0
        while not session.closed:
            # Each row is checked, adopted and claimed (or finished) before the next await, as
            # read_queued() requires, so that no other reader hands it out too.
            rows = await self.journal.read_queued(session.username, after=after, limit=DELIVERY_BATCH)
            for row_id, xml, received_at in rows:
                after = row_id
                if session.closed:
                    break
                if self.journal.in_hand(row_id):
                    continue   # on its way to another session, or delivered already
                entry = self.journal.adopt(session.username, row_id, received_at)
                session.deliver_stored(with_delay(xml.encode(), received_at, self.server.domain,
                                                  "Offline Storage"), entry)
                delivered += 1
            if len(rows) < DELIVERY_BATCH:
                break
        return delivered

    def hand_over(self, bare: str) -> None:
        """Offline messages appeared while the account may have an available resource (stored while one
        came online, or left unacknowledged by a stream-managed session that ended): give them to the
        best available resource now, if there is one."""
        candidates = [s for s in self.server.available_sessions(bare) if s.priority >= 0]
        if candidates:
            best = max(candidates, key=lambda s: s.priority)
            run_soon(self.deliver(best), f"offline messages for {best.full}")


def setup(server: "Server") -> OfflineStore:
    return OfflineStore(server)
