"""Client connections: the Twisted shell around C2SMachine.

This file moves bytes and time and nothing else: it feeds the socket to the
state machine, carries out the actions it returns (write, STARTTLS, look up
credentials, bind), keeps the connection and idle-ping timers, and writes one
log line per connection event.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from functools import partial
from typing import TYPE_CHECKING

from twisted.internet import protocol
from twisted.internet.interfaces import IPushProducer, IReactorTime
from zope.interface import implementer

from . import c2s_machine as m
from .aio import run_soon
from .auth_throttle import AuthThrottle
from .rate_limit import TokenBucket
from .stanza import StanzaError, make, qname, serialize
from .stream_mgmt import ResumeFailed, failed_bytes
from .tls import TLSSettings

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

log = logging.getLogger("xmppd.c2s")

NS_PING = "urn:xmpp:ping"

# A client that does not read what we send: once the socket's send buffer is full we stop reading from
# it, and drop it if it stays stuck this long or if this much more piles up for it meanwhile.
WRITE_STALL_TIMEOUT = 60.0
MAX_UNSENT_BYTES = 4 * 1024 * 1024
# After our closing tag, how long a peer gets to read it and hang up before the socket is cut.
CLOSE_GRACE = 5.0


class C2SFactory(protocol.ServerFactory):
    """Shared by every client connection: settings, throttle, TLS, the server core."""

    noisy = False  # our own log lines say more than Twisted's "Starting factory"

    def __init__(self, server: "Server", settings: m.StreamSettings, tls: TLSSettings | None,
                 throttle: AuthThrottle, clock: IReactorTime, *, direct_tls: bool = False) -> None:
        self.server = server
        self.settings = settings
        self.tls = tls
        self.throttle = throttle
        self.clock = clock
        self.direct_tls = direct_tls
        self.configure(server.config.c2s)
        self.connections: set[C2SConnection] = set()
        self.unauthenticated: dict[str, int] = {}   # address -> connections not yet bound

    def configure(self, c2s) -> None:
        """[c2s] timers and limits, for connections made from now on (at start and on reload)."""
        self.connection_timeout = c2s.connection_timeout
        self.ping_interval = c2s.ping_interval
        self.ping_timeout = c2s.ping_timeout
        self.max_unauthenticated = c2s.max_unauthenticated_per_address
        self.read_rate = c2s.max_bytes_per_second
        self.read_burst = max(c2s.max_bytes_per_second, c2s.max_stanza_size)

    def buildProtocol(self, addr) -> "C2SConnection | None":
        if self.unauthenticated.get(addr.host, 0) >= self.max_unauthenticated:
            log.warning("c2s %s refused: %d connections from this address have not logged in yet",
                        addr.host, self.max_unauthenticated)
            return None
        connection = C2SConnection(self)
        connection.factory = self
        return connection

    def count_unauthenticated(self, host: str, change: int) -> None:
        count = self.unauthenticated.get(host, 0) + change
        if count > 0:
            self.unauthenticated[host] = count
        else:
            self.unauthenticated.pop(host, None)


@implementer(IPushProducer)
class C2SConnection(protocol.Protocol):
    """One client socket. It is also the producer of what is written to it, so that Twisted tells it
    when the client stops reading (pauseProducing) and it can stop reading in turn."""

    def __init__(self, factory: C2SFactory) -> None:
        self.factory = factory
        self.address = "?"
        self.host = "?"
        self.machine: m.C2SMachine | None = None
        self.tls = factory.tls        # the certificate when it connected; a reload changes only later ones
        self.session: "Session | None" = None
        self._timer = None            # connection timeout before bind, idle timer after
        self._ping_outstanding = False
        self._closing = False
        self._counted = False         # in the factory's count of connections not yet bound
        self._read_blockers: set[str] = set()
        self._write_blocked = False
        self._unsent = 0              # bytes written while the client was not reading
        self._stall_timer = None
        self._abort_timer = None
        self._bucket: TokenBucket | None = None
        self._rate_noted = False

    # ------------------------------------------------------------ Twisted events
    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.address = f"[{peer.host}]:{peer.port}" if ":" in peer.host else f"{peer.host}:{peer.port}"
        self.host = peer.host
        tls_active = self.factory.direct_tls
        self.machine = m.C2SMachine(self.factory.settings, tls_active=tls_active,
                                    channel_bindings=self._channel_bindings)
        self.factory.connections.add(self)
        self.factory.count_unauthenticated(self.host, +1)
        self._counted = True
        self.transport.registerProducer(self, True)
        if self.factory.read_rate:
            self._bucket = TokenBucket(self.factory.read_rate, self.factory.read_burst,
                                       clock=self.factory.clock.seconds)
        self._timer = self.factory.clock.callLater(self.factory.connection_timeout, self._timed_out,
                                                   "did not log in in time")
        log.info("c2s %s connected%s", self.address, " (direct TLS)" if tls_active else "")

    def dataReceived(self, data: bytes) -> None:
        if self._bucket is not None:
            self._limit_rate(len(data))
        if self.session is not None:
            self._note_activity()
        try:
            self._run(self.machine.receive(data))
        except Exception:
            # A bug must cost this one connection, never the server.
            log.exception("c2s %s: internal error", self.address)
            self._run(self.machine.close("internal-server-error", reason="internal error"))
        self._wait_for_machine()

    def connectionLost(self, reason=None) -> None:
        if not self._closing:
            self._stop(resumable=True)   # the socket broke: EOF or reset without a closing tag
        self.machine.connection_lost()
        self.factory.connections.discard(self)
        self._uncount()
        self._cancel_timer()
        for timer in (self._stall_timer, self._abort_timer):
            if timer is not None and timer.active():
                timer.cancel()
        why = reason.getErrorMessage() if reason is not None else "closed"
        if self.session is not None:
            log.info("c2s %s %s disconnected: %s", self.address, self.session.full, why)
        else:
            log.info("c2s %s disconnected before binding: %s", self.address, why)

    # ------------------------------------------------------------ what the session needs (session.Connection)
    def write(self, data: bytes) -> None:
        if self._closing:
            return
        if self._write_blocked:
            self._unsent += len(data)
            if self._unsent > MAX_UNSENT_BYTES:
                self._abort(f"stopped reading ({self._unsent} bytes waiting)")
                return
        self.transport.write(data)

    def close_stream(self, condition: str | None = None, text: str | None = None, reason: str = "",
                     app_error: bytes = b"") -> None:
        self._run(self.machine.close(condition, text, reason=reason or "closed by server", app_error=app_error))

    def pause_reading(self) -> None:
        self._block_reading("session", True)

    def resume_reading(self) -> None:
        self._block_reading("session", False)

    # ------------------------------------------------------------ IPushProducer: the client's reading
    def pauseProducing(self) -> None:
        """The socket's send buffer is full: the client is not reading what we send."""
        self._write_blocked = True
        self._block_reading("writes", True)
        if self._stall_timer is None or not self._stall_timer.active():
            self._stall_timer = self.factory.clock.callLater(
                WRITE_STALL_TIMEOUT, self._abort, f"read nothing for {WRITE_STALL_TIMEOUT:.0f} s")

    def resumeProducing(self) -> None:
        self._write_blocked = False
        self._unsent = 0
        if self._stall_timer is not None and self._stall_timer.active():
            self._stall_timer.cancel()
        self._block_reading("writes", False)

    def stopProducing(self) -> None:
        """The transport is going away; connectionLost does the clean-up."""

    def _block_reading(self, reason: str, blocked: bool) -> None:
        """Reading stops while any reason holds: a slow handler, a client that does not read, or the
        machine waiting for an answer (credentials, bind)."""
        was_blocked = bool(self._read_blockers)
        if blocked:
            self._read_blockers.add(reason)
        else:
            self._read_blockers.discard(reason)
        if self._closing or was_blocked == bool(self._read_blockers):
            return
        if self._read_blockers:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    def _limit_rate(self, size: int) -> None:
        """Over [c2s] max_bytes_per_second: stop reading until the client is back within it."""
        wait = self._bucket.take(size)
        if wait <= 0 or "rate" in self._read_blockers:
            return
        if not self._rate_noted:
            self._rate_noted = True
            log.info("c2s %s %s sends faster than %d bytes/s: reading slowed down", self.address,
                     self.session.full if self.session else "-", self.factory.read_rate)
        self._block_reading("rate", True)
        self.factory.clock.callLater(wait, self._block_reading, "rate", False)

    def _wait_for_machine(self) -> None:
        self._block_reading("machine", self.machine.waiting)

    # ------------------------------------------------------------ carrying out actions
    def _run(self, actions: list[m.Action]) -> None:
        for action in actions:
            if isinstance(action, m.Send):
                self.transport.write(action.data)
            elif isinstance(action, m.StanzaIn):
                self.factory.server.stanza_counts.received[action.element.tag] += 1
                self.session.handle(action.element)
            elif isinstance(action, m.LookupCredentials):
                run_soon(self._look_up(action), f"credential lookup for {self.address}")
            elif isinstance(action, m.BindRequested):
                self._bind(action.resource)
            elif isinstance(action, m.Authenticated):
                self.factory.throttle.record_success(self.host, action.username)
                log.info("c2s %s authenticated as %s@%s (%s)", self.address, action.username,
                         self.factory.server.domain, action.mechanism)
            elif isinstance(action, m.AuthFailed):
                self.factory.throttle.record_failure(self.host, action.username)
                log.warning("c2s %s authentication failed for %r (%s): %s", self.address,
                            action.username, action.mechanism, action.condition)
            elif isinstance(action, m.StartTLS):
                self.transport.startTLS(self.tls.context_factory)
                self.machine.tls_started()
            elif isinstance(action, m.NonzaIn):
                handler = self.factory.server.nonza_handler(action.element.tag)
                if handler is None:
                    self._run(self.machine.close("unsupported-stanza-type",
                                                 f"{action.element.tag} is not supported"))
                else:
                    # In the client's order: after the stanzas it sent before (RFC 6120 §10.1).
                    self.session.handle(partial(handler, self.session, action.element))
            elif isinstance(action, m.ResumeRequested):
                run_soon(self._resume(action), f"resumption for {self.address}")
            elif isinstance(action, m.PreAuthIq):
                run_soon(self._pre_auth(action.element), f"registration from {self.address}")
            elif isinstance(action, m.Closed):
                self._close(action)

    async def _look_up(self, action: m.LookupCredentials) -> None:
        # Slow down repeated failures from this address or for this name; the delay is the same whether
        # the account exists or not.
        delay = self.factory.throttle.delay(self.host, action.username)
        if delay > 0:
            log.info("c2s %s login attempt for %r held %.1f s after repeated failures", self.address,
                     action.username, delay)
            await asyncio.sleep(delay)
        stored = None
        if action.username is not None:
            for mechanism in (action.mechanism, *action.fallback):
                stored = await self.factory.server.storage.get_credentials(action.username, mechanism)
                if stored is not None:
                    break
        if not self._closing:
            self._run(self.machine.credentials(stored))
            self._wait_for_machine()

    async def _pre_auth(self, iq) -> None:
        """XEP-0077 registration before login; the stream waits until it is answered."""
        try:
            await self.factory.server.modules["register"].before_auth(self, iq)
        finally:
            if not self._closing:
                self._run(self.machine.pre_auth_answered())
                self._wait_for_machine()

    def _bind(self, resource: str | None) -> None:
        try:
            self.session = self.factory.server.bind(self, self.machine.username, resource)
        except StanzaError as error:
            self._run(self.machine.bind_failed(error.condition, error.text))
            return
        self._uncount()
        log.info("c2s %s bound %s", self.address, self.session.full)
        self._cancel_timer()   # the log-in deadline is met; from now on the idle timer runs
        self._note_activity()
        self._run(self.machine.bound(self.session.full))
        self._wait_for_machine()

    async def _resume(self, action: m.ResumeRequested) -> None:
        """XEP-0198 §5: take over a hibernated (or still connected) session instead of binding."""
        keeper = self.factory.server.stream_mgmt
        if keeper is None:
            self._run(self.machine.resume_failed(failed_bytes("feature-not-implemented")))
            self._wait_for_machine()
            return
        try:
            session = await keeper.resume(self.machine.username, action.previd, action.h)
        except ResumeFailed as failure:
            log.info("c2s %s could not resume %s@%s: %s", self.address, self.machine.username,
                     self.factory.server.domain, failure)
            if failure.stream_error:
                self._run(self.machine.close(failure.stream_error, str(failure), reason=str(failure),
                                             app_error=failure.data))
            elif not self._closing:
                self._run(self.machine.resume_failed(failure.data))
                self._wait_for_machine()
            return
        if self._closing:
            keeper.hibernate(session)   # this connection broke while the resumption was under way
            return
        self.session = session
        self._uncount()
        self._cancel_timer()
        self._note_activity()
        keeper.attach(session, self)
        self._run(self.machine.resumed(session.full))
        self._wait_for_machine()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.factory.count_unauthenticated(self.host, -1)

    def _close(self, action: m.Closed) -> None:
        log.info("c2s %s %s closing: %s", self.address, self._who(), action.reason)
        # A client that closed its stream ended its session; one that went silent may come back (XEP-0198).
        self._stop(resumable=action.condition == "connection-timeout")
        self.transport.loseConnection()
        # loseConnection waits until everything is written; a peer that never reads would keep the socket.
        self._abort_timer = self.factory.clock.callLater(CLOSE_GRACE, self.transport.abortConnection)

    def _abort(self, why: str) -> None:
        """Cut a client that stopped reading: no stream error, it would not read it anyway."""
        if self._closing:
            return
        log.warning("c2s %s %s dropped: %s", self.address, self._who(), why)
        self.machine.connection_lost()
        self._stop(resumable=True)
        self.transport.abortConnection()

    def _stop(self, *, resumable: bool) -> None:
        """Nothing more is written or routed to this connection. Its session ends, or hibernates if it
        is `resumable` and has stream management; a session already resumed elsewhere is left alone."""
        self._closing = True
        session = self.session
        if session is not None and session.connection is self:
            self.factory.server.connection_lost(session, resumable=resumable)
        self._cancel_timer()

    def _who(self) -> str:
        return self.session.full if self.session is not None else (self.machine.username or "-")

    # ------------------------------------------------------------ TLS
    def _channel_bindings(self) -> dict[str, bytes]:
        tls = self.tls
        if tls is None:
            return {}
        return tls.channel_bindings(self.transport)

    # ------------------------------------------------------------ timers
    def _note_activity(self) -> None:
        """Any data from a bound client restarts the idle clock (XEP-0199 §4.2: ping only silent clients)."""
        self._ping_outstanding = False
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.factory.ping_interval)
        else:
            self._timer = self.factory.clock.callLater(self.factory.ping_interval, self._idle)

    def _idle(self) -> None:
        if self._ping_outstanding:
            self._timed_out("did not answer a ping")
            return
        ping = make("iq", {"type": "get", "id": "ping-" + secrets.token_hex(4), "from": self.factory.server.domain,
                           "to": self.session.full if self.session else None})
        ping.append(ping.makeelement(qname(NS_PING, "ping"), nsmap={None: NS_PING}))
        self.session.transmit(serialize(ping))
        self._ping_outstanding = True
        self._timer = self.factory.clock.callLater(self.factory.ping_timeout, self._idle)

    def _timed_out(self, why: str) -> None:
        self._timer = None
        self._run(self.machine.close("connection-timeout", why, reason=why))

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
