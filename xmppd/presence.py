"""RFC 6121 §3–§4: presence subscriptions, broadcast, probes and directed presence.

The subscription state transitions themselves are the pure functions of
subscription.py; this module loads and stores the state, routes the stanzas
and sends the roster pushes those functions ask for.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Iterable

from lxml import etree

from . import subscription
from .aio import run_soon, settle
from .jid import JID
from .roster import check_room, item_element
from .stanza import StanzaError, make, serialize
from .storage.models import RosterItem
from .subscription import SubState

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

log = logging.getLogger("xmppd.presence")

SUBSCRIPTION_TYPES = frozenset(("subscribe", "subscribed", "unsubscribe", "unsubscribed"))
PRIORITY = "{jabber:client}priority"

# A presence is stored (last presence, pending subscription request) and copied to every subscriber, so its size
# is capped well below the stanza limit: a status line, a vCard-avatar hash, entity caps and the like fit easily.
MAX_PRESENCE_BYTES = 16 * 1024
# JIDs one session may have sent directed presence to (RFC 6121 §4.6): each is remembered until the session goes
# unavailable, and each gets a copy of the unavailable presence then.
MAX_DIRECTED_PRESENCES = 1000


class Presence:
    def __init__(self, server: "Server") -> None:
        self.server = server
        self.locks = UserLocks()
        server.on("session-ended", self._session_ended)

    @property
    def _storage(self):
        return self.server.storage

    def hold(self, username: str, contact: JID | None = None):
        """Lock the subscription state of `username` (and of `contact` if it is a local account) while it is read,
        changed, written and acted on; used by roster sets as well, since they write the same roster items."""
        usernames = [username]
        if contact is not None and contact.local is not None and self.server.is_local(contact):
            usernames.append(contact.local)
        return self.locks.hold(*usernames)

    # ================================================================ from the user's own client
    def outbound(self, session: "Session", stanza: etree._Element, to: JID | None):
        if len(serialize(stanza)) > MAX_PRESENCE_BYTES:
            # not-acceptable, as RFC 6121 §2.3.3 answers an oversized roster name: the stanza is fine XMPP, but
            # exceeds a size the server sets. An oversized error presence is dropped (bounce never answers errors).
            return self.server.router.bounce(stanza, "not-acceptable",
                                             f"a presence may have at most {MAX_PRESENCE_BYTES} bytes")
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
            if target not in session.directed and len(session.directed) >= MAX_DIRECTED_PRESENCES:
                # A local policy (XEP-0205 §4.6, recipient limits), not a passing shortage: policy-violation.
                return self.server.router.bounce(
                    stanza, "policy-violation",
                    f"directed presence goes to at most {MAX_DIRECTED_PRESENCES} addresses per session")
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
        # A session that ended while storage was asked has had its unavailable broadcast already; announcing it
        # now would leave it looking online for good.
        if session.closed:
            return
        self._broadcast(session, stanza, items)
        # Entity caps and PEP's last items (caps.py, pep.py) follow, without holding up this stanza.
        self.server.schedule(self.server.fire("presence-available", session, stanza),
                             f"presence-available hooks for {session.full}")
        if not initial:
            return
        # RFC 6121 §4.2.2: probe the contacts we are subscribed to; locally that is answering the probe.
        for item in items:
            if item.subscription in ("to", "both"):
                await self._send_presences_of(_jid(item.jid), session)
        for other in self.server.available_sessions(session.bare):
            if other is not session and other.presence is not None:
                session.deliver(_addressed(other.presence, session.full))
        # RFC 6121 §3.1.3: subscription requests that waited while the user was away.
        pending = await self._storage.list_pending_subscriptions(session.username)
        if session.closed:
            return
        for _, xml in pending:
            session.deliver_stored(xml.encode())
        # Then what else waited (offline messages). Awaited here, so that it reaches the client before
        # anything the session handles next.
        for hook in self.server.fire("initial-presence", session):
            await hook

    async def _unavailable(self, session: "Session", stanza: etree._Element) -> None:
        was_available = session.available
        session.available = False
        session.presence = None
        directed, session.directed = session.directed, set()
        if not was_available and not directed:
            return
        _, items = await self._storage.get_roster(session.username)
        successor = self.server.session(session.jid)
        if successor is None or successor is session or not successor.available:
            self._broadcast(session, stanza, items, extra=directed)
            return
        # A new session took this full JID over (resource conflict) and is online: its presence now speaks for the
        # address, so only those it does not reach may learn that the old session is gone.
        self._send(session, stanza, directed - _subscribers(items) - successor.directed)

    def _broadcast(self, session: "Session", stanza: etree._Element, items: Iterable[RosterItem],
                   extra: Iterable[str] = ()) -> None:
        """Send the user's presence to subscribers (from/both), to the user's other resources and to
        `extra` JIDs (directed presence), each with its own 'to'."""
        self._send(session, stanza, _subscribers(items) | set(extra))
        # RFC 6121 §4.2.2 / §4.4.2: every available resource of the user gets it, the sender included
        # (clients take the echo of their initial presence as "I am online now").
        for own in self.server.sessions_of(session.bare).values():
            if own.available or own is session:
                own.deliver(_addressed(stanza, own.full))

    def _send(self, session: "Session", stanza: etree._Element, targets: set[str]) -> None:
        stanza.set("from", session.full)
        targets.discard(session.bare)
        for target in targets:
            self._route(_addressed(stanza, target), _jid(target), session)

    def suspend(self, session: "Session") -> etree._Element | None:
        """A hibernated session stays resumable long after its window (push) but must not look online
        for that long: contacts get unavailable presence now. Returns the presence to restore()."""
        saved = session.presence
        if session.available or session.directed:
            unavailable = make("presence", {"type": "unavailable", "from": session.full})
            run_soon(self._unavailable(session, unavailable), f"unavailable broadcast for {session.full}")
        return saved

    def restore(self, session: "Session", presence: etree._Element | None) -> None:
        """The suspended session was resumed: it is online again, as if it had sent its presence anew
        (contacts' presence, waiting subscription requests and offline messages follow)."""
        if presence is not None:
            run_soon(self._available(session, presence), f"presence of {session.full} after resumption")

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
            target.deliver(stanza, data)
        return None

    async def _inbound_probe(self, stanza: etree._Element, user: JID) -> None:
        """Answer a probe with the user's presence if the prober is subscribed to it (RFC 6121 §4.3.2)."""
        prober = _jid(stanza.get("from"))
        item = await self._storage.get_roster_item(user.local, str(prober.bare))
        if item is None or item.subscription not in ("from", "both"):
            return
        for session in self.server.available_sessions(str(user)):
            self._route(_addressed(session.presence, str(prober)), prober, session)

    async def _send_presences_of(self, contact: JID, session: "Session") -> None:
        """The answer to a probe of a local contact, routed straight to the new session (through the
        router, whose screens may stop it: XEP-0191 blocking)."""
        if not self.server.is_local(contact):
            return
        for other in self.server.available_sessions(str(contact.bare)):
            if other.presence is not None:
                await settle(self.server.router.route(_addressed(other.presence, session.full), session.jid, other))

    # ================================================================ subscriptions
    async def _state(self, username: str, contact: str) -> tuple[RosterItem | None, SubState]:
        item = await self._storage.get_roster_item(username, contact)
        pending = {jid for jid, _ in await self._storage.list_pending_subscriptions(username)}
        if item is None:
            return None, SubState(pending_in=contact in pending)
        return item, SubState(item.subscription, item.ask, contact in pending, item.approved)

    async def _store_state(self, username: str, contact: str, item: RosterItem | None, before: SubState,
                           after: SubState, create: bool) -> tuple[RosterItem | None, int | None]:
        """Persist a transition; returns the roster item and the new roster version if the roster changed.
        Raises StanzaError, before writing anything, if a new item would overfill the roster."""
        roster_state = (after.subscription, after.pending_out, after.approved)
        creating = item is None and create and roster_state != ("none", False, False)
        if creating:
            await check_room(self._storage, username)
        if before.pending_in and not after.pending_in:
            await self._storage.remove_pending_subscription(username, contact)
        if item is None:
            if not creating:
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
        async with self.hold(username, contact):
            item, before = await self._state(username, contact_text)
            outcome = subscription.outbound(before, kind)
            try:
                # A subscribe adds the contact to the roster (RFC 6121 §3.1.2); pre-approval needs it there too.
                item, version = await self._store_state(username, contact_text, item, before, outcome.state,
                                                        create=kind in ("subscribe", "subscribed"))
            except StanzaError as error:
                await settle(self.server.router.bounce(stanza, error.condition, error.text))
                return
            if outcome.route:
                if kind == "unsubscribed" and before.from_:
                    # §3.2.2: the former subscriber learns the user is gone while still subscribed, i.e. first. One
                    # who is only denied a request never had the user's presence and learns nothing of it.
                    await self._say_gone(session.bare, contact)
                # §3.1.2: subscription stanzas leave with the user's bare JID; routed before the roster push.
                stanza.set("from", session.bare)
                stanza.set("to", contact_text)
                await settle(self.server.router.route(stanza, contact, session))
                if kind == "subscribed":
                    self._send_current_presence(session.bare, contact)  # §3.1.5: the new subscriber gets it at once
            if outcome.roster_push and item is not None and version is not None:
                self._roster_push(username, item, version)

    async def _inbound_subscription(self, stanza: etree._Element, kind: str, user: JID) -> None:
        username = user.local
        sender = _jid(stanza.get("from")).bare
        sender_text = str(sender)
        async with self.hold(username):
            if not await self._storage.user_exists(username):
                return  # RFC 6121 §8.5.1: subscription stanzas to an account that does not exist are ignored
            item, before = await self._state(username, sender_text)
            outcome = subscription.inbound(before, kind)
            stanza.set("from", sender_text)
            stanza.set("to", str(user))
            if kind == "subscribe" and outcome.state.pending_in and not before.pending_in:
                await self._storage.add_pending_subscription(username, sender_text, serialize(stanza).decode())
                if not self.server.available_sessions(str(user)):
                    self.server.fire("parked", username, stanza, None)   # push may wake a phone
            item, version = await self._store_state(username, sender_text, item, before, outcome.state,
                                                    create=False)
            if outcome.route:
                # §3.1.3: a request goes to the available resources; answers (§3.1.6, §3.2.3, §3.3.3) go to the
                # interested ones, and before the roster push that reflects them.
                data = serialize(stanza)
                for target in self.server.sessions_of(str(user)).values():
                    if target.available if kind == "subscribe" else target.roster_requested:
                        target.deliver(stanza, data)
            if outcome.roster_push and item is not None and version is not None:
                self._roster_push(username, item, version)
            if outcome.auto_reply:
                self._auto_reply(user, sender, outcome.auto_reply)
            if kind == "unsubscribe" and before.from_:
                await self._say_gone(str(user), sender)  # §3.3.3: the former subscriber gets our unavailable

    def _auto_reply(self, user: JID, contact: JID, kind: str) -> None:
        reply = make("presence", {"type": kind, "from": str(user), "to": str(contact)})
        self._route(reply, contact)
        if kind == "subscribed":
            self._send_current_presence(str(user), contact)

    async def cancel_both_ways(self, session: "Session", item: RosterItem) -> None:
        """Roster removal (RFC 6121 §2.5.2) and account removal: unsubscribe and unsubscribed go to the contact as
        needed, and a subscriber gets the user's unavailable presence before its subscription ends (§3.2.2)."""
        contact = _jid(item.jid)
        async with self.hold(session.username, contact):
            if item.subscription in ("to", "both") or item.ask:
                await settle(self._send_from_user(session, contact, "unsubscribe"))
            if item.subscription in ("from", "both"):
                await self._say_gone(session.bare, contact)
                await settle(self._send_from_user(session, contact, "unsubscribed"))
            if await self._storage.remove_pending_subscription(session.username, item.jid):
                await settle(self._send_from_user(session, contact, "unsubscribed"))

    async def _say_gone(self, user: str, contact: JID) -> None:
        """'unavailable' from every available resource of the user to a contact that stops being a subscriber."""
        for own in self.server.available_sessions(user):
            gone = make("presence", {"type": "unavailable", "from": own.full, "to": str(contact)})
            await settle(self.server.router.route(gone, contact, own))

    def _send_current_presence(self, user: str, contact: JID) -> None:
        """The user's current presence, from every available resource, to a contact that just became a subscriber
        (and PEP's last items: 'new-subscriber')."""
        for own in self.server.available_sessions(user):
            self._route(_addressed(own.presence, str(contact)), contact, own)
        self.server.schedule(self.server.fire("new-subscriber", user, contact), f"new-subscriber hooks for {user}")

    def _send_from_user(self, session: "Session", contact: JID, kind: str):
        stanza = make("presence", {"type": kind, "from": session.bare, "to": str(contact)})
        return self.server.router.route(stanza, contact, session)

    def _route(self, stanza: etree._Element, to: JID, origin: "Session | None" = None) -> None:
        """Route without waiting: presence fan-out must not hold up the stanza that caused it."""
        run_soon(self.server.router.route(stanza, to, origin), f"routing presence to {to}")

    def _roster_push(self, username: str, item: RosterItem, version: int) -> None:
        self.server.modules["roster"].push(username, item_element(item), version)


@dataclass(slots=True)
class _Lock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    owner: "asyncio.Task | None" = None
    users: int = 0  # tasks holding or waiting for the lock


class UserLocks:
    """One asyncio lock per local username, so that two stanzas cannot both read a contact's subscription state,
    decide, and write over each other's change (one would be lost).

    A stanza to a local contact is processed inbound within the task that routes it, which therefore takes the
    contact's lock as well: all locks a task needs are taken at once, in sorted order, so that two users
    subscribing to each other at the same moment cannot deadlock, and a task passes through a lock it already
    holds. (Work it hands to another task, with run_soon, is never awaited under a lock.) A lock is dropped
    as soon as no task holds or waits for it, so the table does not grow with the number of accounts.
    """

    def __init__(self) -> None:
        self._locks: dict[str, _Lock] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, *usernames: str) -> AsyncIterator[None]:
        task = asyncio.current_task()
        taken: list[tuple[str, _Lock]] = []
        try:
            for name in sorted(set(usernames)):
                entry = self._locks.get(name)
                if entry is None:
                    entry = self._locks[name] = _Lock()
                if entry.owner is task:
                    continue
                entry.users += 1
                taken.append((name, entry))
                await entry.lock.acquire()
                entry.owner = task
            yield
        finally:
            for name, entry in reversed(taken):
                if entry.owner is task:  # not so if the wait for it was cancelled
                    entry.owner = None
                    entry.lock.release()
                entry.users -= 1
                if not entry.users:
                    del self._locks[name]


def _subscribers(items: Iterable[RosterItem]) -> set[str]:
    return {item.jid for item in items if item.subscription in ("from", "both")}


def _addressed(presence: etree._Element, to: str) -> etree._Element:
    copy = deepcopy(presence)
    copy.set("to", to)
    return copy


def _jid(text: str | None) -> JID:
    return JID.parse(text or "")


def setup(server: "Server") -> Presence:
    return Presence(server)
