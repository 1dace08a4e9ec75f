"""The small core every feature module plugs into.

It owns the session table and three registries: iq handlers (by payload
element and by whom the iq is addressed to), disco features, and named hooks.
A feature is a module with ``setup(server)`` that registers itself here, the
way Prosody's mod_*.lua files do; the core never grows a branch per XEP.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import secrets
from collections import Counter, defaultdict
from typing import Any, Awaitable, Callable, Iterable

from lxml import etree

from .aio import run_soon, settle
from .config import Config
from .jid import JID
from .journal import Journal
from .router import Router, require_owner
from .session import Connection, Session
from .stanza import StanzaError, iq_result, qname
from .storage import Storage

log = logging.getLogger("xmppd.server")

# Always loaded: the RFC 6121 core and what every client probes for.
CORE_MODULES = ("roster", "presence", "disco", "ping")
# Where a module's name in the config differs from its file name.
MODULE_FILES = {"offline": "offline_store", "push": "push_xep0357", "appserver": "appserver.hosted",
                "private": "private_xml"}

# Whom an iq handler answers for: the server itself (to='domain' or its resources) or a local account
# (to='user@domain', or no 'to' from that user's own session).
SCOPE_SERVER = "server"
SCOPE_ACCOUNT = "account"

# handler(iq, origin_session_or_None, to_jid) -> reply element | None | awaitable of either
IqHandler = Callable[[etree._Element, Session | None, JID], Any]


class Server:
    def __init__(self, config: Config, storage: Storage) -> None:
        self.config = config
        self.storage = storage
        self.domain = config.server.domain
        self.sessions: dict[str, dict[str, Session]] = {}
        self.stanza_counts = StanzaCounts()   # for the metrics endpoint
        # Messages that matter on their way to an account, durable before their sender's ack (journal.py).
        self.journal = Journal(storage)
        # The stream_mgmt module, when loaded: it keeps sessions whose connection broke (XEP-0198).
        self.stream_mgmt: Any = None
        # Set by a graceful stop: a resumable session whose stream the server closes hibernates, to be
        # saved and resumed after the restart (main.py).
        self.stopping = False
        self.router = Router(self)
        self._iq_handlers: dict[tuple[str, str], IqHandler] = {}
        self._features: dict[str, set[str]] = defaultdict(set)
        self._identities: dict[str, list[tuple[str, str, str | None]]] = defaultdict(list)
        self._hooks: dict[str, list[Callable]] = defaultdict(list)
        self._stream_features: list[Callable[[], etree._Element]] = []
        self._nonza_handlers: dict[str, Callable[[Session, etree._Element], None]] = {}
        self.modules: dict[str, Any] = {}
        # Services hosted in this process on their own domains (the push app server): domain -> handler.
        self.components: dict[str, Callable[[etree._Element], None]] = {}
        self._awaited_iqs: dict[str, tuple[str, asyncio.Future]] = {}   # id -> (expected sender, answer)
        # RFC 3921 session establishment, still sent by old clients: accepted and answered, a no-op.
        self.add_iq_handler(qname(NS_SESSION, "session"), _legacy_session, scopes=(SCOPE_SERVER, SCOPE_ACCOUNT))

    # ------------------------------------------------------------ modules
    def load_modules(self, names: Iterable[str]) -> None:
        for name in names:
            if name in self.modules:
                continue
            module = importlib.import_module(f"xmppd.{MODULE_FILES.get(name, name)}")
            self.modules[name] = module.setup(self)
            log.debug("module %s loaded", name)

    def module(self, name: str) -> Any:
        return self.modules[name]

    def add_iq_handler(self, payload_tag: str, handler: IqHandler, *, scopes: Iterable[str] = (SCOPE_SERVER,)) -> None:
        for scope in scopes:
            key = (payload_tag, scope)
            if key in self._iq_handlers:
                raise ValueError(f"two handlers for {payload_tag} ({scope})")
            self._iq_handlers[key] = handler

    def iq_handler(self, payload_tag: str, scope: str) -> IqHandler | None:
        return self._iq_handlers.get((payload_tag, scope))

    def add_feature(self, var: str, *, scopes: Iterable[str] = (SCOPE_SERVER,)) -> None:
        for scope in scopes:
            self._features[scope].add(var)

    def features(self, scope: str) -> list[str]:
        return sorted(self._features[scope])

    def add_identity(self, category: str, type_: str, name: str | None = None, *, scope: str = SCOPE_SERVER) -> None:
        self._identities[scope].append((category, type_, name))

    def identities(self, scope: str) -> list[tuple[str, str, str | None]]:
        return list(self._identities[scope])

    def add_nonza_handler(self, tag: str, handler: Callable[[Session, etree._Element], None]) -> None:
        """A top-level element outside jabber:client from a bound client (XEP-0352 <active/>, XEP-0198 <r/>)."""
        if tag in self._nonza_handlers:
            raise ValueError(f"two handlers for {tag}")
        self._nonza_handlers[tag] = handler

    def nonza_handler(self, tag: str) -> Callable[[Session, etree._Element], None] | None:
        return self._nonza_handlers.get(tag)

    def add_stream_feature(self, make_element: Callable[[], etree._Element]) -> None:
        """A child of <stream:features/> offered once the client is authenticated (rosterver, sm, csi …)."""
        self._stream_features.append(make_element)

    def stream_features(self) -> list[etree._Element]:
        return [make_element() for make_element in self._stream_features]

    def add_component(self, domain: str, handle: Callable[[etree._Element], None]) -> None:
        """Host a service on `domain` in this process: the router hands it every stanza addressed
        there; it answers through router.route()."""
        if domain == self.domain or domain in self.components:
            raise ValueError(f"{domain} is served already")
        self.components[domain] = handle

    async def request(self, iq: etree._Element, timeout: float = 30.0) -> etree._Element:
        """Send an iq get/set that the server itself makes (for an account or for itself) and wait for
        the answer: a result or an error element. Raises TimeoutError. Answers from anyone but the
        addressee are ignored, so a third party cannot fake one."""
        iq_id = iq.get("id") or secrets.token_hex(8)
        iq.set("id", iq_id)
        answer = asyncio.get_running_loop().create_future()
        self._awaited_iqs[iq_id] = (iq.get("to"), answer)
        try:
            await settle(self.router.route(iq, JID.parse(iq.get("to"))))
            async with asyncio.timeout(timeout):
                return await answer
        finally:
            self._awaited_iqs.pop(iq_id, None)

    def answered(self, stanza: etree._Element) -> bool:
        """An iq result or error: True if it answers a request() (and was taken)."""
        awaited = self._awaited_iqs.get(stanza.get("id"))
        if awaited is None or awaited[0] != stanza.get("from") or awaited[1].done():
            return False
        awaited[1].set_result(stanza)
        return True

    # ------------------------------------------------------------ hooks
    def on(self, event: str, callback: Callable) -> None:
        """Run `callback` when `event` fires. Hooks in use: 'session-bound' (session),
        'session-ended' (session), 'session-resumed' (session), 'initial-presence' (session),
        'account-deleted' (username), 'config-reloaded' (the new Config, already in server.config: modules
        re-read their options), 'parked' (username, stanza, session or None: a stanza for the
        account waits in a hibernated session's queue or in offline storage), 'presence-available'
        (session, presence: every available presence a client broadcasts), 'caps-changed' (session,
        features, previous features: caps.py learnt what the client supports), 'new-subscriber' (user's bare
        JID, contact JID: the contact now has a subscription to the user's presence), 'pep-published'
        (username, node, PepItem: awaited before the publish is answered), 'vcard-changed' (username,
        <vCard/>, publisher's full JID: awaited before the set is answered), 'message-sent' (session,
        message, to: a local user's message on its way out, before it is routed), 'message-delivered'
        (message, username, sessions: a message for a local account, about to be written to these of
        its sessions; none when it goes to offline storage or is refused), 'message-to-account' (stanza,
        to: a message is about to reach a local account; delivery waits for awaitables). The message hooks
        run on the hot path: their callbacks are cheap; message-sent's awaitables run in the background."""
        self._hooks[event].append(callback)

    def fire(self, event: str, *args: Any) -> list[Awaitable]:
        """Call every callback; return the awaitables of the async ones for the caller to await
        (or to hand to schedule(), as bind and unbind do)."""
        pending = []
        for callback in self._hooks[event]:
            try:
                result = callback(*args)
            except Exception:
                log.exception("hook %s failed in %r", event, callback)
                continue
            if result is not None and hasattr(result, "__await__"):
                pending.append(result)
        return pending

    # ------------------------------------------------------------ sessions
    def bind(self, connection: Connection, username: str, resource: str | None) -> Session:
        """Register a new session. A second bind of the same full JID replaces the old session, which is
        closed with <conflict/> (RFC 6120 §7.7.2.2, the 'override' policy). Raises StanzaError
        (resource-constraint) when the account already has [c2s] max_resources_per_account sessions."""
        bare = f"{username}@{self.domain}"
        resources = self.sessions.get(bare, {})
        max_resources = self.config.c2s.max_resources_per_account   # read now: a reload may change it
        if len(resources) >= max_resources and resource not in resources:
            # RFC 6120 §7.6.2.1: a limit on simultaneous sessions for one account (a replacement is none).
            log.warning("c2s %s refused a bind for %s: %d sessions already", connection.address, username,
                        max_resources)
            raise StanzaError("resource-constraint", "too many sessions for this account")
        if resource is None:
            resource = secrets.token_hex(4)
            while resource in resources:
                resource = secrets.token_hex(4)
        old = resources.get(resource)
        if old is not None:
            log.info("session %s replaced by a new connection from %s", old.full, connection.address)
            self.unbind(old)
            old.connection.close_stream("conflict", "replaced by a new connection", reason="resource conflict")
        session = Session(self, connection, username, resource)
        self.sessions.setdefault(bare, {})[resource] = session
        self.schedule(self.fire("session-bound", session), f"session-bound hooks for {session.full}")
        return session

    def connection_lost(self, session: Session, *, resumable: bool) -> None:
        """The session's connection is gone. If it broke rather than closed (`resumable`), stream
        management may keep the session for a resumption (hibernation); else the session ends."""
        if (resumable or self.stopping) and self.stream_mgmt is not None and self.stream_mgmt.hibernate(session):
            return
        self.unbind(session)

    def unbind(self, session: Session) -> None:
        """Take a session out of routing; modules see 'session-ended' (presence goes unavailable)."""
        if session.closed:
            return
        session.closed = True
        resources = self.sessions.get(session.bare)
        if resources is not None and resources.get(session.resource) is session:
            del resources[session.resource]
            if not resources:
                del self.sessions[session.bare]
        self.schedule(self.fire("session-ended", session), f"session-ended hooks for {session.full}")

    @staticmethod
    def schedule(pending: list[Awaitable], what: str) -> None:
        for awaitable in pending:
            run_soon(awaitable, what)

    def close_sessions(self, bare: str, condition: str, text: str, *, resource: str | None = None,
                       keep: Session | None = None) -> int:
        """End the account's sessions (or the one of `resource`), live or hibernated, so that none can
        be resumed: each goes out of routing first (what its XEP-0198 queue held goes back to offline
        storage), then its stream ends with the stream error `condition`. Returns how many ended."""
        ended = 0
        for session in list(self.sessions_of(bare).values()):
            if session is not keep and resource in (None, session.resource):
                self.unbind(session)
                session.connection.close_stream(condition, text, reason=text)
                ended += 1
        return ended

    def sessions_of(self, bare: str) -> dict[str, Session]:
        return self.sessions.get(bare, {})

    def session(self, full: JID) -> Session | None:
        return self.sessions.get(str(full.bare), {}).get(full.resource)


    def available_sessions(self, bare: str) -> list[Session]:
        return [s for s in self.sessions.get(bare, {}).values() if s.available]

    def is_local(self, jid: JID) -> bool:
        return jid.domain == self.domain


class StanzaCounts:
    """Stanzas in and out by kind: the one thing counted on the hot path (c2s and Session.transmit)."""

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.received: Counter = Counter()   # tag name -> count
        self.sent: Counter = Counter()       # first letter of the serialised stanza -> count


NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"


def _legacy_session(iq: etree._Element, origin: Session | None, to: JID) -> etree._Element:
    require_owner(origin, to)
    return iq_result(iq)
