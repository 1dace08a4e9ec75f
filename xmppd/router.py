"""Local delivery rules of RFC 6120 §10 and RFC 6121 §8.5.

Every stanza, whether a client sent it or the server made it, goes through
``route()``: server-addressed iqs to the registered handlers, messages to the
highest-priority available resources, presence to the presence module.
Synchronous where it can be (the hot path of a chat message never waits),
returning an awaitable only when storage must be asked.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Awaitable, Callable

from lxml import etree

from .aio import settle
from .importance import is_call_signal, is_kept
from .jid import JID, InvalidJID
from .stanza import IQ, MESSAGE, PRESENCE, StanzaError, error_reply, serialize

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

log = logging.getLogger("xmppd.router")

IQ_TYPES = frozenset(("get", "set", "result", "error"))


class Router:
    def __init__(self, server: "Server") -> None:
        self.server = server
        # Set by the offline-storage module; without it, a message for an account with no available
        # resource is answered with <service-unavailable/> (RFC 6121 §8.5.2.2.1).
        self.offline_handler = None
        # Checks every routed stanza passes first (XEP-0191 blocking): screen(stanza, to, origin) returns
        # True if it took the stanza (dropped or answered it), False to let it pass, or an awaitable of
        # either when it must ask storage first.
        self.screens: list[Callable[[etree._Element, JID, "Session | None"], "bool | Awaitable[bool]"]] = []

    # ------------------------------------------------------------ entry points
    def from_client(self, session: "Session", stanza: etree._Element) -> Awaitable | None:
        """A stanza a bound client sent ('from' already stamped by the stream)."""
        to_text = stanza.get("to")
        to: JID | None = None
        if to_text is not None:
            try:
                to = JID.parse(to_text)
            except InvalidJID as error:
                return self.bounce(stanza, "jid-malformed", str(error))
        tag = stanza.tag
        if tag == PRESENCE:
            return self.server.modules["presence"].outbound(session, stanza, to)
        if tag == IQ:
            problem = _iq_problem(stanza)
            if problem:
                return self.bounce(stanza, "bad-request", problem)
            if to is None:
                # RFC 6120 §10.3.3: an iq without 'to' is handled by the server for the user's account.
                return self._iq_to_account(stanza, session.bare_jid, session)
        elif to is None:
            to = session.bare_jid  # RFC 6120 §10.3.1: a message without 'to' goes to the sender's bare JID
        return self.route(stanza, to, session)

    def route(self, stanza: etree._Element, to: JID, origin: "Session | None" = None) -> Awaitable | None:
        """Deliver a stanza whose 'from' is trustworthy to `to` (`origin`: the local session that sent it)."""
        return self._screen(stanza, to, origin, 0)

    def _screen(self, stanza: etree._Element, to: JID, origin: "Session | None", first: int) -> Awaitable | None:
        for index in range(first, len(self.screens)):
            verdict = self.screens[index](stanza, to, origin)
            if verdict is True:
                return None
            if verdict is not False:
                return self._screen_later(verdict, stanza, to, origin, index + 1)
        return self._route(stanza, to, origin)

    async def _screen_later(self, verdict: Awaitable[bool], stanza: etree._Element, to: JID,
                            origin: "Session | None", next_screen: int) -> None:
        try:
            taken = await verdict
        except Exception:
            log.exception("screening a %s to %s failed", etree.QName(stanza).localname, to)
            await settle(self.bounce(stanza, "internal-server-error"))
            return
        if not taken:
            await settle(self._screen(stanza, to, origin, next_screen))

    def _route(self, stanza: etree._Element, to: JID, origin: "Session | None") -> Awaitable | None:
        if origin is not None and stanza.tag == MESSAGE:
            # A message a local user sent, on its way (XEP-0280 sent carbons, archiving); delivery never
            # waits for what the hooks leave to do (the archive write).
            pending = self.server.fire("message-sent", origin, stanza, to)
            if pending:
                self.server.schedule(pending, f"a message from {origin.full}")
        if to.domain != self.server.domain:
            component = self.server.components.get(to.domain)
            if component is not None:
                component(stanza)
                return None
            # No server-to-server connections yet (RFC 6120 §10.4.3).
            if stanza.tag == PRESENCE:
                return None
            return self.bounce(stanza, "remote-server-not-found", f"{to.domain} is not reachable from here")
        if to.local is None:
            return self._to_server(stanza, to, origin)
        if stanza.tag == MESSAGE:
            # Modules may change a message for an account before it is delivered or stored (the archive stamps
            # its stanza-id); one that must ask storage first returns an awaitable, and delivery waits for it.
            pending = self.server.fire("message-to-account", stanza, to)
            if pending:
                return self._to_account_after(pending, stanza, to, origin)
        return self._to_account(stanza, to, origin)

    async def _to_account_after(self, pending: list[Awaitable], stanza: etree._Element, to: JID,
                                origin: "Session | None") -> None:
        for awaitable in pending:
            try:
                await awaitable
            except Exception:
                log.exception("a message-to-account hook failed for a message to %s", to)
        await settle(self._to_account(stanza, to, origin))

    def _to_account(self, stanza: etree._Element, to: JID, origin: "Session | None") -> Awaitable | None:
        if to.resource is None:
            return self._to_bare(stanza, to, origin)
        return self._to_full(stanza, to, origin)

    def bounce(self, stanza: etree._Element, condition: str, text: str | None = None) -> Awaitable | None:
        """Answer a stanza with an error. Errors (RFC 6120 §8.3.1) and iq results (§8.2.3) are never answered,
        whatever is wrong with them: dropped, so that two entities cannot bounce errors back and forth."""
        if stanza.get("type") == "error" or _is_iq_result(stanza) or stanza.get("from") is None:
            return None
        reply = error_reply(stanza, condition, text)
        try:
            return self.route(reply, JID.parse(reply.get("to")))
        except InvalidJID:
            return None

    # ------------------------------------------------------------ to the server itself
    def _to_server(self, stanza: etree._Element, to: JID, origin: "Session | None") -> Awaitable | None:
        tag = stanza.tag
        if tag == IQ:
            if stanza.get("type") in ("result", "error"):
                self.server.answered(stanza)   # answers to the server's own requests (and pings)
                return None
            return self._call_iq_handler(stanza, "server", to, origin)
        if tag == MESSAGE:
            return self.bounce(stanza, "service-unavailable", "the server does not take messages")
        return None  # presence to the server: nothing to do

    # ------------------------------------------------------------ to user@domain
    def _to_bare(self, stanza: etree._Element, to: JID, origin: "Session | None") -> Awaitable | None:
        tag = stanza.tag
        if tag == MESSAGE:
            return self._message_to_bare(stanza, to)
        if tag == PRESENCE:
            return self.server.modules["presence"].inbound(stanza, to)
        # RFC 6121 §8.5.2.1.3 / §8.5.2.2.3: the server answers iqs to a bare JID for the account.
        return self._iq_to_account(stanza, to, origin)

    def _iq_to_account(self, iq: etree._Element, to: JID, origin: "Session | None") -> Awaitable | None:
        if iq.get("type") in ("result", "error"):
            self.server.answered(iq)   # answers to requests the server made for the account (push)
            return None
        if self.server.sessions_of(str(to)):
            return self._call_iq_handler(iq, "account", to, origin)
        return self._iq_to_offline_account(iq, to, origin)

    async def _iq_to_offline_account(self, iq: etree._Element, to: JID, origin: "Session | None") -> None:
        if not await self.server.storage.user_exists(to.local):
            await settle(self.bounce(iq, "service-unavailable"))
            return
        await settle(self._call_iq_handler(iq, "account", to, origin))

    def _message_to_bare(self, stanza: etree._Element, to: JID) -> Awaitable | None:
        message_type = stanza.get("type") or "normal"
        if message_type == "error":
            return None
        if message_type == "groupchat":
            return self.bounce(stanza, "service-unavailable")
        candidates = [s for s in self.server.available_sessions(str(to)) if s.priority >= 0]
        # RFC 6121 §8.5.2.1.1 lets the server pick the highest-priority resources or all of them. A call
        # (XEP-0353) rings on every device, and every device must learn that it stopped ringing.
        if message_type != "headline" and candidates and not is_call_signal(stanza):
            top = max(s.priority for s in candidates)
            candidates = [s for s in candidates if s.priority == top]
        if candidates:
            self._deliver_message(stanza, to.local, candidates)
            return None
        if message_type == "headline":
            return None
        self.server.fire("message-delivered", stanza, to.local, ())
        return self._no_available_resource(stanza, to)

    def _deliver_message(self, stanza: etree._Element, username: str, sessions) -> None:
        """Write a message to these sessions of one account, serialised once. If a stream-managed
        session is among them and the message is one the server keeps, it is recorded in the journal
        first (without waiting for the commit), so that it survives until a client acknowledges it.
        Modules see it first ('message-delivered'; they may still change it: carbons takes out
        <private/>)."""
        self.server.fire("message-delivered", stanza, username, sessions)
        data = serialize(stanza)
        entry = None
        if any(session.sm is not None for session in sessions) and is_kept(stanza):
            entry = self.server.journal.add(username, data, datetime.now(timezone.utc))
        for session in sessions:
            session.deliver(stanza, data, entry)

    async def _no_available_resource(self, stanza: etree._Element, to: JID) -> None:
        if not await self.server.storage.user_exists(to.local):
            await settle(self.bounce(stanza, "service-unavailable"))
            return
        if self.offline_handler is not None:
            await settle(self.offline_handler(stanza, to))
            return
        await settle(self.bounce(stanza, "service-unavailable", f"{to} is not online"))

    # ------------------------------------------------------------ to user@domain/resource
    def _to_full(self, stanza: etree._Element, to: JID, origin: "Session | None") -> Awaitable | None:
        session = self.server.session(to)
        tag = stanza.tag
        if tag == PRESENCE:
            return self.server.modules["presence"].inbound(stanza, to)
        if session is not None:
            if tag == MESSAGE:
                self._deliver_message(stanza, to.local, (session,))
            else:
                session.deliver(stanza)
            return None
        if tag == IQ:
            if stanza.get("type") in ("get", "set"):
                return self.bounce(stanza, "service-unavailable")
            return None
        # RFC 6121 §8.5.3.2.1: a message for a resource that is gone.
        message_type = stanza.get("type") or "normal"
        if message_type in ("normal", "chat"):
            return self._message_to_bare(stanza, to.bare)
        if message_type == "groupchat":
            return self.bounce(stanza, "service-unavailable")
        return None

    # ------------------------------------------------------------ iq handlers
    def _call_iq_handler(self, iq: etree._Element, scope: str, to: JID, origin: "Session | None") -> Awaitable | None:
        handler = self.server.iq_handler(iq[0].tag, scope)
        if handler is None:
            return self.bounce(iq, "service-unavailable")
        try:
            result = handler(iq, origin, to)
        except StanzaError as error:
            return self._answer(iq, error_reply(iq, error.condition, error.text, error.error_type))
        except Exception:
            log.exception("iq handler for %s failed", iq[0].tag)
            return self.bounce(iq, "internal-server-error")
        if result is not None and hasattr(result, "__await__"):
            return self._await_reply(iq, result)
        return self._answer(iq, result)

    async def _await_reply(self, iq: etree._Element, pending: Awaitable) -> None:
        try:
            reply = await pending
        except StanzaError as error:
            reply = error_reply(iq, error.condition, error.text, error.error_type)
        except Exception:
            log.exception("iq handler for %s failed", iq[0].tag)
            reply = error_reply(iq, "internal-server-error")
        await settle(self._answer(iq, reply))

    def _answer(self, iq: etree._Element, reply: etree._Element | None) -> Awaitable | None:
        if reply is None:
            return None
        to_text = reply.get("to")
        if to_text is None:
            return None
        return self.route(reply, JID.parse(to_text))


def require_owner(origin: "Session | None", to: JID) -> None:
    """For iq handlers that answer for an account only to its owner (roster, ping, disco, register): anyone else
    gets exactly what an iq to an account that does not exist gets, so the answer does not tell whether the
    account exists (RFC 6121 §8.5.1). An iq to the server itself (no localpart) passes."""
    if origin is None or (to.local is not None and origin.bare_jid != to.bare):
        raise StanzaError("service-unavailable")


def _is_iq_result(stanza: etree._Element) -> bool:
    return stanza.tag == IQ and stanza.get("type") == "result"


def _iq_problem(iq: etree._Element) -> str | None:
    """RFC 6120 §8.2.3: an iq needs an id, a known type, and get/set exactly one payload."""
    if not iq.get("id"):
        return "an iq needs an 'id'"
    iq_type = iq.get("type")
    if iq_type not in IQ_TYPES:
        return "an iq's type is get, set, result or error"
    if iq_type in ("get", "set") and len(iq) != 1:
        return "a get or set iq carries exactly one payload element"
    return None
