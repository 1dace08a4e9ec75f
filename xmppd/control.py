"""The control socket: how `xmppctl` talks to the running server.

xmppctl works on storage directly for what storage holds (accounts, push
registrations); what only the running process knows (its sessions, their
queues, its counters) it asks here. A Unix socket ([control] socket, mode
0600) rather than a TCP port: the file's owner is the server's user, so the
kernel does the authentication, and nothing is reachable from the network.

The protocol is JSON lines: one request object per line, {"command": NAME,
...arguments}, answered by one line, {"ok": true, "result": ...} or
{"ok": false, "error": "what went wrong"}. ControlCommands is the logic
(testable without a socket); ControlProtocol the Twisted shell.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.protocols.basic import LineOnlyReceiver

from . import __version__
from .jid import JID, InvalidJID
from .metrics import session_counts

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("xmppd.control")

# RFC 6120 §4.9.3.14: the entity violated a local service policy. ejabberd ends kicked sessions with it.
KICK_CONDITION = "policy-violation"
# What an account whose deletion ends its sessions is told (as for an in-band removal, XEP-0077 §3.2).
DELETED_CONDITION = "not-authorized"
MAX_REQUEST = 65536


class ControlError(Exception):
    """A request that cannot be carried out; the message goes back to xmppctl."""


class ControlCommands:
    """What the control socket can be asked. `factories` are the client listeners (for the count of
    connections); `started` is time.monotonic() at start."""

    def __init__(self, server: "Server", factories: list, started: float) -> None:
        self.server = server
        self.factories = factories
        self.started = started

    async def run(self, request: Any) -> Any:
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            raise ControlError('a request is a JSON object with a "command"')
        handler = COMMANDS.get(request["command"])
        if handler is None:
            raise ControlError(f"unknown command {request['command']!r}; known: {', '.join(COMMANDS)}")
        return await handler(self, request)

    async def status(self, request: dict) -> dict:
        """The numbers of the metrics endpoint (metrics.py), for a person."""
        server = self.server
        live, hibernated = session_counts(server)
        push = "push" in server.modules
        return {
            "version": __version__,
            "domain": server.domain,
            "pid": os.getpid(),
            "uptime": time.monotonic() - self.started,
            "connections": sum(len(factory.connections) for factory in self.factories),
            "sessions": live,
            "hibernated": hibernated,
            "offline_messages": await server.storage.count_offline(),
            "push_registrations": await server.storage.count_push_registrations() if push else None,
        }

    async def kick(self, request: dict) -> dict:
        """End an account's sessions (or one resource's), live and hibernated, with a stream error;
        they cannot be resumed, and what their queues held goes back to offline storage."""
        jid = self._local_jid(request.get("jid"))
        ended = self.server.close_sessions(str(jid.bare), KICK_CONDITION, "kicked by the administrator",
                                           resource=jid.resource)
        if ended:
            log.info("control: %d sessions of %s kicked", ended, jid)
        return {"kicked": ended}

    async def account_deleted(self, request: dict) -> dict:
        """`xmppctl deluser` deleted the account from storage: forget it here too and end its sessions."""
        jid = self._local_jid(request.get("jid"))
        if jid.resource is not None:
            raise ControlError("an account is a bare JID")
        for pending in self.server.fire("account-deleted", jid.local):
            await pending
        ended = self.server.close_sessions(str(jid), DELETED_CONDITION, "the account was removed")
        log.info("control: account %s deleted by the administrator; %d sessions ended", jid, ended)
        return {"kicked": ended}

    async def push_removed(self, request: dict) -> dict:
        """`xmppctl push remove` deleted registrations from storage: stop pushing to them."""
        jid = self._local_jid(request.get("jid"))
        registrations = request.get("registrations")
        if not isinstance(registrations, list) or not all(
                isinstance(r, list) and len(r) == 2 and all(isinstance(part, str) for part in r)
                for r in registrations):
            raise ControlError('"registrations" must be a list of [app server JID, node] pairs')
        push = self.server.modules.get("push")
        if push is not None:
            for service, node in registrations:
                push.forget(jid.local, service, node)
        return {"forgotten": len(registrations) if push is not None else 0}

    def _local_jid(self, text: Any) -> JID:
        if not isinstance(text, str):
            raise ControlError('"jid" must be a string')
        try:
            jid = JID.parse(text)
        except InvalidJID as error:
            raise ControlError(f"{text!r} is not a valid JID: {error}") from None
        if jid.local is None or jid.domain != self.server.domain:
            raise ControlError(f"{text} is not an account of {self.server.domain}")
        return jid


COMMANDS = {"status": ControlCommands.status, "kick": ControlCommands.kick,
            "account-deleted": ControlCommands.account_deleted, "push-removed": ControlCommands.push_removed}


class ControlProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST

    def __init__(self, commands: ControlCommands) -> None:
        self.commands = commands

    def lineReceived(self, line: bytes) -> None:
        Deferred.fromFuture(asyncio.ensure_future(self._answer(line)))

    async def _answer(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            answer = {"ok": True, "result": await self.commands.run(request)}
        except (ValueError, ControlError) as error:
            log.warning("control: refused request %.200r: %s", line, error)
            answer = {"ok": False, "error": str(error)}
        except Exception as error:
            log.exception("control: request %.200r failed", line)
            answer = {"ok": False, "error": f"internal error: {error}"}
        self.sendLine(json.dumps(answer).encode())

    def lineLengthExceeded(self, line: bytes) -> None:
        log.warning("control: request longer than %d bytes; connection closed", MAX_REQUEST)
        self.sendLine(json.dumps({"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"}).encode())
        self.transport.loseConnection()


class ControlFactory(protocol.ServerFactory):
    noisy = False

    def __init__(self, commands: ControlCommands) -> None:
        self.commands = commands

    def buildProtocol(self, addr) -> ControlProtocol:
        return ControlProtocol(self.commands)


class ControlSocketInUse(Exception):
    """Another server answers on the control socket."""


def listen(reactor: Any, path: str, commands: ControlCommands) -> Any:
    """Listen on `path` with mode 0600 (created so: there is no moment when others could connect). A
    file left by a server that died is replaced; a server that still answers there is an error."""
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)   # nobody listens: left behind by a crash
        else:
            raise ControlSocketInUse(f"another xmppd answers on the control socket {path}")
        finally:
            probe.close()
    old_umask = os.umask(0o177)
    try:
        return reactor.listenUNIX(path, ControlFactory(commands), mode=0o600)
    finally:
        os.umask(old_umask)
