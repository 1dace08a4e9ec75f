"""XEP-0114 (Jabber Component Protocol): the app server attached to any XMPP server as a component.

``ComponentConnection`` connects to the server's component port, opens
``<stream:stream xmlns='jabber:component:accept' to=DOMAIN>``, answers the
server's stream id with ``<handshake>hex(SHA-1(stream id + secret))</handshake>``
and then carries stanzas both ways: every stanza from the server goes to
``handler(element)`` (the AppServer's handle), and ``send(element)`` writes one.
Stanzas travel in the jabber:component:accept namespace, so the AppServer is
built with ``stanza_ns=NS_COMPONENT``.

When the connection fails or drops it is opened again, after 1 s, then 2, 4 …
up to 60 s (with some jitter), starting again at 1 s once a handshake succeeds.
While it is down, stanzas sent are dropped (logged): the server that made a
request gets no answer and retries it, as it does for any lost iq. A refused
handshake (wrong secret, unknown domain) is logged as an error and retried at
the slowest pace, so a fixed configuration on the server's side is picked up.

The server's bytes go through xmlstream.StreamParser (restricted XML, size
limits), like a client's; a whitespace keepalive is written every minute so
that NAT and firewalls keep an idle connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Callable

from lxml import etree

from ..stanza import serialize
from ..xmlstream import NS_STREAMS, StanzaReceived, StreamClosed, StreamError, StreamOpened, StreamParser
from .component import NS_COMPONENT

log = logging.getLogger("xmppd.appserver.external")

HANDSHAKE = f"{{{NS_COMPONENT}}}handshake"
STREAM_ERROR = f"{{{NS_STREAMS}}}error"


def handshake_digest(stream_id: str, secret: str) -> str:
    """XEP-0114 §3: the lower-case hex SHA-1 of the stream id followed by the shared secret."""
    return hashlib.sha1((stream_id + secret).encode("utf-8")).hexdigest()


def _escape_attr(value: str) -> str:
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;").replace('"', "&quot;"))


class HandshakeRefused(Exception):
    """The server closed the stream instead of accepting the handshake."""


class ComponentConnection:
    """One component's connection to an XMPP server, kept open (see the module docstring)."""

    def __init__(self, host: str, port: int, domain: str, secret: str,
                 handler: Callable[[etree._Element], None] | None = None, *,
                 min_backoff: float = 1.0, max_backoff: float = 60.0, keepalive: float = 60.0,
                 handshake_timeout: float = 30.0, max_stanza_size: int = 1 << 20,
                 max_write_buffer: int = 16 << 20) -> None:
        self.host = host
        self.port = port
        self.domain = domain
        self.secret = secret
        self.handler = handler
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.keepalive = keepalive
        self.handshake_timeout = handshake_timeout
        self.max_stanza_size = max_stanza_size
        self.max_write_buffer = max_write_buffer
        self.connected = asyncio.Event()     # set while a handshake-accepted stream is open
        self.connections = 0                 # handshakes accepted so far
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False

    # ------------------------------------------------------------ public
    def start(self) -> asyncio.Task:
        """Connect, and keep connecting, in the background."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())
        return self._task

    async def stop(self) -> None:
        """Close the stream and stop reconnecting."""
        self._stopping = True
        writer = self._writer
        if writer is not None:
            try:
                writer.write(b"</stream:stream>")
                await asyncio.wait_for(writer.drain(), 2.0)
            except (OSError, asyncio.TimeoutError, ConnectionError):
                pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def send(self, element: etree._Element) -> None:
        """Write one stanza; dropped (and logged) while the stream is down."""
        writer = self._writer
        if writer is None or not self.connected.is_set() or writer.is_closing():
            log.debug("component stream to %s:%s is down; dropped a %s to %s", self.host, self.port,
                      etree.QName(element).localname, element.get("to"))
            return
        if writer.transport.get_write_buffer_size() > self.max_write_buffer:
            # The server stopped reading: do not pile up answers without end; start over.
            log.warning("component stream to %s:%s: over %d bytes unsent; reconnecting", self.host, self.port,
                        self.max_write_buffer)
            writer.transport.abort()
            return
        writer.write(serialize(element))

    async def run(self) -> None:
        """Connect, serve until the stream ends, wait, again; until stop()."""
        backoff = self.min_backoff
        while not self._stopping:
            try:
                await self._session()
                backoff = self.min_backoff    # it worked for a while: reconnect quickly
                log.warning("component stream to %s:%s closed; reconnecting", self.host, self.port)
            except HandshakeRefused as error:
                backoff = self.max_backoff
                log.error("%s:%s refused the component %s: %s", self.host, self.port, self.domain, error)
            except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError) as error:
                log.warning("component stream to %s:%s failed: %s", self.host, self.port,
                            error or type(error).__name__)
            except StreamError as error:
                log.warning("component stream to %s:%s broke: %s", self.host, self.port, error)
            if self._stopping:
                break
            delay = backoff * random.uniform(0.8, 1.0)
            await asyncio.sleep(delay)
            backoff = min(self.max_backoff, backoff * 2)

    # ------------------------------------------------------------ one connection
    async def _session(self) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port),
                                                self.handshake_timeout)
        self._writer = writer
        keepalive: asyncio.Task | None = None
        try:
            writer.write(
                f"<?xml version='1.0'?><stream:stream xmlns='{NS_COMPONENT}' xmlns:stream='{NS_STREAMS}'"
                f" to='{_escape_attr(self.domain)}'>".encode())
            parser = StreamParser(content_ns=NS_COMPONENT, max_stanza_size=self.max_stanza_size)
            pending: list = []
            await asyncio.wait_for(self._handshake(reader, writer, parser, pending), self.handshake_timeout)
            self.connections += 1
            self.connected.set()
            log.info("component %s connected to %s:%s", self.domain, self.host, self.port)
            keepalive = asyncio.get_running_loop().create_task(self._keepalive(writer))
            for event in pending:
                if not self._event(event):
                    return
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                for event in parser.feed(data):
                    if not self._event(event):
                        return
        finally:
            self.connected.clear()
            self._writer = None
            if keepalive is not None:
                keepalive.cancel()
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2.0)
            except (OSError, ConnectionError, asyncio.TimeoutError):
                pass

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         parser: StreamParser, pending: list) -> None:
        stream_id = None
        while True:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("the server closed the connection during the handshake")
            events = parser.feed(data)
            for index, event in enumerate(events):
                if isinstance(event, StreamOpened):
                    stream_id = event.attrs.get("id")
                    if not stream_id:
                        raise HandshakeRefused("the server's stream header has no id")
                    writer.write(f"<handshake>{handshake_digest(stream_id, self.secret)}</handshake>".encode())
                elif isinstance(event, StreamClosed):
                    raise HandshakeRefused("stream closed")
                elif isinstance(event, StanzaReceived):
                    element = event.element
                    if element.tag == HANDSHAKE and stream_id is not None:
                        pending.extend(events[index + 1:])
                        return
                    if element.tag == STREAM_ERROR:
                        raise HandshakeRefused(_stream_error_text(element))
                    raise HandshakeRefused(f"unexpected <{etree.QName(element).localname}/> before the handshake")

    def _event(self, event) -> bool:
        """Handle one event of an established stream; False when the stream is over."""
        if isinstance(event, StreamClosed):
            return False
        if isinstance(event, StanzaReceived):
            element = event.element
            if element.tag == STREAM_ERROR:
                log.warning("stream error from %s:%s: %s", self.host, self.port, _stream_error_text(element))
                return False
            if self.handler is not None:
                try:
                    self.handler(element)
                except Exception:
                    log.exception("the component failed to handle a stanza")
        return True

    async def _keepalive(self, writer: asyncio.StreamWriter) -> None:
        while not writer.is_closing():
            await asyncio.sleep(self.keepalive)
            writer.write(b" ")


def _stream_error_text(error: etree._Element) -> str:
    parts = [etree.QName(child).localname for child in error if etree.QName(child).localname != "text"]
    text = error.findtext("{urn:ietf:params:xml:ns:xmpp-streams}text")
    return " ".join(parts) + (f" ({text})" if text else "") or "stream error"
