"""XEP-0030 service discovery for the server and for accounts.

Features and identities come from what the loaded modules registered with the
core, so disco never lists a feature that is not there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable

from lxml import etree

from .jid import JID
from .router import require_owner
from .server import SCOPE_ACCOUNT, SCOPE_SERVER
from .stanza import StanzaError, iq_result, qname

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"


class Disco:
    def __init__(self, server: "Server") -> None:
        self.server = server
        server.add_identity("server", "im", "xmppd", scope=SCOPE_SERVER)
        server.add_identity("account", "registered", scope=SCOPE_ACCOUNT)
        for scope in (SCOPE_SERVER, SCOPE_ACCOUNT):
            server.add_feature(NS_INFO, scopes=(scope,))
            server.add_feature(NS_ITEMS, scopes=(scope,))
        server.add_iq_handler(qname(NS_INFO, "query"), self.info_server, scopes=(SCOPE_SERVER,))
        server.add_iq_handler(qname(NS_INFO, "query"), self.info_account, scopes=(SCOPE_ACCOUNT,))
        server.add_iq_handler(qname(NS_ITEMS, "query"), self.items, scopes=(SCOPE_SERVER, SCOPE_ACCOUNT))
        # Sources of an account's items (PEP nodes): async (requester, account) -> items, or None when the
        # requester may not see the account at all.
        self._account_items: list[Callable[[JID, JID], Awaitable[list[etree._Element] | None]]] = []

    def add_account_items(self, source: Callable[[JID, JID], Awaitable[list[etree._Element] | None]]) -> None:
        self._account_items.append(source)

    def info_server(self, iq: etree._Element, origin: "Session | None", to: JID) -> etree._Element:
        return self._info(iq, SCOPE_SERVER)

    def info_account(self, iq: etree._Element, origin: "Session | None", to: JID):
        # XEP-0030 §4.3 / RFC 6121: an account answers only to itself and to its subscribers (XEP-0163 §9.2:
        # they may look for PEP); others learn nothing, not even whether it exists.
        if origin is not None and origin.bare_jid == to.bare:
            return self._info(iq, SCOPE_ACCOUNT)
        return self._info_for_subscriber(iq, JID.parse(iq.get("from")).bare, to)

    async def _info_for_subscriber(self, iq: etree._Element, requester: JID, account: JID) -> etree._Element:
        item = await self.server.storage.get_roster_item(account.local, str(requester))
        if item is None or item.subscription not in ("from", "both"):
            raise StanzaError("service-unavailable")
        return self._info(iq, SCOPE_ACCOUNT)

    def _info(self, iq: etree._Element, scope: str) -> etree._Element:
        if iq.get("type") != "get":
            raise StanzaError("bad-request", "disco#info is read-only")
        if iq[0].get("node"):
            raise StanzaError("item-not-found", "no such node")
        query = etree.Element(qname(NS_INFO, "query"), nsmap={None: NS_INFO})
        for category, type_, name in self.server.identities(scope):
            identity = etree.SubElement(query, qname(NS_INFO, "identity"), category=category, type=type_)
            if name:
                identity.set("name", name)
        for var in self.server.features(scope):
            etree.SubElement(query, qname(NS_INFO, "feature"), var=var)
        return iq_result(iq, query)

    def items(self, iq: etree._Element, origin: "Session | None", to: JID):
        if iq.get("type") != "get":
            raise StanzaError("bad-request", "disco#items is read-only")
        if to.local is not None and self._account_items:
            return self._items_of_account(iq, JID.parse(iq.get("from")).bare, to.bare)
        require_owner(origin, to)
        if iq[0].get("node"):
            raise StanzaError("item-not-found", "no such node")
        query = etree.Element(qname(NS_ITEMS, "query"), nsmap={None: NS_ITEMS})
        if to.local is None:
            # Services hosted on their own domains (upload.<domain>, push.<domain>): clients find them here.
            for domain in sorted(self.server.components):
                etree.SubElement(query, qname(NS_ITEMS, "item"), jid=domain)
        return iq_result(iq, query)

    async def _items_of_account(self, iq: etree._Element, requester: JID, account: JID) -> etree._Element:
        query = etree.Element(qname(NS_ITEMS, "query"), nsmap={None: NS_ITEMS})
        visible = False
        for source in self._account_items:
            items = await source(requester, account)
            if items is not None:
                visible = True
                query.extend(items)
        if not visible:
            raise StanzaError("service-unavailable")   # as for an account that does not exist
        if iq[0].get("node"):
            raise StanzaError("item-not-found", "no such node")
        return iq_result(iq, query)


def setup(server: "Server") -> Disco:
    return Disco(server)
