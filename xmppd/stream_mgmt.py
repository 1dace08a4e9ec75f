"""XEP-0198 Stream Management: acknowledgements, hibernation and resumption.

A phone loses its connection whenever the OS suspends the app or the radio
changes. With stream management the server counts what it sent and what the
client acknowledged; when the socket breaks, the session hibernates instead of
ending: it stays routable, queues what arrives, and a new connection can
<resume/> it and get back exactly what the client had not acknowledged, in
order, once, with XEP-0203 delay stamps.

Nothing acknowledged is lost (DESIGN.md invariant 1): a message that matters
is recorded in the durable journal (journal.py) by the router before it
reaches a queue here, and the <a h/> answering a client's <r/> waits for the
journal's group commit. A client's acknowledgement deletes the record; a
queue that ends unacknowledged (window over, clean close without resume)
leaves its records as offline messages, handed to the account's next
available resource.

AckQueue is the protocol (counters, queue, when to ask for an ack) with no I/O
and no reactor; StreamManagementModule is the module: nonza handlers, the
<sm/> feature, resumption, hibernation and its timers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import OrderedDict, deque
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from lxml import etree

from .aio import reactor_clock, run_soon
from .stanza import STORED_PARSER, qname, with_delay
from .storage.models import ResumableSession

if TYPE_CHECKING:
    from .journal import Entry
    from .server import Server
    from .session import Session

log = logging.getLogger("xmppd.stream_mgmt")

NS_SM = "urn:xmpp:sm:3"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
ENABLE = qname(NS_SM, "enable")
RESUME = qname(NS_SM, "resume")
REQUEST = qname(NS_SM, "r")
ANSWER = qname(NS_SM, "a")

WRAP = 1 << 32        # XEP-0198 §4: counters are unsigned 32-bit and wrap to 0
REQUEST_BYTES = f"<r xmlns='{NS_SM}'/>".encode()

# Resumption ids of ended sessions are remembered this long (and at most this many), so that a client
# that comes back too late learns how many of its stanzas were handled (<failed h=…/>, XEP-0198 §5).
REMEMBER_ENDED = 3600.0
REMEMBER_ENDED_MAX = 10000


class HandledCountTooHigh(Exception):
    """The client acknowledged stanzas the server never sent (XEP-0198 §4.1: a stream error)."""

    def __init__(self, h: int, sent: int) -> None:
        super().__init__(f"the client acknowledged {h} stanzas, only {sent} were sent")
        self.h = h
        self.sent = sent


class Unacked(NamedTuple):
    """A stanza sent and not acknowledged yet: its bytes, its journal entry (a message that matters),
    and when it was queued (for the delay stamp if it has to be sent again)."""
    data: bytes
    entry: "Entry | None"
    queued_at: float


class AckQueue:
    """One stream's XEP-0198 state (sans-IO: the caller writes and keeps time).

    `handled` counts the client's stanzas, `acked` is the client's last h, and `queue` holds what was
    sent after that, so the count sent is acked + len(queue) (mod 2^32). The server asks <r/> once
    `request_after` stanzas are unacknowledged and no request is out; deadline() says when a timer must
    call poll(): to ask after `request_delay` seconds for fewer stanzas, or to give up on a client that
    left a request unanswered for `ack_timeout` seconds.
    """

    __slots__ = ("resume_id", "window", "handled", "acked", "queue", "request_after", "request_delay",
                 "ack_timeout", "requested_at", "_unrequested", "_first_unrequested_at", "overflowed",
                 "hibernated_at", "extension", "presence_suspended", "saved_presence", "timer", "timer_deadline",
                 "resuming")

    def __init__(self, *, resume_id: str | None = None, window: float = 0.0, request_after: int = 5,
                 request_delay: float = 10.0, ack_timeout: float = 60.0) -> None:
        self.resume_id = resume_id
        self.window = window                   # seconds a broken stream stays resumable; 0 without resume
        self.handled = 0
        self.acked = 0
        self.queue: deque[Unacked] = deque()
        self.request_after = request_after
        self.request_delay = request_delay
        self.ack_timeout = ack_timeout
        self.requested_at: float | None = None    # an <r/> is out since then
        self._unrequested = 0                     # stanzas sent since the last <r/>
        self._first_unrequested_at = 0.0
        self.overflowed = False                   # the queue reached its bound: messages go to offline storage
        self.hibernated_at: float | None = None
        # Seconds a hibernated session is kept beyond the window with its presence gone (push asks for it,
        # so that a phone woken by a push can still resume), and whether that time has begun.
        self.extension = 0.0
        self.presence_suspended = False
        self.saved_presence: Any = None
        self.timer: Any = None                    # the module's one IDelayedCall for this stream
        self.timer_deadline: float | None = None
        self.resuming = False

    @property
    def sent(self) -> int:
        return (self.acked + len(self.queue)) % WRAP

    def received(self) -> None:
        """The client sent a stanza (counted when it is handled, in order, RFC 6120 §10.1)."""
        self.handled = (self.handled + 1) % WRAP

    def push(self, data: bytes, entry: "Entry | None", now: float) -> bool:
        """A stanza is being sent; True if an <r/> should follow it."""
        self.queue.append(Unacked(data, entry, now))
        if self._unrequested == 0:
            self._first_unrequested_at = now
        self._unrequested += 1
        return self.requested_at is None and self._unrequested >= self.request_after

    def requested(self, now: float) -> None:
        """An <r/> went out."""
        self.requested_at = now
        self._unrequested = 0

    def acknowledge(self, h: int) -> list[Unacked]:
        """The client's <a h/> (or the h of <resume/>): returns the stanzas it newly acknowledges, oldest
        first. Raises HandledCountTooHigh if h counts stanzas that were never sent; an h lower than an
        earlier one acknowledges nothing (it may be an old answer)."""
        count = (h - self.acked) % WRAP
        if count > len(self.queue):
            if count < WRAP // 2:   # serial-number arithmetic (RFC 1982): h is ahead of what was sent
                raise HandledCountTooHigh(h, self.sent)
            count = 0               # h is behind the last acknowledgement: stale, nothing to do
        self.requested_at = None
        done = [self.queue.popleft() for _ in range(count)]
        self.acked = (self.acked + count) % WRAP
        self._unrequested = min(self._unrequested, len(self.queue))   # an ack may cover them too
        return done

    def deadline(self) -> float | None:
        """When poll() must run next; None if nothing is waiting for time."""
        if self.hibernated_at is not None:
            return self.hibernated_at + self.window + (self.extension if self.presence_suspended else 0.0)
        if self.requested_at is not None:
            return self.requested_at + self.ack_timeout
        if self._unrequested:
            return self._first_unrequested_at + self.request_delay
        return None

    def poll(self, now: float) -> str | None:
        """What time requires now: "expire" (the hibernation window is over), "suspend" (the window is
        over but an extension follows: presence goes, the session stays), "timeout" (the client left an
        <r/> unanswered too long), "request" (ask for an ack), or None."""
        if self.hibernated_at is not None:
            if now < self.deadline():
                return None
            return "suspend" if self.extension and not self.presence_suspended else "expire"
        if self.requested_at is not None:
            return "timeout" if now >= self.requested_at + self.ack_timeout else None
        if self._unrequested and now >= self._first_unrequested_at + self.request_delay:
            return "request"
        return None


# ---------------------------------------------------------------- wire format
def enabled_bytes(resume_id: str | None, window: int) -> bytes:
    if resume_id is None:
        return f"<enabled xmlns='{NS_SM}'/>".encode()
    return f"<enabled xmlns='{NS_SM}' id='{resume_id}' resume='true' max='{window}'/>".encode()


def answer_bytes(h: int) -> bytes:
    return f"<a xmlns='{NS_SM}' h='{h}'/>".encode()


def resumed_bytes(previd: str, h: int) -> bytes:
    return f"<resumed xmlns='{NS_SM}' previd='{previd}' h='{h}'/>".encode()


def failed_bytes(condition: str, h: int | None = None) -> bytes:
    h_attr = "" if h is None else f" h='{h}'"
    return f"<failed xmlns='{NS_SM}'{h_attr}><{condition} xmlns='{NS_STANZAS}'/></failed>".encode()


def too_high_bytes(error: HandledCountTooHigh) -> bytes:
    return f"<handled-count-too-high xmlns='{NS_SM}' h='{error.h}' send-count='{error.sent}'/>".encode()


def parse_h(text: str | None) -> int | None:
    """An h attribute: an unsigned 32-bit integer, else None."""
    if text is None or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value < WRAP else None


class ResumeFailed(Exception):
    """A <resume/> that cannot be honoured; `data` is the answer for the client (<failed/>), or, when
    `stream_error` is set, the stream must end with that condition and `data` as its application error."""

    def __init__(self, data: bytes, why: str, stream_error: str | None = None) -> None:
        super().__init__(why)
        self.data = data
        self.stream_error = stream_error


class _Hibernating:
    """Stands in for the connection of a hibernated session: what is sent waits in the queue."""

    address = "hibernated"

    def write(self, data: bytes) -> None:
        pass

    def close_stream(self, condition: str | None = None, text: str | None = None, reason: str = "",
                     app_error: bytes = b"") -> None:
        pass   # whoever ends a hibernated session unbinds it; there is no stream to close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


HIBERNATING = _Hibernating()


class StreamManagementModule:
    """The stream_mgmt module. `clock` provides seconds() and callLater() (twisted.internet.task.Clock in
    tests, the reactor at run time)."""

    def __init__(self, server: "Server", clock: Any = None) -> None:
        self.server = server
        self.clock = reactor_clock(clock)
        self.configure(server.config)
        server.on("config-reloaded", self.configure)
        self.journal = server.journal
        self._resumable: dict[str, "Session"] = {}             # resume id -> session
        # session -> its latest <a/> still waiting for the journal: answers go out in the order asked, so h
        # never goes back (a later answer whose barrier is already settled would otherwise overtake it).
        self._answering: dict["Session", asyncio.Future] = {}
        self._ended: OrderedDict[str, tuple[str, int, float]] = OrderedDict()   # id -> (user, h, when)
        server.load_modules(["offline"])   # where unacknowledged messages go when a queue ends
        self.offline = server.module("offline")
        server.add_stream_feature(lambda: etree.Element(qname(NS_SM, "sm"), nsmap={None: NS_SM}))
        server.add_nonza_handler(ENABLE, self._on_enable)
        server.add_nonza_handler(REQUEST, self._on_request)
        server.add_nonza_handler(ANSWER, self._on_answer)
        server.add_nonza_handler(RESUME, self._on_resume_when_bound)
        server.on("session-ended", self._session_ended)
        server.stream_mgmt = self

    def configure(self, config: Any) -> None:
        """[stream_mgmt] options, for streams that enable stream management from now on."""
        settings = config.stream_mgmt
        self.max_window = settings.resume_timeout
        self.max_queue = settings.max_queue
        self.request_after = settings.request_after_stanzas
        self.request_delay = settings.request_after_seconds
        self.ack_timeout = settings.ack_timeout

    # ------------------------------------------------------------ counts for status and metrics
    @property
    def hibernated(self) -> int:
        return sum(1 for session in self._resumable.values() if session.sm.hibernated_at is not None)

    # ------------------------------------------------------------ outbound: Session.transmit() lands here
    def transmit(self, session: "Session", data: bytes, entry: "Entry | None") -> None:
        """Send a stanza on a managed stream: queue it until acknowledged, then write it (a hibernated
        session's stand-in writes nothing). Past [stream_mgmt] max_queue the stanza overflows."""
        sm = session.sm
        if sm.overflowed or len(sm.queue) >= self.max_queue:
            self._overflow(session, data, entry)
            return
        now = self.clock.seconds()
        ask = sm.push(data, entry, now)
        if entry is not None:
            self.journal.claim(entry)
        connection = session.connection
        connection.write(data)
        if ask and sm.hibernated_at is None:
            connection.write(REQUEST_BYTES)
            sm.requested(now)
        self._arm(session)

    def _overflow(self, session: "Session", data: bytes, entry: "Entry | None") -> None:
        """The client has not acknowledged max_queue stanzas. A message that matters stays in the journal
        as an offline message (it comes back after the queue drains or at the next login); an iq request
        is answered with an error; the rest (presence, chat states, results) is dropped, as for a session
        that ended. Nothing is overwritten."""
        sm = session.sm
        if not sm.overflowed:
            sm.overflowed = True
            log.warning("stream management: %s has %d unacknowledged stanzas; until they are acknowledged "
                        "its messages go to offline storage", session.full, len(sm.queue))
        if entry is None:
            self._bounce_request(data)

    def _bounce_request(self, data: bytes) -> None:
        """An iq request that will never reach its session gets an error (RFC 6121 §8.5.3.1)."""
        if not data.startswith(b"<iq"):
            return
        stanza = etree.fromstring(data, STORED_PARSER)
        if stanza.get("type") in ("get", "set"):
            pending = self.server.router.bounce(stanza, "service-unavailable")
            if pending is not None:
                run_soon(pending, "answering an iq for a session that cannot take it")

    # ------------------------------------------------------------ nonzas from a bound client
    def _on_enable(self, session: "Session", element: etree._Element) -> None:
        if session.sm is not None:
            session.connection.write(failed_bytes("unexpected-request"))
            return
        resume_id = None
        window = 0
        if element.get("resume") in ("true", "1"):
            resume_id = secrets.token_urlsafe(18)
            wanted = parse_h(element.get("max"))
            window = int(self.max_window if not wanted else min(wanted, self.max_window))
        session.sm = AckQueue(resume_id=resume_id, window=window, request_after=self.request_after,
                              request_delay=self.request_delay, ack_timeout=self.ack_timeout)
        if resume_id is not None:
            self._resumable[resume_id] = session
        log.debug("stream management enabled for %s%s", session.full,
                  f" (resumable for {window} s)" if resume_id else "")
        session.connection.write(enabled_bytes(resume_id, window))

    def _on_request(self, session: "Session", element: etree._Element) -> None:
        """<r/>: answer with the count of the client's stanzas handled so far, once the journal has
        committed every message among them (the durability invariant)."""
        sm = session.sm
        if sm is None:
            session.connection.write(failed_bytes("unexpected-request"))
            return
        earlier = self._answering.get(session)
        answer = run_soon(self._answer(session, session.connection, sm.handled, self.journal.barrier(), earlier),
                          f"acknowledging stanzas of {session.full}")
        self._answering[session] = answer
        answer.add_done_callback(lambda done: self._answering.pop(session, None)
                                 if self._answering.get(session) is done else None)

    async def _answer(self, session: "Session", connection: Any, h: int, barrier,
                      earlier: asyncio.Future | None) -> None:
        if earlier is not None:
            await asyncio.wait((earlier,))
        await barrier
        if session.connection is connection and not session.closed:
            connection.write(answer_bytes(h))

    def _on_answer(self, session: "Session", element: etree._Element) -> None:
        sm = session.sm
        if sm is None:
            return
        h = parse_h(element.get("h"))
        if h is None:
            session.connection.close_stream("undefined-condition", "<a/> needs h, an unsigned 32-bit integer",
                                            reason="invalid <a/>")
            return
        try:
            done = sm.acknowledge(h)
        except HandledCountTooHigh as error:
            log.warning("stream management: %s: %s", session.full, error)
            session.connection.close_stream("undefined-condition", str(error), reason="handled count too high",
                                            app_error=too_high_bytes(error))
            return
        self._delivered(done)
        if sm.overflowed and len(sm.queue) <= self.max_queue // 2:
            self._end_overflow(session)
        self._arm(session)

    def _on_resume_when_bound(self, session: "Session", element: etree._Element) -> None:
        session.connection.write(failed_bytes("unexpected-request"))

    def _delivered(self, items: list[Unacked]) -> None:
        for item in items:
            if item.entry is not None:
                self.journal.finish(item.entry)
                self.journal.release(item.entry)

    # ------------------------------------------------------------ hibernation and resumption
    def hibernate(self, session: "Session") -> bool:
        """The session's connection broke (EOF, reset, timeout, a client that stopped reading). Keep
        the session if it may be resumed; True if it was kept."""
        sm = session.sm
        if sm is None or sm.resume_id is None or session.closed:
            return False
        sm.hibernated_at = self.clock.seconds()
        sm.requested_at = None
        session.connection = HIBERNATING
        self.server.fire("session-hibernated", session)   # push may extend the stay (sm.extension)
        self._arm(session)
        log.info("%s hibernated: resumable for %d s, %d stanzas unacknowledged", session.full,
                 sm.window + sm.extension, len(sm.queue))
        return True

    async def resume(self, username: str, previd: str, h: int) -> "Session":
        """Take over the session `previd` for a new connection authenticated as `username`. The caller
        then calls attach(). Raises ResumeFailed."""
        session = self._resumable.get(previd)
        if session is None or session.username != username or session.sm.resuming:
            remembered = self._ended.get(previd)
            known_h = remembered[1] if remembered is not None and remembered[0] == username else None
            raise ResumeFailed(failed_bytes("item-not-found", known_h), "unknown or expired session id")
        sm = session.sm
        sm.resuming = True
        try:
            old = session.connection
            if old is not HIBERNATING:
                sm.hibernated_at = self.clock.seconds()
                session.connection = HIBERNATING
                old.close_stream("conflict", "the session was resumed on another connection",
                                 reason="resumed on another connection")
            await session.idle()           # what the old connection sent is handled and counted
            await self.journal.barrier()   # and durable, before h is reported
            if session.closed:
                raise ResumeFailed(failed_bytes("item-not-found", sm.handled), "expired while resuming")
            try:
                done = sm.acknowledge(h)
            except HandledCountTooHigh as error:
                raise ResumeFailed(too_high_bytes(error), str(error), stream_error="undefined-condition")
            self._delivered(done)
            csi = self.server.modules.get("csi")
            if csi is not None:
                csi.flush(session)          # held stanzas join the queue before it moves (XEP-0352)
            return session
        finally:
            sm.resuming = False

    def attach(self, session: "Session", connection: Any) -> None:
        """Hand a resumed session to its new connection: <resumed/>, then every unacknowledged stanza
        once, in order, with a delay stamp, then an <r/> for them."""
        sm = session.sm
        sm.hibernated_at = None
        session.connection = connection
        connection.write(resumed_bytes(sm.resume_id, sm.handled))
        if sm.presence_suspended:
            sm.presence_suspended = False
            self.server.modules["presence"].restore(session, sm.saved_presence)
            sm.saved_presence = None
        for item in sm.queue:
            queued_at = datetime.fromtimestamp(item.queued_at, timezone.utc)
            connection.write(with_delay(item.data, queued_at, self.server.domain))
        if sm.queue:
            connection.write(REQUEST_BYTES)
            sm.requested(self.clock.seconds())
        log.info("%s resumed from %s: %d stanzas sent again", session.full, connection.address, len(sm.queue))
        self.server.fire("session-resumed", session)
        self._arm(session)
        if sm.overflowed:
            self._end_overflow(session)

    def _end_overflow(self, session: "Session") -> None:
        """The queue has room again: messages parked in offline storage meanwhile come back (with delay
        stamps; they may arrive after newer ones that came in while they are read back)."""
        session.sm.overflowed = False
        log.info("stream management: %s acknowledges again; parked messages follow", session.full)
        run_soon(self.offline.deliver(session), f"parked messages for {session.full}")

    def _session_ended(self, session: "Session") -> None:
        """A managed session ended (window over, clean close, replaced): what the client did not
        acknowledge is never dropped. Messages that matter are offline messages again and go to another
        available resource of the account, if there is one, else to the next login; iq requests get
        errors; presence and the rest are state the next session gets afresh."""
        sm = session.sm
        if sm is None:
            return
        self._cancel_timer(sm)
        if sm.resume_id is not None and self._resumable.get(sm.resume_id) is session:
            del self._resumable[sm.resume_id]
            self._remember(sm.resume_id, session.username, sm.handled)
        parked = 0
        for item in sm.queue:
            if item.entry is not None:
                parked += self.journal.release(item.entry)
            else:
                self._bounce_request(item.data)
        unacked = len(sm.queue)
        sm.queue.clear()
        if unacked:
            log.info("stream management: %s ended with %d stanzas unacknowledged (%d messages back in "
                     "offline storage)", session.full, unacked, parked)
        if parked or sm.overflowed:
            self.offline.hand_over(session.bare)

    def _remember(self, resume_id: str, username: str, h: int) -> None:
        now = self.clock.seconds()
        self._ended[resume_id] = (username, h, now)
        while self._ended:
            oldest_id, (_, _, when) = next(iter(self._ended.items()))
            if len(self._ended) <= REMEMBER_ENDED_MAX and now - when < REMEMBER_ENDED:
                break
            del self._ended[oldest_id]

    # ------------------------------------------------------------ across a graceful restart
    def resumable_sessions(self) -> list["Session"]:
        return list(self._resumable.values())

    def saved_state(self, now: float) -> list[ResumableSession]:
        """What a graceful stop writes to storage so that every resumable session (all hibernated by
        now: the stop closed their streams) can be resumed after the restart. Call it once the journal
        is flushed: a queued message is saved as the id of its offline_messages row, so the row is the
        one copy, redelivered once whichever way the session ends. Other queued stanzas are saved as
        they were sent."""
        push = self.server.modules.get("push")
        csi = self.server.modules.get("csi")
        saved = []
        for session in self._resumable.values():
            sm = session.sm
            if csi is not None:
                csi.flush(session)   # what CSI held joins the queue, as before a resumption
            queue = []
            for item in sm.queue:
                entry = item.entry
                if entry is not None and entry.finished:
                    continue   # the user has it
                if entry is None or entry.id is None:   # not a message, or one the storage refused (no row)
                    queue.append([item.data.decode(), None, item.queued_at, None])
                else:
                    queue.append([item.data.decode(), entry.id, item.queued_at, entry.received_at.isoformat()])
            presence = sm.saved_presence if sm.presence_suspended else session.presence
            details = {
                "queue": queue,
                "presence": etree.tostring(presence).decode() if presence is not None else None,
                "roster_requested": session.roster_requested,
                "push": push.device_of(session) if push is not None else None,
                "overflowed": sm.overflowed,
            }
            hibernated_at = sm.hibernated_at if sm.hibernated_at is not None else now
            remaining = max(0.0, hibernated_at + sm.window + sm.extension - now)
            saved.append(ResumableSession(sm.resume_id, session.username, session.resource, sm.handled, sm.acked,
                                          remaining, json.dumps(details), datetime.now(timezone.utc)))
        return saved

    async def restore(self, saved: list[ResumableSession]) -> None:
        """Bring the sessions a graceful stop saved back as hibernated sessions with the time they had
        left. Contacts saw them go offline when the server stopped, so they come back with their
        presence suspended: a resumption announces it again, the end of the window says nothing."""
        push = self.server.modules.get("push")
        now = self.clock.seconds()
        for record in saved:
            bare = f"{record.username}@{self.server.domain}"
            if record.resource in self.server.sessions_of(bare):
                continue
            try:
                details = json.loads(record.details)
                session = self._rebuild(record, details, now)
            except (ValueError, KeyError, TypeError, etree.XMLSyntaxError) as error:
                log.error("stream management: saved session %s of %s is unreadable (%s); its messages stay "
                          "offline messages", record.resume_id, bare, error)
                continue
            self.server.sessions.setdefault(bare, {})[record.resource] = session
            self._resumable[record.resume_id] = session
            if push is not None and details.get("push"):
                await push.relink(session, *details["push"])
            self._arm(session)
            log.info("%s restored after the restart: resumable for %.0f s, %d stanzas unacknowledged",
                     session.full, record.remaining, len(session.sm.queue))

    def _rebuild(self, record: ResumableSession, details: dict, now: float) -> "Session":
        from .session import Session

        session = Session(self.server, HIBERNATING, record.username, record.resource)
        session.roster_requested = bool(details.get("roster_requested"))
        sm = session.sm = AckQueue(resume_id=record.resume_id, window=record.remaining,
                                   request_after=self.request_after, request_delay=self.request_delay,
                                   ack_timeout=self.ack_timeout)
        sm.handled = record.handled % WRAP
        sm.acked = record.acked % WRAP
        sm.hibernated_at = now
        sm.presence_suspended = True
        if details.get("presence"):
            sm.saved_presence = etree.fromstring(details["presence"].encode(), STORED_PARSER)
        sm.overflowed = bool(details.get("overflowed"))
        # Read every item before claiming any row: an unreadable one must not leave rows claimed.
        items = [(data.encode(), None if row is None else (int(row), datetime.fromisoformat(received)),
                  float(queued_at)) for data, row, queued_at, received in details["queue"]]
        for data, row, queued_at in items:
            entry = None
            if row is not None:
                entry = self.journal.adopt(record.username, *row)
                self.journal.claim(entry)
            sm.queue.append(Unacked(data, entry, queued_at))
        return session

    # ------------------------------------------------------------ the one timer per managed stream
    def _arm(self, session: "Session") -> None:
        sm = session.sm
        deadline = sm.deadline()
        if deadline == sm.timer_deadline:
            return
        self._cancel_timer(sm)
        if deadline is not None:
            sm.timer = self.clock.callLater(max(0.0, deadline - self.clock.seconds()), self._tick, session)
            sm.timer_deadline = deadline

    @staticmethod
    def _cancel_timer(sm: AckQueue) -> None:
        if sm.timer is not None and sm.timer.active():
            sm.timer.cancel()
        sm.timer = None
        sm.timer_deadline = None

    def _tick(self, session: "Session") -> None:
        sm = session.sm
        sm.timer = None
        sm.timer_deadline = None
        if session.closed:
            return
        now = self.clock.seconds()
        action = sm.poll(now)
        if action == "expire":
            log.info("%s: resumption window is over; the session ends", session.full)
            self.server.unbind(session)
            return
        if action == "suspend":
            log.info("%s: resumption window of %d s is over; contacts see it offline, it stays resumable "
                     "%.0f s more for its push-woken device", session.full, sm.window, sm.extension)
            sm.presence_suspended = True
            sm.saved_presence = self.server.modules["presence"].suspend(session)
            self._arm(session)
            return
        if action == "timeout":
            log.info("%s did not acknowledge stanzas for %.0f s: connection considered dead", session.full,
                     self.ack_timeout)
            session.connection.close_stream("connection-timeout", "no acknowledgement",
                                            reason=f"no <a/> for {self.ack_timeout:.0f} s")
            return
        if action == "request":
            session.connection.write(REQUEST_BYTES)
            sm.requested(now)
        self._arm(session)


def setup(server: "Server") -> StreamManagementModule:
    return StreamManagementModule(server)
