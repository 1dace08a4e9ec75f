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
from typing import TYPE_CHECKING

from twisted.internet import protocol
from twisted.internet.interfaces import IReactorTime

from . import c2s_machine as m
from .aio import run_soon
from .auth_throttle import AuthThrottle
from .stanza import make, qname, serialize
from .tls import TLSSettings

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

log = logging.getLogger("xmppd.c2s")

NS_PING = "urn:xmpp:ping"


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
        c2s = server.config.c2s
        self.connection_timeout = c2s.connection_timeout
        self.ping_interval = c2s.ping_interval
        self.ping_timeout = c2s.ping_timeout
        self.connections: set[C2SConnection] = set()

    def buildProtocol(self, addr) -> "C2SConnection":
        connection = C2SConnection(self)
        connection.factory = self
        return connection


class C2SConnection(protocol.Protocol):
    def __init__(self, factory: C2SFactory) -> None:
        self.factory = factory
        self.address = "?"
        self.machine: m.C2SMachine | None = None
        self.session: "Session | None" = None
        self._timer = None            # connection timeout before bind, idle timer after
        self._ping_outstanding = False
        self._closing = False
        self._paused = False

    # ------------------------------------------------------------ Twisted events
    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.address = f"[{peer.host}]:{peer.port}" if ":" in peer.host else f"{peer.host}:{peer.port}"
        self.host = peer.host
        tls_active = self.factory.direct_tls
        self.machine = m.C2SMachine(self.factory.settings, tls_active=tls_active,
                                    channel_bindings=self._channel_bindings)
        self.factory.connections.add(self)
        self._timer = self.factory.clock.callLater(self.factory.connection_timeout, self._timed_out,
                                                   "did not log in in time")
        log.info("c2s %s connected%s", self.address, " (direct TLS)" if tls_active else "")

    def dataReceived(self, data: bytes) -> None:
        if self.session is not None:
            self._note_activity()
        try:
            self._run(self.machine.receive(data))
        except Exception:
            # A bug must cost this one connection, never the server.
            log.exception("c2s %s: internal error", self.address)
            self._run(self.machine.close("internal-server-error", reason="internal error"))

    def connectionLost(self, reason=None) -> None:
        self.factory.connections.discard(self)
        self._cancel_timer()
        why = reason.getErrorMessage() if reason is not None else "closed"
        if self.session is not None:
            self.factory.server.unbind(self.session)
            log.info("c2s %s %s disconnected: %s", self.address, self.session.full, why)
        else:
            log.info("c2s %s disconnected before binding: %s", self.address, why)

    # ------------------------------------------------------------ what the session needs (session.Connection)
    def write(self, data: bytes) -> None:
        if not self._closing:
            self.transport.write(data)

    def close_stream(self, condition: str | None = None, text: str | None = None, reason: str = "") -> None:
        self._run(self.machine.close(condition, text, reason=reason or "closed by server"))

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()

    # ------------------------------------------------------------ carrying out actions
    def _run(self, actions: list[m.Action]) -> None:
        for action in actions:
            if isinstance(action, m.Send):
                self.transport.write(action.data)
            elif isinstance(action, m.StanzaIn):
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
                self.transport.startTLS(self.factory.tls.context_factory)
                self.machine.tls_started()
            elif isinstance(action, m.NonzaIn):
                self._run(self.machine.close("unsupported-stanza-type",
                                             f"{action.element.tag} is not supported"))
            elif isinstance(action, m.PreAuthIq):
                handler = self.factory.server.modules.get("register")
                run_soon(handler.before_auth(self, action.element) if handler else None,
                         f"registration from {self.address}")
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
            stored = await self.factory.server.storage.get_credentials(action.username, action.mechanism)
        if self.machine.phase is not m.Phase.CLOSED and self.transport is not None and not self._closing:
            self._run(self.machine.credentials(stored))

    def _bind(self, resource: str | None) -> None:
        self.session = self.factory.server.bind(self, self.machine.username, resource)
        log.info("c2s %s bound %s", self.address, self.session.full)
        self._cancel_timer()   # the log-in deadline is met; from now on the idle timer runs
        self._note_activity()
        self._run(self.machine.bound(self.session.full))

    def _close(self, action: m.Closed) -> None:
        self._closing = True
        who = self.session.full if self.session is not None else (self.machine.username or "-")
        log.info("c2s %s %s closing: %s", self.address, who, action.reason)
        if self.session is not None:
            self.factory.server.unbind(self.session)
        self._cancel_timer()
        self.transport.loseConnection()

    # ------------------------------------------------------------ TLS
    def _channel_bindings(self) -> dict[str, bytes]:
        tls = self.factory.tls
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
        self.transport.write(serialize(ping))
        self._ping_outstanding = True
        self._timer = self.factory.clock.callLater(self.factory.ping_timeout, self._idle)

    def _timed_out(self, why: str) -> None:
        self._timer = None
        self._run(self.machine.close("connection-timeout", why, reason=why))

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
