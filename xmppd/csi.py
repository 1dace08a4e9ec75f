"""XEP-0352 Client State Indication: what does not matter waits while the client is inactive.

A client (typically a phone whose screen went off) sends <inactive/>; from then
on its session holds presence updates, chat states, delivery receipts, chat
markers and PEP notifications instead of writing them, so the radio can sleep.
Superseded ones are dropped on the way (the rules are at hold_key()). What
matters goes out at once, after everything held, so nothing is reordered:
what importance.is_important() says matters (a message with a body, an
encrypted message, a call, a subscription request; DESIGN.md invariant 6),
what importance.is_time_critical() says cannot wait (the rest of a call's
signalling), plus any iq and any error, which must not be delayed. Everything held also
goes out when the oldest of it has waited [csi] max_hold seconds, when
[csi] max_buffered stanzas are held, and when the client sends <active/>.

CSIBuffer is the policy, with no I/O and no reactor; ClientStateIndication is
the module: the nonza handlers, the <csi/> stream feature, the per-session
outbound filter and one timer per inactive session. Stream management
(stream_mgmt.py) calls ClientStateIndication.flush(session) before a
resumption hands the unacknowledged queue over. A hibernated session stays
inactive: what does not matter is still collapsed while the phone is away.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from lxml import etree

from .aio import reactor_clock
from .importance import is_important, is_time_critical
from .stanza import IQ, MESSAGE, NS_CLIENT, NS_DELAY, PRESENCE, qname

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

log = logging.getLogger("xmppd.csi")

NS_CSI = "urn:xmpp:csi:0"
ACTIVE = qname(NS_CSI, "active")
INACTIVE = qname(NS_CSI, "inactive")

NS_CHATSTATES = "http://jabber.org/protocol/chatstates"   # XEP-0085
NS_MARKERS = "urn:xmpp:chat-markers:0"                    # XEP-0333
NS_PUBSUB_EVENT = "http://jabber.org/protocol/pubsub#event"
PUBSUB_EVENT = qname(NS_PUBSUB_EVENT, "event")
PUBSUB_ITEMS = qname(NS_PUBSUB_EVENT, "items")
PUBSUB_ITEM = qname(NS_PUBSUB_EVENT, "item")
PUBSUB_RETRACT = qname(NS_PUBSUB_EVENT, "retract")
THREAD = qname(NS_CLIENT, "thread")

CHAT_STATES = frozenset(("active", "composing", "paused", "inactive", "gone"))
MARKERS = frozenset(("received", "displayed", "acknowledged"))   # not 'markable': that rides on a body

# Children that say nothing the newest stanza of its kind would not: storage hints (XEP-0334), stanza and
# origin ids (XEP-0359), delay stamps added on the way (XEP-0203). A message with anything else is held as is.
NEUTRAL_NAMESPACES = frozenset(("urn:xmpp:hints", "urn:xmpp:sid:0", NS_DELAY))

# PEP nodes whose specification keeps one current item, so the newest notification says everything: only the
# newest per publisher and node is kept, whatever its item id. Other nodes may hold many items (XEP-0402
# bookmarks: one per room), so there only a notification about the same item id is superseded.
SINGLE_ITEM_NODES = frozenset((
    "http://jabber.org/protocol/tune",            # XEP-0118
    "http://jabber.org/protocol/mood",            # XEP-0107
    "http://jabber.org/protocol/activity",        # XEP-0108
    "http://jabber.org/protocol/geoloc",          # XEP-0080
    "http://jabber.org/protocol/nick",            # XEP-0172
    "urn:xmpp:avatar:metadata",                   # XEP-0084 (item id: the hash of the current avatar)
    "eu.siacs.conversations.axolotl.devicelist",  # OMEMO (legacy namespace)
    "urn:xmpp:omemo:2:devices",                   # OMEMO 2 (XEP-0384)
))

# Bytes held for one client at most, whatever [csi] max_buffered says: a contact sending large presences
# must not make an idle session expensive (DESIGN.md invariant 4).
MAX_BUFFERED_BYTES = 1 << 20


class _Urgent:
    def __repr__(self) -> str:
        return "URGENT"


URGENT: Any = _Urgent()
"""hold_key() for a stanza that must go out now, after everything held."""


def hold_key(stanza: etree._Element) -> Hashable | None:
    """How an inactive client's buffer treats `stanza`: URGENT (write it now, after everything held),
    None (hold it, never drop it), or a key (hold it in place of an earlier stanza with the same key).

    Keys always contain the sender's full JID (and for messages the type and thread), so a contact's
    resources, MUC occupants and conversations never supersede one another:

    - presence available/unavailable: the newest per sender, a contact's current state. Subscription
      answers (subscribed, unsubscribe, unsubscribed) are held, never merged.
    - chat state alone (XEP-0085): the newest per sender, type and thread; "composing" then "paused"
      means "paused".
    - chat marker alone (XEP-0333): the newest per sender, type, thread and marker kind. A marker says
      "every message up to and including this id", and markers only move forward, so a newer
      'displayed' covers an older 'displayed'; a 'received' is never merged with a 'displayed'.
    - delivery receipt (XEP-0184): held, never merged. Each acknowledges one message id, and a
      receipt says nothing about earlier messages.
    - PEP notification (one item or one retraction): the newest per publisher and node for nodes that
      keep a single item (SINGLE_ITEM_NODES), else per publisher, node and item id.
    - anything else that does not matter (a bodiless message with other payloads, a headline, several
      payloads at once): held as is.
    """
    tag = stanza.tag
    if tag == IQ or stanza.get("type") == "error" or is_important(stanza) or is_time_critical(stanza):
        return URGENT
    sender = stanza.get("from", "")
    if tag == PRESENCE:
        return ("presence", sender) if stanza.get("type") in (None, "unavailable") else None
    if tag == MESSAGE:
        return _message_key(stanza, sender)
    return URGENT   # not a stanza the buffer knows: never delay it


def _message_key(message: etree._Element, sender: str) -> Hashable | None:
    thread = None
    payload = None
    for child in message:
        tag = child.tag
        if not isinstance(tag, str):
            continue
        if tag == THREAD:
            thread = child.text or ""
            continue
        if etree.QName(tag).namespace in NEUTRAL_NAMESPACES:
            continue
        if payload is not None:
            return None   # two payloads: neither alone supersedes the stanza
        payload = child
    if payload is None:
        return None
    qname_ = etree.QName(payload)
    namespace, name = qname_.namespace, qname_.localname
    message_type = message.get("type", "normal")
    if namespace == NS_CHATSTATES and name in CHAT_STATES:
        return ("chatstate", sender, message_type, thread)
    if namespace == NS_MARKERS and name in MARKERS:
        return ("marker", name, sender, message_type, thread)
    if payload.tag == PUBSUB_EVENT:
        return _pep_key(payload, sender)
    return None


def _pep_key(event: etree._Element, sender: str) -> Hashable | None:
    children = [child for child in event if isinstance(child.tag, str)]
    if len(children) != 1 or children[0].tag != PUBSUB_ITEMS:
        return None   # purge, delete, configuration, subscription: held as is
    items = children[0]
    node = items.get("node")
    entries = [child for child in items if isinstance(child.tag, str)]
    if not node or len(entries) != 1 or entries[0].tag not in (PUBSUB_ITEM, PUBSUB_RETRACT):
        return None
    if node in SINGLE_ITEM_NODES:
        return ("pep", sender, node)
    item_id = entries[0].get("id")
    return None if item_id is None else ("pep", sender, node, item_id)


class CSIBuffer:
    """What one inactive client has not been sent yet (sans-IO: no socket, no reactor).

    push() takes each stanza for the client and returns the bytes to write now, in order; flush()
    empties the buffer; `deadline` (on `clock`'s scale) is when the caller's timer must call flush().

    Stanzas are held in arrival order. One that supersedes a held stanza (see hold_key) takes it out
    of its place and joins at the end: everything still held from that sender was sent before it and
    stays before it, so a sender's stanzas are never reordered. Stanzas from different senders may be
    reordered that way, which XMPP allows (RFC 6120 §10.1 orders per sender). What goes out always
    goes out whole: an urgent stanza first releases everything held, so nothing held overtakes or is
    overtaken by it.
    """

    __slots__ = ("max_hold", "max_buffered", "max_bytes", "_clock", "_held", "_by_key", "_bytes", "_next",
                 "_since", "superseded")

    def __init__(self, max_hold: float, max_buffered: int, *, clock: Callable[[], float] = time.monotonic,
                 max_bytes: int = MAX_BUFFERED_BYTES) -> None:
        self.max_hold = max_hold
        self.max_buffered = max_buffered
        self.max_bytes = max_bytes
        self._clock = clock
        self._held: dict[int, bytes] = {}          # arrival number -> stanza; dicts keep insertion order
        self._by_key: dict[Hashable, int] = {}     # key -> arrival number of the held stanza with that key
        self._bytes = 0
        self._next = 0
        self._since: float | None = None          # when the buffer last went from empty to holding
        self.superseded = 0                        # stanzas dropped because a newer one said it all

    def __len__(self) -> int:
        return len(self._held)

    @property
    def deadline(self) -> float | None:
        """When what is held must go out; None while nothing is held.

        A stanza that supersedes another inherits its wait: the clock starts when the buffer stops
        being empty, so a contact whose presence flaps cannot keep the client uninformed for ever.
        """
        return None if self._since is None else self._since + self.max_hold

    def push(self, stanza: etree._Element | None, data: bytes) -> list[bytes]:
        """A stanza for the client, serialised as `data`. None means it is stored serialised and matters
        (offline messages, subscription requests waiting for login). Returns the bytes to write now."""
        key = URGENT if stanza is None else hold_key(stanza)
        if key is URGENT:
            return self._drain(data)
        now = self._clock()
        if self._since is not None and now >= self._since + self.max_hold:
            return self._drain(data)   # the timer is late; do its work now
        if key is not None:
            previous = self._by_key.pop(key, None)
            if previous is not None:
                self._bytes -= len(self._held.pop(previous))
                self.superseded += 1
        if len(self._held) >= self.max_buffered or self._bytes + len(data) > self.max_bytes:
            return self._drain(data)
        number = self._next
        self._next += 1
        self._held[number] = data
        self._bytes += len(data)
        if key is not None:
            self._by_key[key] = number
        if self._since is None:
            self._since = now
        return []

    def flush(self) -> list[bytes]:
        """Everything held, in order; the buffer is empty afterwards."""
        return self._drain(None)

    def _drain(self, data: bytes | None) -> list[bytes]:
        out = list(self._held.values())
        if data is not None:
            out.append(data)
        self._held.clear()
        self._by_key.clear()
        self._bytes = 0
        self._since = None
        return out


class _Inactive:
    """One inactive session: its buffer, its timer, and the filter installed on it."""

    __slots__ = ("buffer", "timer", "timer_deadline", "filter")

    def __init__(self, buffer: CSIBuffer) -> None:
        self.buffer = buffer
        self.timer: Any = None           # an IDelayedCall
        self.timer_deadline: float | None = None
        self.filter: Callable[[etree._Element | None, bytes], list[bytes]] | None = None

    def cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.timer_deadline = None


class ClientStateIndication:
    """The csi module. `clock` provides seconds() and callLater() (twisted.internet.task.Clock in tests,
    the reactor at run time)."""

    def __init__(self, server: "Server", clock: Any = None) -> None:
        self.server = server
        self.clock = reactor_clock(clock)
        self.configure(server.config)
        server.on("config-reloaded", self.configure)
        self._inactive: dict["Session", _Inactive] = {}
        server.add_stream_feature(lambda: etree.Element(qname(NS_CSI, "csi"), nsmap={None: NS_CSI}))
        server.add_nonza_handler(ACTIVE, self._on_active)
        server.add_nonza_handler(INACTIVE, self._on_inactive)
        server.on("session-ended", self._session_ended)

    def configure(self, config: Any) -> None:
        """[csi] options, for clients that become inactive from now on (at start and on reload)."""
        self.max_hold = config.csi.max_hold
        self.max_buffered = config.csi.max_buffered

    def is_inactive(self, session: "Session") -> bool:
        return session in self._inactive

    def held(self, session: "Session") -> int:
        """How many stanzas are held for `session` right now."""
        state = self._inactive.get(session)
        return 0 if state is None else len(state.buffer)

    def flush(self, session: "Session") -> int:
        """Write everything held for `session` now; the session stays inactive. Returns how many stanzas
        went out.

        Stream management calls this before a resumption hands the unacknowledged queue over, so that
        what was held joins the queue (and is counted) before it moves, never lost or reordered."""
        state = self._inactive.get(session)
        if state is None:
            return 0
        state.cancel_timer()
        return self._write(session, state.buffer.flush())

    # ------------------------------------------------------------ nonzas
    def _on_inactive(self, session: "Session", element: etree._Element) -> None:
        if session.closed or session in self._inactive:
            return
        state = _Inactive(CSIBuffer(self.max_hold, self.max_buffered, clock=self.clock.seconds))
        state.filter = lambda stanza, data: self._filter(session, state, stanza, data)
        self._inactive[session] = state
        session.outbound_filter = state.filter
        log.debug("csi: %s is inactive", session.full)

    def _on_active(self, session: "Session", element: etree._Element) -> None:
        """XEP-0352 §5.1 in-order processing: everything held is written before anything the client sends
        after <active/> is answered (this runs before the next stanza from the client is handled)."""
        state = self._stop_holding(session)
        if state is None:
            return
        count = self._write(session, state.buffer.flush())
        log.debug("csi: %s is active (%d held stanzas sent, %d superseded)", session.full, count,
                  state.buffer.superseded)

    # ------------------------------------------------------------ the outbound filter and the timer
    def _filter(self, session: "Session", state: _Inactive, stanza: etree._Element | None,
                data: bytes) -> list[bytes]:
        try:
            out = state.buffer.push(stanza, data)
        except Exception:
            # A bug in the policy must not cost the client a stanza: send it and everything held.
            log.exception("csi: holding a stanza for %s failed", session.full)
            out = state.buffer.flush() + [data]
        self._arm(session, state)
        return out

    def _arm(self, session: "Session", state: _Inactive) -> None:
        deadline = state.buffer.deadline
        if deadline == state.timer_deadline:
            return
        state.cancel_timer()
        if deadline is not None:
            delay = max(0.0, deadline - self.clock.seconds())
            state.timer = self.clock.callLater(delay, self._expired, session)
            state.timer_deadline = deadline

    def _expired(self, session: "Session") -> None:
        state = self._inactive.get(session)
        if state is None:
            return
        state.timer = None
        state.timer_deadline = None
        count = self._write(session, state.buffer.flush())
        log.debug("csi: %s: %d held stanzas sent after %.1f s", session.full, count, self.max_hold)

    @staticmethod
    def _write(session: "Session", chunks: list[bytes]) -> int:
        if not session.closed:
            for chunk in chunks:
                session.transmit(chunk)
        return len(chunks)

    def _stop_holding(self, session: "Session") -> "_Inactive | None":
        """Forget the session's inactive state: no timer, no filter (if it is still ours). The caller
        decides what becomes of what was held."""
        state = self._inactive.pop(session, None)
        if state is not None:
            state.cancel_timer()
            if session.outbound_filter is state.filter:
                session.outbound_filter = None
        return state

    # ------------------------------------------------------------ the end of a session
    def _session_ended(self, session: "Session") -> None:
        """Without stream management nothing can be written any more: the held stanzas (none of them
        matters, or it would not be held) are dropped with the session."""
        state = self._stop_holding(session)
        if state is None:
            return
        if len(state.buffer):
            log.debug("csi: %s ended with %d held stanzas, dropped", session.full, len(state.buffer))


def setup(server: "Server") -> ClientStateIndication:
    return ClientStateIndication(server)
