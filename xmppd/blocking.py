"""XEP-0191 Blocking Command: a user blocks JIDs or whole domains, and they get nothing.

The block list lives in storage; each account with a session has it in memory
(loaded when the session binds), so the check on every routed stanza is a set
lookup. The module screens every stanza the router routes (Router.screens):

- from a blocked JID to the user (§3.3): presence is dropped without a word,
  a message or an iq get/set gets <service-unavailable/> (what an offline or
  unknown account answers, so the contact learns nothing), anything else is
  dropped. Nothing of it reaches offline storage or wakes a phone.
- from the user to a blocked JID: presence is not sent (the contact sees the
  user offline); a message or iq gets <not-acceptable/> with
  <blocked xmlns='urn:xmpp:blocking:errors'/>.

Blocking sends the contacts that could see the user's presence an unavailable
presence first; unblocking sends them the current one (§3.3, §3.4). Changes are
pushed to every resource of the user that asked for the list. Items match as
§2 says: user@domain/resource only itself, user@domain any of its resources,
domain/resource only itself, domain itself and everything at it or at a
subdomain. The user's own account and the server itself are never blocked.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from copy import deepcopy
from typing import TYPE_CHECKING, Awaitable, Iterable

from lxml import etree

from .aio import run_soon
from .jid import JID, InvalidJID
from .router import require_owner
from .server import SCOPE_ACCOUNT
from .stanza import IQ, PRESENCE, StanzaError, error_reply, iq_result, make, qname

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

log = logging.getLogger("xmppd.blocking")

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
ITEM = qname(NS_BLOCKING, "item")
ERROR = "{jabber:client}error"


def matches(items: "set[str] | frozenset[str]", jid: JID) -> bool:
    """Whether a block list with these (prepared) items covers `jid` (XEP-0191 §2)."""
    if not items:
        return False
    if str(jid) in items or (jid.local is not None and str(jid.bare) in items):
        return True
    domain = jid.domain
    while True:
        if domain in items:
            return True
        dot = domain.find(".")
        if dot < 0:
            return False
        domain = domain[dot + 1:]


def parse_items(command: etree._Element) -> list[str]:
    """The prepared JIDs of a <block/> or <unblock/>; raises StanzaError for a bad one."""
    jids = []
    for item in command:
        if item.tag != ITEM:
            raise StanzaError("bad-request", f"unexpected element {etree.QName(item).localname!r}; only <item/>")
        text = item.get("jid")
        if not text:
            raise StanzaError("bad-request", "an <item/> needs a 'jid'")
        try:
            jids.append(str(JID.parse(text)))
        except InvalidJID as error:
            raise StanzaError("jid-malformed", f"{text!r}: {error}") from None
    return jids


def _goes_nowhere_offline(stanza: etree._Element) -> bool:
    """Presence other than a subscription stanza: an account without sessions neither gets nor keeps it."""
    return stanza.tag == PRESENCE and stanza.get("type") not in ("subscribe", "subscribed", "unsubscribe",
                                                                  "unsubscribed")


def command(name: str, jids: Iterable[str]) -> etree._Element:
    element = etree.Element(qname(NS_BLOCKING, name), nsmap={None: NS_BLOCKING})
    for jid in jids:
        etree.SubElement(element, ITEM, {"jid": jid})
    return element


class BlockList:
    """The items of one account, in memory while it has a session."""

    __slots__ = ("items",)

    def __init__(self, items: Iterable[str]) -> None:
        self.items = set(items)


class Blocking:
    def __init__(self, server: "Server") -> None:
        self.server = server
        self.max_items = server.config.blocking.max_items
        # username -> its list, or the storage read that is loading it; accounts with a session only.
        self._lists: dict[str, "BlockList | asyncio.Future"] = {}
        self._requested: set["Session"] = set()   # sessions that asked for the list: they get pushes
        server.add_feature(NS_BLOCKING)
        server.add_iq_handler(qname(NS_BLOCKING, "blocklist"), self._get, scopes=(SCOPE_ACCOUNT,))
        server.add_iq_handler(qname(NS_BLOCKING, "block"), self._block, scopes=(SCOPE_ACCOUNT,))
        server.add_iq_handler(qname(NS_BLOCKING, "unblock"), self._unblock, scopes=(SCOPE_ACCOUNT,))
        server.router.screens.append(self.screen)
        server.on("session-bound", self._bound)
        server.on("session-ended", self._ended)

    # ------------------------------------------------------------ the lists in memory
    async def block_list(self, username: str) -> BlockList:
        """The account's list: from memory, or read from storage (and kept if the account has a session)."""
        entry = self._lists.get(username)
        if isinstance(entry, BlockList):
            return entry
        if entry is None:
            entry = asyncio.ensure_future(self.server.storage.get_blocklist(username))
            if self._has_session(username):
                self._lists[username] = entry
        try:
            items = await entry
        except BaseException:
            if self._lists.get(username) is entry:
                del self._lists[username]
            raise
        current = self._lists.get(username)
        if isinstance(current, BlockList):
            return current
        block_list = BlockList(items)
        if current is entry:
            self._lists[username] = block_list
        return block_list

    def _has_session(self, username: str) -> bool:
        return bool(self.server.sessions_of(f"{username}@{self.server.domain}"))

    async def _bound(self, session: "Session") -> None:
        await self.block_list(session.username)

    def _ended(self, session: "Session") -> None:
        self._requested.discard(session)
        if not self._has_session(session.username):
            self._lists.pop(session.username, None)

    # ------------------------------------------------------------ the screen on every routed stanza
    def screen(self, stanza: etree._Element, to: JID, origin: "Session | None") -> "bool | Awaitable[bool]":
        """Router.screens: True if the stanza was taken (dropped or answered) because of a block."""
        outbound = origin is not None and self._may_block(origin.bare_jid, to)
        inbound = to.local is not None and to.domain == self.server.domain
        own = self._lists.get(origin.username) if outbound else None
        theirs = self._lists.get(to.local) if inbound else None
        if outbound and not isinstance(own, BlockList):
            return self._screen_later(stanza, to, origin, outbound, inbound)
        if inbound and not isinstance(theirs, BlockList):
            if theirs is None and _goes_nowhere_offline(stanza) and not self._has_session(to.local):
                return False
            return self._screen_later(stanza, to, origin, outbound, inbound)
        return self._decide(stanza, to, origin, own, theirs)

    async def _screen_later(self, stanza: etree._Element, to: JID, origin: "Session | None", outbound: bool,
                            inbound: bool) -> bool:
        """The same screen once the lists it needs are read from storage."""
        own = await self.block_list(origin.username) if outbound else None
        theirs = await self.block_list(to.local) if inbound else None
        return self._decide(stanza, to, origin, own, theirs)

    def _may_block(self, account: JID, other: JID) -> bool:
        """Neither the user's own account nor the server itself can be blocked."""
        return other.bare != account and not (other.local is None and other.domain == self.server.domain)

    def _decide(self, stanza: etree._Element, to: JID, origin: "Session | None", own: BlockList | None,
                theirs: BlockList | None) -> bool:
        if own is not None and own.items and matches(own.items, to):
            return self._refuse_outbound(stanza, origin, to)
        if theirs is not None and theirs.items:
            return self._inbound(stanza, to, theirs)
        return False

    def _inbound(self, stanza: etree._Element, to: JID, block_list: BlockList) -> bool:
        sender_text = stanza.get("from")
        if not sender_text:
            return False
        try:
            sender = JID.parse(sender_text)
        except InvalidJID:
            return False
        if sender.bare == to.bare or (sender.local is None and sender.domain == self.server.domain):
            return False   # the account itself, or the server
        if not matches(block_list.items, sender):
            return False
        log.debug("blocked %s from %s to %s", etree.QName(stanza).localname, sender_text, to)
        kind = stanza.tag
        if kind == PRESENCE:
            return True
        if kind == IQ and stanza.get("type") not in ("get", "set"):
            return True
        run_soon(self.server.router.bounce(stanza, "service-unavailable"), f"answering a blocked stanza to {to}")
        return True

    def _refuse_outbound(self, stanza: etree._Element, origin: "Session", to: JID) -> bool:
        if stanza.tag == PRESENCE or stanza.get("type") in ("error", "result"):
            return True
        reply = error_reply(stanza, "not-acceptable", f"you have blocked {to}")
        # RFC 6120 §8.3.2: the application-specific condition comes after the defined one and its text.
        etree.SubElement(reply.find(ERROR), qname(NS_BLOCKING_ERRORS, "blocked"), nsmap={None: NS_BLOCKING_ERRORS})
        log.debug("%s to %s refused: blocked", etree.QName(stanza).localname, to)
        origin.deliver(reply)
        return True

    # ------------------------------------------------------------ the protocol (§3)
    async def _get(self, iq: etree._Element, origin: "Session | None", to: JID) -> etree._Element:
        self._check(iq, origin, to, "get")
        block_list = await self.block_list(to.local)
        self._requested.add(origin)
        return iq_result(iq, command("blocklist", sorted(block_list.items)))

    async def _block(self, iq: etree._Element, origin: "Session | None", to: JID) -> None:
        self._check(iq, origin, to, "set")
        jids = parse_items(iq[0])
        if not jids:
            raise StanzaError("bad-request", "a <block/> needs at least one <item/>")
        if len(jids) > self.max_items:
            raise StanzaError("policy-violation", f"a block list holds at most {self.max_items} items")
        username = to.local
        block_list = await self.block_list(username)
        new = await self.server.storage.block_jids(username, jids, self.max_items)
        if new is None:
            log.info("block list of %s is full (%d items): block refused", origin.full, self.max_items)
            raise StanzaError("policy-violation", f"a block list holds at most {self.max_items} items")
        if new:
            await self._say_gone(origin.bare, frozenset(new))
            block_list.items.update(new)
            log.info("%s blocked %s", origin.full, ", ".join(new))
        origin.deliver(iq_result(iq))   # the answer first, then the pushes (§3.3)
        if new:
            self._push(origin.bare, command("block", new))

    async def _unblock(self, iq: etree._Element, origin: "Session | None", to: JID) -> None:
        self._check(iq, origin, to, "set")
        jids = parse_items(iq[0])
        username = to.local
        block_list = await self.block_list(username)
        gone = await self.server.storage.unblock_jids(username, jids or None)
        block_list.items.difference_update(gone)
        origin.deliver(iq_result(iq))
        if gone:
            log.info("%s unblocked %s", origin.full, ", ".join(gone))
            # §3.5: "unblock all" is pushed as an empty <unblock/>.
            self._push(origin.bare, command("unblock", gone if jids else ()))
            await self._say_present(origin.bare, frozenset(gone))

    @staticmethod
    def _check(iq: etree._Element, origin: "Session | None", to: JID, iq_type: str) -> None:
        require_owner(origin, to)
        if origin is None:
            raise StanzaError("not-allowed", "the block list is managed from a client session")
        if iq.get("type") != iq_type:
            raise StanzaError("bad-request", f"<{etree.QName(iq[0]).localname}/> goes in an iq of type '{iq_type}'")

    def _push(self, account: str, payload: etree._Element) -> None:
        for session in self.server.sessions_of(account).values():
            if session in self._requested:
                push = make("iq", {"type": "set", "id": "block-" + secrets.token_hex(6), "to": session.full,
                                   "from": account})
                push.append(deepcopy(payload))
                session.deliver(push)

    async def _presence_watchers(self, account: str, items: frozenset[str]) -> set[str]:
        """Subscribers of the user (RFC 6121: they may see the user's presence) that these items cover."""
        _, roster = await self.server.storage.get_roster(account.partition("@")[0])
        return {item.jid for item in roster if item.subscription in ("from", "both")
                and matches(items, JID.parse(item.jid))}

    async def _say_gone(self, account: str, items: frozenset[str]) -> None:
        """§3.3: contacts about to be blocked who may see the user's presence get 'unavailable' from each
        available resource, as do those that got directed presence; sent before the block takes effect."""
        subscribers = await self._presence_watchers(account, items)
        for session in self.server.available_sessions(account):
            directed = {jid for jid in session.directed if matches(items, JID.parse(jid))}
            session.directed -= directed
            for target in subscribers | directed:
                gone = make("presence", {"type": "unavailable", "from": session.full, "to": target})
                run_soon(self.server.router.route(gone, JID.parse(target), session),
                         f"unavailable presence to {target}")

    async def _say_present(self, account: str, items: frozenset[str]) -> None:
        """§3.4: unblocked contacts who may see the user's presence get the current one."""
        subscribers = await self._presence_watchers(account, items)
        for session in self.server.available_sessions(account):
            for target in subscribers:
                presence = deepcopy(session.presence)
                presence.set("to", target)
                run_soon(self.server.router.route(presence, JID.parse(target), session), f"presence to {target}")


def setup(server: "Server") -> Blocking:
    return Blocking(server)
