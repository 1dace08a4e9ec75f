"""RFC 6121 §3–§4: presence subscriptions, broadcast, probes and directed presence.

The subscription state transitions themselves are the pure functions of
subscription.py; this module loads and stores the state, routes the stanzas
and sends the roster pushes those functions ask for.
"""

from __future__ import annotations

import logging
from copy import deepcopy
from typing import TYPE_CHECKING, Iterable

from lxml import etree

from . import subscription
from .aio import run_soon, settle
from .jid import JID
from .stanza import PRESENCE, make, serialize
from .storage.models import RosterItem
from .subscription import SubState

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

log = logging.getLogger("xmppd.presence")

SUBSCRIPTION_TYPES = frozenset(("subscribe", "subscribed", "unsubscribe", "unsubscribed"))
PRIORITY = "{jabber:client}priority"


class Presence:
    def __init__(self, server: "Server") -> None:
        self.server = server
        server.on("session-ended", self._session_ended)

    @property
    def _storage(self):
        return self.server.storage

    # ================================================================ from the user's own client
    def outbound(self, session: "Session", stanza: etree._Element, to: JID | None):
        presence_type = stanza.get("type")
        if presence_type in SUBSCRIPTION_TYPES:
            if to is None:
                return self.server.router.bounce(stanza, "bad-request", "a subscription stanza needs a 'to'")
            return self._outbound_subscription(session, stanza, presence_type, to.bare)
        if presence_type == "probe":
            return None  # probes are the server's business (RFC 6121 §4.3)
        if presence_type not in (None, "unavailable", "error"):
            return self.server.router.bounce(stanza, "bad-request", f"unknown presence type {presence_type!r}")
        if to is not None:
            return self._directed(session, stanza, to)
        if presence_type == "error":
            return None
        if presence_type is None:
            return self._available(session, stanza)
        return self._unavailable(session, stanza)

    def _directed(self, session: "Session", stanza: etree._Element, to: JID):
        """RFC 6121 §4.6: presence to one entity, remembered so it gets unavailable when we go."""
        target = str(to)
        if stanza.get("type") is None and session.available:
            session.directed.add(target)
        elif stanza.get("type") == "unavailable":
            session.directed.discard(target)
        return self.server.router.route(stanza, to, session)

    async def _available(self, session: "Session", stanza: etree._Element) -> None:
        try:
            priority = int(stanza.findtext(PRIORITY) or 0)
        except ValueError:
            priority = 0
        initial = not session.available
        session.priority = max(-128, min(127, priority))
        session.available = True
        session.presence = stanza
        _, items = await self._storage.get_roster(session.username)
        self._broadcast(session, stanza, items)
        if not initial:
            return
        # RFC 6121 §4.2.2: probe the contacts we are subscribed to; locally that is answering the probe.
        for item in items:
            if item.subscription in ("to", "both"):
                self._send_presences_of(_jid(item.jid), session)
        for other in self.server.available_sessions(session.bare):
            if other is not session and other.presence is not None:
                session.deliver(_addressed(other.presence, session.full))
        # RFC 6121 §3.1.3: subscription requests that waited while the user was away.
        for _, xml in await self._storage.list_pending_subscriptions(session.username):
            session.deliver(etree.fromstring(xml))

    async def _unavailable(self, session: "Session", stanza: etree._Element) -> None:
        was_available = session.available
        session.available = False
        session.presence = None
        directed, session.directed = session.directed, set()
        if not was_available and not directed:
            return
        _, items = await self._storage.get_roster(session.username)
        self._broadcast(session, stanza, items, extra=directed)

    def _broadcast(self, session: "Session", stanza: etree._Element, items: Iterable[RosterItem],
                   extra: Iterable[str] = ()) -> None:
        """Send the user's presence to subscribers (from/both), to the user's other resources and to
        `extra` JIDs (directed presence), each with its own 'to'."""
        stanza.set("from", session.full)
        targets = {item.jid for item in items if item.subscription in ("from", "both")}
        targets.update(extra)
        targets.discard(session.bare)
        for target in targets:
            self._route(_addressed(stanza, target), _jid(target), session)
        # RFC 6121 §4.2.2 / §4.4.2: every available resource of the user gets it, the sender included
        # (clients take the echo of their initial presence as "I am online now").
        for own in self.server.sessions_of(session.bare).values():
            if own.available or own is session:
                own.deliver(_addressed(stanza, own.full))

    def _session_ended(self, session: "Session") -> None:
        """RFC 6121 §4.5.1: a session that ends without saying so goes unavailable."""
        if not session.available and not session.directed:
            return
        unavailable = make("presence", {"type": "unavailable", "from": session.full})
        run_soon(self._unavailable(session, unavailable), f"unavailable broadcast for {session.full}")

    # ================================================================ to a local user
    def inbound(self, stanza: etree._Element, to: JID):
        presence_type = stanza.get("type")
        if presence_type in SUBSCRIPTION_TYPES:
            return self._inbound_subscription(stanza, presence_type, to.bare)
        if presence_type == "probe":
            return self._inbound_probe(stanza, to.bare)
        if presence_type not in (None, "unavailable", "error"):
            return None
        if to.resource is not None:
            target = self.server.session(to)
            if target is not None:
                target.deliver(stanza)
            return None
        data = serialize(stanza)
        for target in self.server.available_sessions(str(to)):
            target.deliver_bytes(data)
        return None

    async def _inbound_probe(self, stanza: etree._Element, user: JID) -> None:
        """Answer a probe with the user's presence if the prober is subscribed to it (RFC 6121 §4.3.2)."""
        prober = _jid(stanza.get("from"))
        item = await self._storage.get_roster_item(user.local, str(prober.bare))
        if item is None or item.subscription not in ("from", "both"):
            return
        for session in self.server.available_sessions(str(user)):
            self._route(_addressed(session.presence, str(prober)), prober, session)

    def _send_presences_of(self, contact: JID, session: "Session") -> None:
        """The answer to a probe of a local contact, delivered straight to the new session."""
        if not self.server.is_local(contact):
            return
        for other in self.server.available_sessions(str(contact.bare)):
            if other.presence is not None:
                session.deliver(_addressed(other.presence, session.full))

    # ================================================================ subscriptions
    async def _state(self, username: str, contact: str) -> tuple[RosterItem | None, SubState]:
        item = await self._storage.get_roster_item(username, contact)
        pending = {jid for jid, _ in await self._storage.list_pending_subscriptions(username)}
        if item is None:
            return None, SubState(pending_in=contact in pending)
        return item, SubState(item.subscription, item.ask, contact in pending, item.approved)

    async def _store_state(self, username: str, contact: str, item: RosterItem | None, before: SubState,
                           after: SubState, create: bool) -> tuple[RosterItem | None, int | None]:
        """Persist a transition; returns the roster item and the new roster version if the roster changed."""
        if before.pending_in and not after.pending_in:
            await self._storage.remove_pending_subscription(username, contact)
        roster_state = (after.subscription, after.pending_out, after.approved)
        if item is None:
            if not create or roster_state == ("none", False, False):
                return None, None
            item = RosterItem(jid=contact)
        elif roster_state == (item.subscription, item.ask, item.approved):
            return item, None
        item.subscription, item.ask, item.approved = roster_state
        return item, await self._storage.set_roster_item(username, item)

    async def _outbound_subscription(self, session: "Session", stanza: etree._Element, kind: str,
                                     contact: JID) -> None:
        username = session.username
        contact_text = str(contact)
        item, before = await self._state(username, contact_text)
        outcome = subscription.outbound(before, kind)
        # A subscribe adds the contact to the roster (RFC 6121 §3.1.2); pre-approval needs it there too.
        item, version = await self._store_state(username, contact_text, item, before, outcome.state,
                                                create=kind in ("subscribe", "subscribed"))
        if outcome.route:
            if kind == "unsubscribed":
                # §3.2.2: the former subscriber learns the user is gone while still subscribed, i.e. first.
                for own in self.server.available_sessions(session.bare):
                    gone = make("presence", {"type": "unavailable", "from": own.full, "to": contact_text})
                    await settle(self.server.router.route(gone, contact, own))
            # §3.1.2: subscription stanzas leave with the user's bare JID; routed before the roster push.
            stanza.set("from", session.bare)
            stanza.set("to", contact_text)
            await settle(self.server.router.route(stanza, contact, session))
            if kind == "subscribed":
                # §3.1.5: the new subscriber gets the user's current presence at once.
                for own in self.server.available_sessions(session.bare):
                    self._route(_addressed(own.presence, contact_text), contact, own)
        if outcome.roster_push and item is not None and version is not None:
            self._roster_push(username, item, version)

    async def _inbound_subscription(self, stanza: etree._Element, kind: str, user: JID) -> None:
        username = user.local
        sender = _jid(stanza.get("from")).bare
        sender_text = str(sender)
        if not await self._storage.user_exists(username):
            return  # RFC 6121 §8.5.1: subscription stanzas to an account that does not exist are ignored
        item, before = await self._state(username, sender_text)
        outcome = subscription.inbound(before, kind)
        stanza.set("from", sender_text)
        stanza.set("to", str(user))
        if kind == "subscribe" and outcome.state.pending_in and not before.pending_in:
            await self._storage.add_pending_subscription(username, sender_text, serialize(stanza).decode())
        item, version = await self._store_state(username, sender_text, item, before, outcome.state, create=False)
        if outcome.route:
            # §3.1.3: a request goes to the available resources; answers (§3.1.6, §3.2.3, §3.3.3) go to the
            # interested ones, and before the roster push that reflects them.
            data = serialize(stanza)
            for target in self.server.sessions_of(str(user)).values():
                if target.available if kind == "subscribe" else target.roster_requested:
                    target.deliver_bytes(data)
        if outcome.roster_push and item is not None and version is not None:
            self._roster_push(username, item, version)
        if outcome.auto_reply:
            self._auto_reply(user, sender, outcome.auto_reply)
        if kind == "unsubscribe" and before.subscription in ("from", "both"):
            # §3.3.3: the former subscriber gets our unavailable presence.
            for own in self.server.available_sessions(str(user)):
                gone = make("presence", {"type": "unavailable", "from": own.full, "to": sender_text})
                self._route(gone, sender, own)

    def _auto_reply(self, user: JID, contact: JID, kind: str) -> None:
        reply = make("presence", {"type": kind, "from": str(user), "to": str(contact)})
        self._route(reply, contact)
        if kind == "subscribed":
            for own in self.server.available_sessions(str(user)):
                self._route(_addressed(own.presence, str(contact)), contact, own)

    async def cancel_both_ways(self, session: "Session", item: RosterItem) -> None:
        """Roster removal (RFC 6121 §2.5.2): unsubscribe and unsubscribed go to the contact as needed."""
        contact = _jid(item.jid)
        if item.subscription in ("to", "both") or item.ask:
            await settle(self._send_from_user(session, contact, "unsubscribe"))
        if item.subscription in ("from", "both"):
            await settle(self._send_from_user(session, contact, "unsubscribed"))
        if await self._storage.remove_pending_subscription(session.username, item.jid):
            await settle(self._send_from_user(session, contact, "unsubscribed"))

    def _send_from_user(self, session: "Session", contact: JID, kind: str):
        stanza = make("presence", {"type": kind, "from": session.bare, "to": str(contact)})
        return self.server.router.route(stanza, contact, session)

    def _route(self, stanza: etree._Element, to: JID, origin: "Session | None" = None) -> None:
        """Route without waiting: presence fan-out must not hold up the stanza that caused it."""
        run_soon(self.server.router.route(stanza, to, origin), f"routing presence to {to}")

    def _roster_push(self, username: str, item: RosterItem, version: int) -> None:
        from .roster import item_element

        self.server.modules["roster"].push(username, item_element(item), version)


def _addressed(presence: etree._Element, to: str) -> etree._Element:
    copy = deepcopy(presence)
    copy.set("to", to)
    return copy


def _jid(text: str | None) -> JID:
    return JID.parse(text or "")


def setup(server: "Server") -> Presence:
    return Presence(server)
