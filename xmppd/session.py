"""A bound resource: the thing the router delivers to.

A Session knows nothing about sockets; it writes through a callable and asks
its connection to close. That keeps routing testable without a reactor, and
lets a later session outlive its socket (XEP-0198 hibernation).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Callable, Protocol

from lxml import etree

from .aio import run_soon
from .jid import JID
from .stanza import serialize

if TYPE_CHECKING:
    from .journal import Entry
    from .server import Server
    from .stream_mgmt import AckQueue

log = logging.getLogger("xmppd.session")

# Stanzas held while an async handler for an earlier one runs; past this the connection stops reading,
# so a client that floods slow requests is slowed down instead of eating memory.
INBOX_PAUSE = 64


class Connection(Protocol):
    """What a Session needs from the transport that carries it."""

    address: str

    def write(self, data: bytes) -> None: ...
    def close_stream(self, condition: str | None = None, text: str | None = None,
                     reason: str = "", app_error: bytes = b"") -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class Session:
    __slots__ = ("server", "connection", "username", "resource", "jid", "full", "bare", "bare_jid",
                 "presence", "priority", "available", "roster_requested", "directed", "outbound_filter", "sm", "_inbox",
                 "_busy", "_paused", "closed", "__weakref__")

    def __init__(self, server: "Server", connection: Connection, username: str, resource: str) -> None:
        self.server = server
        self.connection = connection
        self.username = username
        self.resource = resource
        self.bare = f"{username}@{server.domain}"
        self.full = f"{self.bare}/{resource}"
        self.jid = JID(username, server.domain, resource)
        self.bare_jid = self.jid.bare
        self.presence: etree._Element | None = None   # last broadcast available presence
        self.priority = 0
        self.available = False                         # sent initial presence, not yet unavailable
        self.roster_requested = False                  # an "interested resource" (RFC 6121 §2.1.6)
        self.directed: set[str] = set()                # JIDs that got directed presence (RFC 6121 §4.6)
        # Set by a module that decides when stanzas go out (XEP-0352 CSI holds unimportant ones while the
        # client is inactive): filter(element or None, data) returns the bytes to write now, in order.
        self.outbound_filter: Callable[[etree._Element | None, bytes], list[bytes]] | None = None
        self.sm: "AckQueue | None" = None             # XEP-0198 state once the client enabled it
        self._inbox: deque = deque()   # stanzas, and callables for nonzas, in the order they came
        self._busy = False
        self._paused = False
        self.closed = False

    def __repr__(self) -> str:
        return f"<Session {self.full}>"

    # ------------------------------------------------------------ outbound
    def deliver(self, element: etree._Element, data: bytes | None = None, entry: "Entry | None" = None) -> None:
        """Write a stanza to this client. Fan-out passes `data`, serialised once for all recipients; a
        message that matters comes with its journal `entry`, settled once the client has it."""
        if self.closed:
            return
        if data is None:
            data = serialize(element)
        if self.sm is not None and self.sm.hibernated_at is not None:
            self.server.fire("parked", self.username, element, self)   # push may wake the phone
        if self.outbound_filter is None:
            self.transmit(data, entry)
            return
        for chunk in self.outbound_filter(element, data):
            self.transmit(chunk, entry if chunk is data else None)

    def deliver_stored(self, data: bytes, entry: "Entry | None" = None) -> None:
        """Write a stanza that is stored serialised (offline messages, subscription requests): it matters,
        so a filter lets it out at once, after what it held."""
        if self.closed:
            return
        if self.outbound_filter is None:
            self.transmit(data, entry)
            return
        for chunk in self.outbound_filter(None, data):
            self.transmit(chunk, entry if chunk is data else None)

    def transmit(self, data: bytes, entry: "Entry | None" = None) -> None:
        """The one way a stanza leaves the session. With stream management it waits in the queue until
        the client acknowledges it; without, written to the socket is as delivered as it gets, so the
        journal forgets the message at once."""
        self.server.stanza_counts.sent[data[1:2]] += 1
        if self.sm is not None:
            self.server.stream_mgmt.transmit(self, data, entry)
            return
        self.connection.write(data)
        if entry is not None:
            self.server.journal.finish(entry)

    # ------------------------------------------------------------ inbound, in order
    def handle(self, item: "etree._Element | Callable[[], None]") -> None:
        """A stanza from this client, or a callable standing for a nonza (XEP-0352 <active/> …).
        RFC 6120 §10.1 wants in-order processing: while an async handler for an earlier stanza runs,
        later ones wait here."""
        if self._busy:
            self._inbox.append(item)
            if not self._paused and len(self._inbox) >= INBOX_PAUSE:
                self._paused = True
                self.connection.pause_reading()
            return
        self._run(item)

    def _run(self, item: "etree._Element | Callable[[], None]") -> None:
        while True:
            pending = self._process(item)
            if pending is not None:
                self._busy = True
                task = run_soon(pending, f"handling a stanza from {self.full}")
                task.add_done_callback(self._handler_done)
                return
            if not self._inbox:
                return
            item = self._next()

    def _next(self) -> "etree._Element | Callable[[], None]":
        item = self._inbox.popleft()
        if self._paused and len(self._inbox) < INBOX_PAUSE // 2:
            self._paused = False
            self.connection.resume_reading()
        return item

    def idle(self) -> "asyncio.Future[None]":
        """Resolves once everything the client sent so far has been handled (a resumption reports h only
        then)."""
        done = asyncio.get_running_loop().create_future()
        self.handle(lambda: done.done() or done.set_result(None))
        return done

    def _process(self, item: "etree._Element | Callable[[], None]"):
        if callable(item):
            try:
                item()
            except Exception:
                log.exception("handling a nonza from %s failed", self.full)
            return None
        if self.sm is not None:
            self.sm.received()
        try:
            return self.server.router.from_client(self, item)
        except Exception:
            log.exception("routing a stanza from %s failed", self.full)
            return self.server.router.bounce(item, "internal-server-error")

    def _handler_done(self, task: "asyncio.Future") -> None:
        self._busy = False
        # Stanzas the client sent before it went away are still handled: they were accepted.
        if self._inbox:
            self._run(self._next())

