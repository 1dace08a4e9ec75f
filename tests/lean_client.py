"""A lean asyncio XMPP client for durability tests and load generation.

Why not slixmpp: one slixmpp client costs too much memory and CPU to run a
thousand of them in one test process, and its XEP-0198 plugin hides what we
must check (exactly which of our stanzas the server acknowledged, what 'h' it
reports on <resumed/> and <failed/>). This client is an asyncio Protocol that
feeds lxml's incremental parser and keeps the stream-management counters in
plain sight:

- log-in: plain TCP (the server needs [c2s] require_encryption = false, and
  then offers only SCRAM) or direct TLS; SASL SCRAM-SHA-1/-256 (scramp) or
  PLAIN; bind; optional initial presence.
- XEP-0198: <enable resume/>; `h_in` counts stanzas received; an <r/> from the
  server is answered with <a h/>; every stanza sent after <enable/> waits in
  `unacked` until an <a h/> from the server covers it (32-bit wrap), then its
  id moves to `acked_ids`. <resume previd h/> on a new connection resends what
  the server did not acknowledge.
- abort() drops the socket without closing the stream (a phone losing its
  radio), stop_reading() keeps it open but reads nothing, close() ends the
  stream cleanly.

Everything that waits takes a timeout, so a server bug fails a test instead
of hanging it. A lost connection wakes every waiter with ConnectionLost.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Callable
from xml.sax.saxutils import escape, quoteattr

from lxml import etree
from scramp import ScramClient

NS_CLIENT = "jabber:client"
NS_STREAMS = "http://etherx.jabber.org/streams"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SM = "urn:xmpp:sm:3"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_DELAY = "urn:xmpp:delay"
NS_PING = "urn:xmpp:ping"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_CAPS = "http://jabber.org/protocol/caps"
CAPS_NODE = "https://lean-client.example"

STANZAS = {f"{{{NS_CLIENT}}}{name}" for name in ("message", "presence", "iq")}
MOD32 = 1 << 32

_ids = itertools.count(1)


def _next_id(prefix: str = "lc") -> str:
    return f"{prefix}{next(_ids)}"


class XmppError(Exception):
    """The server refused something: SASL, bind, enable, or the stream itself."""


class ConnectionLost(XmppError):
    """The connection is gone (or was never there) while we waited for something."""


@dataclass(frozen=True)
class Received:
    """A message as it arrived."""
    id: str | None
    from_: str | None
    body: str | None
    type: str
    delayed: bool           # carries a XEP-0203 <delay/> (offline storage, or resent after a failed resumption)
    element: etree._Element | None = field(default=None, compare=False, repr=False)   # the whole stanza


@dataclass(frozen=True)
class ResumeResult:
    """The answer to <resume/>: resumed, or failed with a condition; h as the server reported it
    (None if it gave none). Stanzas the server acknowledged with this h are in acked_ids already."""
    resumed: bool
    h: int | None
    condition: str | None = None


@dataclass
class _Outgoing:
    id: str | None
    data: bytes


def stream_header(domain: str) -> bytes:
    return (f"<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAMS}' "
            f"to={quoteattr(domain)} version='1.0'>").encode()


class _Link(asyncio.Protocol):
    """One connection of a client: events of a connection the client has since replaced are dropped
    (an aborted transport reports its loss only after the next connection may have started)."""

    def __init__(self, client: "LeanClient") -> None:
        self.client = client
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.client._link is self:
            self.client.connection_made(transport)
        else:
            transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.client._link is self:
            self.client.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost:
            self.lost = True
            if self.client._link is self:
                self.client.connection_lost(exc)


class LeanClient:
    """One account's client. The object outlives its connections: after abort(), call connect() again
    and resume() (or bind() and enable_sm() for a fresh session); the counters and queues carry over."""

    def __init__(self, jid: str, password: str, *, host: str = "127.0.0.1", port: int = 5222,
                 direct_tls: bool = False, cafile: str | None = None, mechanism: str = "SCRAM-SHA-256",
                 auto_ack: bool = True) -> None:
        self.username, _, self.domain = jid.partition("@")
        self.password = password
        self.host, self.port = host, port
        self.direct_tls, self.cafile = direct_tls, cafile
        self.mechanism = mechanism
        self.auto_ack = auto_ack          # answer the server's <r/> at once
        self.jid: str | None = None       # full JID once bound
        self.features: etree._Element | None = None   # <stream:features/> after authentication
        self.transport: asyncio.Transport | None = None
        self._link: _Link | None = None
        self.connected = False
        self.stream_error: str | None = None
        self.stream_closed = False        # the server sent </stream:stream>
        self.received: list[Received] = []
        self._events: asyncio.Queue = asyncio.Queue()   # negotiation replies, in order
        self._iq_waiters: dict[str, asyncio.Future] = {}
        self._changed = asyncio.Event()   # set on every incoming element and on connection loss
        self._parser: etree.XMLPullParser | None = None
        self._root: etree._Element | None = None
        self._depth = 0
        # XEP-0198 state
        self.sm_enabled = False
        self.sm_id: str | None = None
        self.sm_resume = False
        self.sm_max: int | None = None
        self.sm_location: str | None = None
        self.h_in = 0                     # stanzas received since <enable/> (mod 2^32)
        self.acked_h = 0                  # last h the server acknowledged (mod 2^32)
        self.unacked: deque[_Outgoing] = deque()
        self.acked_ids: list[str] = []    # ids of our stanzas the server acknowledged, in order
        self.acks_received = 0            # <a/> elements seen
        self.requests_received = 0        # <r/> elements seen
        self.protocol_errors: list[str] = []   # the server broke XEP-0198 (an h that acks too much …)
        self.on_ack: Callable[["LeanClient"], None] | None = None   # called after each <a/> is counted
        # Set, the client answers disco#info with these features and announces them as XEP-0115 caps.
        self.disco_features: list[str] | None = None

    # ------------------------------------------------------------------ connecting
    async def connect(self, timeout: float = 10.0) -> "LeanClient":
        """Open a connection, authenticate and restart the stream; self.features holds what the server
        offers next (bind, sm …)."""
        loop = asyncio.get_running_loop()
        context = None
        if self.direct_tls:
            context = ssl.create_default_context(cafile=self.cafile)
        self.abort()
        self._reset_connection()
        link = self._link = _Link(self)
        await asyncio.wait_for(
            loop.create_connection(lambda: link, self.host, self.port, ssl=context,
                                   server_hostname=self.domain if context else None), timeout)
        self._open_stream()
        features = await self._expect(f"{{{NS_STREAMS}}}features", timeout)
        await self._authenticate(features, timeout)
        self._open_stream()
        self.features = await self._expect(f"{{{NS_STREAMS}}}features", timeout)
        return self

    def offers_sm(self) -> bool:
        return self.features is not None and self.features.find(f"{{{NS_SM}}}sm") is not None

    async def _authenticate(self, features: etree._Element, timeout: float) -> None:
        offered = [m.text for m in features.iterfind(f"{{{NS_SASL}}}mechanisms/{{{NS_SASL}}}mechanism")]
        if self.mechanism not in offered:
            raise XmppError(f"{self.mechanism} is not offered (offered: {offered})")
        if self.mechanism == "PLAIN":
            initial = f"\0{self.username}\0{self.password}".encode()
            self._send_sasl("auth", initial, mechanism="PLAIN")
            reply = await self._next_event(timeout)
        else:
            scram = ScramClient([self.mechanism], self.username, self.password)
            self._send_sasl("auth", scram.get_client_first().encode(), mechanism=self.mechanism)
            reply = await self._next_event(timeout)
            if reply.tag == f"{{{NS_SASL}}}challenge":
                scram.set_server_first(base64.b64decode(reply.text or "").decode())
                self._send_sasl("response", scram.get_client_final().encode())
                reply = await self._next_event(timeout)
                if reply.tag == f"{{{NS_SASL}}}success":
                    scram.set_server_final(base64.b64decode(reply.text or "").decode())
        if reply.tag != f"{{{NS_SASL}}}success":
            raise XmppError(f"authentication failed: {etree.tostring(reply).decode()}")

    def _send_sasl(self, name: str, data: bytes, *, mechanism: str | None = None) -> None:
        attribute = f" mechanism={quoteattr(mechanism)}" if mechanism else ""
        payload = base64.b64encode(data).decode() or "="
        self.write(f"<{name} xmlns='{NS_SASL}'{attribute}>{payload}</{name}>".encode())

    async def bind(self, resource: str | None = None, timeout: float = 10.0) -> str:
        inner = f"<resource>{escape(resource)}</resource>" if resource else ""
        reply = await self.iq(f"<iq type='set' id='{{id}}'><bind xmlns='{NS_BIND}'>{inner}</bind></iq>", timeout)
        if reply.get("type") != "result":
            raise XmppError(f"bind failed: {etree.tostring(reply).decode()}")
        self.jid = reply.findtext(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid")
        # A new session: whatever XEP-0198 state we had belongs to the old one.
        self.sm_enabled = False
        return self.jid

    async def login(self, *, resource: str | None = None, sm: bool = False, resume: bool = True,
                    max_resume: int | None = None, presence: bool = True, timeout: float = 10.0) -> "LeanClient":
        """connect, bind, optionally enable stream management, optionally send initial presence."""
        await self.connect(timeout)
        await self.bind(resource, timeout)
        if sm:
            await self.enable_sm(resume=resume, max_resume=max_resume, timeout=timeout)
        if presence:
            self.send_presence()
        return self

    # ------------------------------------------------------------------ XEP-0198
    async def enable_sm(self, *, resume: bool = True, max_resume: int | None = None, timeout: float = 10.0) -> None:
        """<enable/>; counting starts now on both sides. Raises XmppError on <failed/>."""
        attributes = " resume='true'" if resume else ""
        if max_resume is not None:
            attributes += f" max='{max_resume}'"
        self.write(f"<enable xmlns='{NS_SM}'{attributes}/>".encode())
        reply = await self._next_event(timeout)
        if reply.tag != f"{{{NS_SM}}}enabled":
            raise XmppError(f"<enable/> refused: {etree.tostring(reply).decode()}")
        self.sm_enabled = True
        self.sm_id = reply.get("id")
        self.sm_resume = reply.get("resume") in ("true", "1")
        self.sm_max = int(reply.get("max")) if reply.get("max") else None
        self.sm_location = reply.get("location")
        self.h_in = 0
        self.acked_h = 0
        self.unacked.clear()

    async def resume(self, timeout: float = 10.0, *, resend: bool = True) -> ResumeResult:
        """On a connection made with connect(): <resume previd h/> for the last enabled session.
        Resumed: the server's h acknowledges our stanzas, the rest are resent (resend=True). Failed: an h
        on <failed/> acknowledges too; what is left stays in `unacked` for resend_unacked() after a fresh
        bind + enable_sm()."""
        if self.sm_id is None:
            raise XmppError("no stream-management session to resume")
        self.write(f"<resume xmlns='{NS_SM}' previd={quoteattr(self.sm_id)} h='{self.h_in}'/>".encode())
        reply = await self._next_event(timeout)
        h = int(reply.get("h")) if reply.get("h") is not None else None
        if reply.tag == f"{{{NS_SM}}}resumed":
            if h is not None:
                self._on_ack(h)
            self.sm_enabled = True
            if resend:
                for stanza in self.unacked:
                    self.write(stanza.data)
            return ResumeResult(True, h)
        if reply.tag == f"{{{NS_SM}}}failed":
            if h is not None:
                self._on_ack(h)
            self.sm_enabled = False
            condition = next((etree.QName(child).localname for child in reply
                              if etree.QName(child).namespace == NS_STANZAS), None)
            return ResumeResult(False, h, condition)
        raise XmppError(f"unexpected answer to <resume/>: {etree.tostring(reply).decode()}")

    def resend_unacked(self) -> int:
        """After a failed resumption and a fresh session: send again what the old session's server never
        acknowledged, counted on the new session (enable_sm() first if acks are wanted)."""
        pending = list(self.unacked)
        self.unacked.clear()
        for stanza in pending:
            self.send_raw(stanza.data, stanza.id)
        return len(pending)

    def request_ack(self) -> None:
        self.write(f"<r xmlns='{NS_SM}'/>".encode())

    async def ack(self, timeout: float = 10.0) -> int:
        """Send <r/> and wait for the next <a/>; returns the server's h."""
        seen = self.acks_received
        self.request_ack()
        await self.wait_until(lambda: self.acks_received > seen, timeout)
        return self.acked_h

    async def wait_all_acked(self, timeout: float = 10.0) -> None:
        """Ask until the server has acknowledged everything sent so far."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.unacked:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise asyncio.TimeoutError(f"{len(self.unacked)} stanzas never acknowledged")
            await self.ack(remaining)

    def send_ack(self) -> None:
        """An unrequested <a h/>: tells the server which of its stanzas we handled."""
        self.write(f"<a xmlns='{NS_SM}' h='{self.h_in}'/>".encode())

    def _on_ack(self, h: int) -> None:
        count = (h - self.acked_h) % MOD32
        if count > len(self.unacked):
            self.protocol_errors.append(f"<a h='{h}'/> acknowledges {count} stanzas, only {len(self.unacked)} "
                                        f"were unacknowledged (previous h {self.acked_h})")
            count = len(self.unacked)
        for _ in range(count):
            stanza = self.unacked.popleft()
            if stanza.id is not None:
                self.acked_ids.append(stanza.id)
        self.acked_h = h

    # ------------------------------------------------------------------ sending
    def send_raw(self, data: bytes, stanza_id: str | None = None) -> None:
        """A stanza: counted and kept until acknowledged once stream management is on."""
        if self.sm_enabled:
            self.unacked.append(_Outgoing(stanza_id, data))
        self.write(data)

    def send_message(self, to: str, body: str, id: str | None = None, type: str = "chat") -> str:
        id = id or _next_id("m")
        self.send_raw(f"<message to={quoteattr(to)} id={quoteattr(id)} type={quoteattr(type)}>"
                      f"<body>{escape(body)}</body></message>".encode(), id)
        return id

    def send_presence(self, priority: int | None = None) -> None:
        inner = f"<priority>{priority}</priority>" if priority is not None else ""
        if self.disco_features is not None:
            from xmppd.caps import ver_of   # the server's own hash function, checked against the XEP's examples
            ver = ver_of(etree.fromstring(self.disco_info()), "sha-1")
            inner += f"<c xmlns='{NS_CAPS}' hash='sha-1' node='{CAPS_NODE}' ver={quoteattr(ver)}/>"
        self.send_raw(f"<presence>{inner}</presence>".encode())

    def disco_info(self, node: str | None = None) -> str:
        features = "".join(f"<feature var={quoteattr(var)}/>" for var in self.disco_features or ())
        node_attribute = f" node={quoteattr(node)}" if node else ""
        return (f"<query xmlns='{NS_DISCO_INFO}'{node_attribute}><identity category='client' type='phone'/>"
                f"{features}</query>")

    async def iq(self, template: str, timeout: float = 10.0) -> etree._Element:
        """Send an iq ('{id}' in the template is replaced by a fresh id) and wait for its answer."""
        id = _next_id("iq")
        future = asyncio.get_running_loop().create_future()
        self._iq_waiters[id] = future
        self.send_raw(template.replace("{id}", id).encode(), id)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._iq_waiters.pop(id, None)

    async def ping(self, timeout: float = 10.0) -> None:
        """XEP-0199 ping to the server: every stanza sent before it has been handled once it returns."""
        await self.iq(f"<iq type='get' id='{{id}}' to={quoteattr(self.domain)}><ping xmlns='{NS_PING}'/></iq>",
                      timeout)

    def write(self, data: bytes) -> None:
        if self.transport is not None and self.connected:
            self.transport.write(data)

    # ------------------------------------------------------------------ ending
    def abort(self) -> None:
        """Drop the TCP connection without closing the stream (a phone losing its radio). The client
        counts as disconnected at once."""
        if self.transport is not None:
            self.transport.abort()
        if self._link is not None:
            self._link.connection_lost(None)

    def stop_reading(self) -> None:
        """Keep the socket open but read nothing more: the server's writes pile up."""
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    async def close(self, timeout: float = 5.0) -> None:
        """</stream:stream>, then wait for the server to close its side."""
        if not self.connected:
            return
        self.write(b"</stream:stream>")
        try:
            await self.wait_until(lambda: not self.connected, timeout)
        except (asyncio.TimeoutError, ConnectionLost):
            pass
        finally:
            self.abort()

    # ------------------------------------------------------------------ receiving
    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until predicate() holds; it is checked after every incoming element.
        Raises ConnectionLost if the connection goes first, asyncio.TimeoutError after timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if not self.connected:
                raise ConnectionLost(f"{self.username}: connection lost (stream error: {self.stream_error})")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise asyncio.TimeoutError(f"{self.username}: condition not met within {timeout} s")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def wait_quiet(self, quiet: float = 1.0, timeout: float = 30.0) -> None:
        """Wait until no message has arrived for `quiet` seconds (or the connection is gone)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.connected and loop.time() < deadline:
            count = len(self.received)
            await asyncio.sleep(quiet)
            if len(self.received) == count:
                return

    # the current connection's events (from _Link)
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.connected = True

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed(data)
            events = list(self._parser.read_events())
        except etree.XMLSyntaxError as error:
            self.stream_error = f"client-side XML error: {error}"
            self.abort()
            return
        for event, element in events:
            if event == "start":
                if self._depth == 0:
                    self._root = element
                self._depth += 1
                continue
            self._depth -= 1
            if self._depth == 1:
                self._dispatch(element)
                self._root.remove(element)
            elif self._depth == 0:
                self.stream_closed = True
                self.abort()
        self._changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connected = False
        self._events.put_nowait(None)
        for future in self._iq_waiters.values():
            if not future.done():
                future.set_exception(ConnectionLost(f"{self.username}: connection lost"))
        self._changed.set()

    def _reset_connection(self) -> None:
        self.transport = None
        self.connected = False
        self.stream_error = None
        self.stream_closed = False
        self.features = None
        self._events = asyncio.Queue()

    def _open_stream(self) -> None:
        self._parser = etree.XMLPullParser(events=("start", "end"), resolve_entities=False, no_network=True)
        self._depth = 0
        self._root = None
        self.write(stream_header(self.domain))

    def _dispatch(self, element: etree._Element) -> None:
        tag = element.tag
        if tag in STANZAS:
            if self.sm_enabled:
                self.h_in = (self.h_in + 1) % MOD32
            self._on_stanza(element)
        elif tag == f"{{{NS_SM}}}r":
            self.requests_received += 1
            if self.auto_ack and self.sm_enabled:
                self.send_ack()
        elif tag == f"{{{NS_SM}}}a":
            self.acks_received += 1
            self._on_ack(int(element.get("h")))
            if self.on_ack is not None:
                self.on_ack(self)
        elif tag == f"{{{NS_STREAMS}}}error":
            self.stream_error = next((etree.QName(child).localname for child in element), "undefined-condition")
            self._events.put_nowait(element)
        else:
            self._events.put_nowait(element)   # features, SASL, <enabled/>, <resumed/>, <failed/>

    def _on_stanza(self, element: etree._Element) -> None:
        kind = etree.QName(element).localname
        if kind == "message":
            self.received.append(Received(
                element.get("id"), element.get("from"), element.findtext(f"{{{NS_CLIENT}}}body"),
                element.get("type", "normal"), element.find(f"{{{NS_DELAY}}}delay") is not None, element))
        elif kind == "iq":
            iq_type = element.get("type")
            if iq_type in ("result", "error"):
                future = self._iq_waiters.get(element.get("id"))
                if future is not None and not future.done():
                    future.set_result(element)
            elif iq_type in ("get", "set"):
                self._answer_iq(element)

    def _answer_iq(self, iq: etree._Element) -> None:
        attributes = f"id={quoteattr(iq.get('id', ''))}"
        if iq.get("from"):
            attributes += f" to={quoteattr(iq.get('from'))}"
        query = iq.find(f"{{{NS_DISCO_INFO}}}query")
        if iq.find(f"{{{NS_PING}}}ping") is not None:
            self.send_raw(f"<iq type='result' {attributes}/>".encode())
        elif query is not None and self.disco_features is not None:
            self.send_raw(f"<iq type='result' {attributes}>{self.disco_info(query.get('node'))}</iq>".encode())
        else:
            self.send_raw(f"<iq type='error' {attributes}><error type='cancel'><service-unavailable "
                          f"xmlns='{NS_STANZAS}'/></error></iq>".encode())

    async def _next_event(self, timeout: float) -> etree._Element:
        element = await asyncio.wait_for(self._events.get(), timeout)
        if element is None:
            raise ConnectionLost(f"{self.username}: connection lost (stream error: {self.stream_error})")
        if element.tag == f"{{{NS_STREAMS}}}error":
            raise XmppError(f"stream error: {self.stream_error}: {etree.tostring(element).decode()}")
        return element

    async def _expect(self, tag: str, timeout: float) -> etree._Element:
        element = await self._next_event(timeout)
        if element.tag != tag:
            raise XmppError(f"expected {tag}, got {etree.tostring(element).decode()}")
        return element


def messages_by_id(clients) -> dict[str, list[Received]]:
    """Every message the clients received, grouped by id."""
    grouped: dict[str, list[Received]] = {}
    for client in clients:
        for message in client.received:
            grouped.setdefault(message.id, []).append(message)
    return grouped


def random_password() -> str:
    return base64.urlsafe_b64encode(os.urandom(12)).decode()
