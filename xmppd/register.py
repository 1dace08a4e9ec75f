"""XEP-0077 in-band registration: create an account before logging in, change
its password or remove it afterwards.

Before authentication there is no session, so the connection hands the iq to
before_auth() and the answer is written straight back (without a 'to': the
client has no address yet). Each address may create one account per
[register] min_interval, so that one client cannot fill the server with
accounts; IPv6 addresses count per /64, as for login throttling. The
password is hashed once, in a worker thread, because PBKDF2 with thousands
of iterations would otherwise stall every other connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable

from lxml import etree

from .aio import settle
from .auth_throttle import address_key
from .jid import JID, InvalidJID, normalize_localpart
from .router import require_owner
from .sasl import derive_credentials
from .server import SCOPE_ACCOUNT, SCOPE_SERVER
from .stanza import StanzaError, child, error_reply, iq_result, qname, serialize
from .storage.models import RosterItem, ScramCredentials

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

log = logging.getLogger("xmppd.register")

NS_REGISTER = "jabber:iq:register"
QUERY = qname(NS_REGISTER, "query")
USERNAME = qname(NS_REGISTER, "username")
PASSWORD = qname(NS_REGISTER, "password")
REMOVE = qname(NS_REGISTER, "remove")

INSTRUCTIONS = "Choose a username and a password for your new account."

# Address groups remembered at once; past this the oldest registrations are forgotten first.
MAX_REMEMBERED_ADDRESSES = 10000


class RecentRegistrations:
    """When each address group last created an account, forgotten after `interval` seconds.

    An entry is reserved before the account is created, so that concurrent attempts from one address
    cannot all pass the check, and released if the creation fails. Entries are kept in the order they
    were made, which with a monotonic clock is also the order in which they expire.
    """

    def __init__(self, interval: float, clock: Callable[[], float], max_entries: int) -> None:
        self._interval = interval
        self._clock = clock
        self._max_entries = max_entries
        self._times: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        self._forget_expired(self._clock())
        return len(self._times)

    def reserve(self, key: str) -> bool:
        """Record a registration for `key` now; False if it made one less than `interval` ago."""
        if self._interval <= 0:
            return True
        now = self._clock()
        self._forget_expired(now)
        if key in self._times:
            return False
        if len(self._times) >= self._max_entries:
            self._times.popitem(last=False)
        self._times[key] = now
        return True

    def release(self, key: str) -> None:
        """Undo reserve() after a failed registration. Any earlier entry had expired, or reserve() would
        have refused, so forgetting the key restores the state before it."""
        self._times.pop(key, None)

    def _forget_expired(self, now: float) -> None:
        while self._times:
            oldest = next(iter(self._times.values()))
            if now - oldest < self._interval:
                return
            self._times.popitem(last=False)


class Register:
    def __init__(self, server: "Server", *, clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = MAX_REMEMBERED_ADDRESSES) -> None:
        self.server = server
        self.recent = RecentRegistrations(server.config.register.min_interval, clock, max_addresses)
        server.add_feature(NS_REGISTER, scopes=(SCOPE_SERVER,))
        # Clients address password changes and removals to the server (Conversations) or to no one (slixmpp).
        server.add_iq_handler(QUERY, self.handle_iq, scopes=(SCOPE_SERVER, SCOPE_ACCOUNT))

    # ------------------------------------------------------------ before authentication
    async def before_auth(self, connection, iq: etree._Element) -> None:
        """Answer a jabber:iq:register iq from a connection that has not logged in, on that connection."""
        if iq.get("type") not in ("get", "set"):
            return  # results and errors are never answered (RFC 6120 §8.2.3)
        try:
            reply = await self._before_auth(connection, iq)
        except StanzaError as error:
            reply = error_reply(iq, error.condition, error.text, error.error_type)
        except Exception:
            log.exception("registration from %s failed", connection.address)
            reply = error_reply(iq, "internal-server-error")
        reply.attrib.pop("to", None)  # whatever 'from' the client claimed, it has no address yet
        connection.write(serialize(reply))

    async def _before_auth(self, connection, iq: etree._Element) -> etree._Element:
        if not iq.get("id") or len(iq) != 1:
            raise StanzaError("bad-request", "an iq needs an 'id' and exactly one payload element")
        machine = connection.machine
        if machine.settings.require_encryption and not machine.tls_active:
            raise StanzaError("not-allowed", "register over an encrypted connection")
        if iq.get("type") == "get":
            query = _query()
            child(query, NS_REGISTER, "instructions", INSTRUCTIONS)
            child(query, NS_REGISTER, "username")
            child(query, NS_REGISTER, "password")
            return iq_result(iq, query)
        query = iq[0]
        if query.find(REMOVE) is not None:
            raise StanzaError("registration-required", "log in to remove your account")
        username, password = _username(query.findtext(USERNAME)), query.findtext(PASSWORD)
        self._check_password(password)
        key = address_key(connection.host)
        if not self.recent.reserve(key):
            raise StanzaError("resource-constraint", "too many registrations from your address; try again later")
        try:
            storage = self.server.storage
            if await storage.user_exists(username):
                raise StanzaError("conflict", "that username is taken")
            if not await storage.create_user(username, await self._credentials(password)):
                raise StanzaError("conflict", "that username is taken")
        except BaseException:
            self.recent.release(key)
            raise
        log.info("register %s created %s@%s", connection.address, username, self.server.domain)
        return iq_result(iq)

    # ------------------------------------------------------------ an authenticated user's own account
    async def handle_iq(self, iq: etree._Element, origin: "Session | None", to: JID) -> etree._Element | None:
        require_owner(origin, to)  # nobody may see or touch another account's registration
        query = iq[0]
        if iq.get("type") == "get":
            result = _query()
            child(result, NS_REGISTER, "registered")
            child(result, NS_REGISTER, "username", origin.username)
            child(result, NS_REGISTER, "password")
            return iq_result(iq, result)
        if query.find(REMOVE) is not None:
            if len(query) != 1:
                raise StanzaError("bad-request", "<remove/> must be the only child of <query/>")
            return await self._remove(iq, origin)
        return await self._change_password(iq, query, origin)

    async def _change_password(self, iq: etree._Element, query: etree._Element, session: "Session") -> etree._Element:
        """XEP-0077 §3.3. Other sessions of the account are closed with <reset/>: whoever knew the old
        password must not stay logged in."""
        username, password = query.findtext(USERNAME), query.findtext(PASSWORD)
        if username is None or password is None:
            raise StanzaError("bad-request", "a password change needs <username/> and <password/>")
        try:
            own = normalize_localpart(username) == session.username
        except InvalidJID:
            own = False
        if not own:
            raise StanzaError("bad-request", "you can change only your own password")
        self._check_password(password)
        if not await self.server.storage.set_credentials(session.username, await self._credentials(password)):
            raise StanzaError("registration-required", "the account no longer exists")
        log.info("register %s changed the password of %s", session.connection.address, session.bare)
        self.server.close_sessions(session.bare, "reset", "the password was changed", keep=session)
        return iq_result(iq)

    async def _remove(self, iq: etree._Element, session: "Session") -> None:
        """XEP-0077 §3.2: cancel the account's subscriptions, delete it, answer, then end every session of
        it with <not-authorized/>. The answer is sent here because the sessions are gone afterwards."""
        storage = self.server.storage
        _, items = await storage.get_roster(session.username)
        in_roster = {item.jid for item in items}
        items += [RosterItem(jid=jid) for jid, _ in await storage.list_pending_subscriptions(session.username)
                  if jid not in in_roster]
        presence = self.server.modules["presence"]
        for item in items:
            await presence.cancel_both_ways(session, item)
        if not await storage.delete_user(session.username):
            raise StanzaError("registration-required", "the account no longer exists")
        log.info("register %s removed %s", session.connection.address, session.bare)
        for pending in self.server.fire("account-deleted", session.username):
            try:
                await pending
            except Exception:  # the account is gone either way; the user must still get the answer
                log.exception("account-deleted hook failed for %s", session.bare)
        reply = iq_result(iq)
        await settle(self.server.router.route(reply, JID.parse(reply.get("to"))))
        self.server.close_sessions(session.bare, "not-authorized", "the account was removed")
        return None

    # ------------------------------------------------------------ shared
    def _check_password(self, password: str | None) -> None:
        if not password:
            # XEP-0077 §3.1 and §3.3: an empty password is refused and never replaces the current one.
            raise StanzaError("not-acceptable", "a username and a non-empty password are required")
        shortest = self.server.config.register.min_password_length
        if len(password) < shortest:
            raise StanzaError("not-acceptable", f"the password must have at least {shortest} characters")

    async def _credentials(self, password: str) -> dict[str, ScramCredentials]:
        try:
            return await asyncio.to_thread(derive_credentials, password, self.server.config.auth.scram_iterations)
        except ValueError:
            raise StanzaError("not-acceptable", "the password contains characters that are not allowed") from None


def _query() -> etree._Element:
    return etree.Element(QUERY, nsmap={None: NS_REGISTER})


def _username(text: str | None) -> str:
    if not text:
        raise StanzaError("not-acceptable", "a username and a non-empty password are required")
    try:
        return normalize_localpart(text)
    except InvalidJID as error:
        raise StanzaError("not-acceptable", f"invalid username: {error}") from None


def setup(server: "Server") -> Register:
    return Register(server)
