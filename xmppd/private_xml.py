"""XEP-0049 private XML storage: an account keeps XML for itself, one element per namespace.

Older clients keep their bookmarks here (storage:bookmarks, XEP-0048); newer ones
use PEP (XEP-0402, pep.py), and with PEP loaded the two are kept in step
(bookmarks_compat.py). Only the owner reads and writes; anyone else gets the
answer an account that does not exist gives (router.require_owner).
"""

from __future__ import annotations

import logging
from copy import deepcopy
from typing import TYPE_CHECKING

from lxml import etree

from .bookmarks_compat import FEATURE as BOOKMARKS_COMPAT, NS_LEGACY as NS_LEGACY_BOOKMARKS, BookmarksCompat
from .jid import JID
from .router import require_owner
from .server import SCOPE_ACCOUNT
from .stanza import STORED_PARSER, StanzaError, iq_result, qname

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

log = logging.getLogger("xmppd.private")

NS_PRIVATE = "jabber:iq:private"
QUERY = qname(NS_PRIVATE, "query")

# Serialized size of one stored element: room for thousands of bookmarks, not for filling the disk.
MAX_PRIVATE_BYTES = 256 * 1024


class PrivateXml:
    def __init__(self, server: "Server") -> None:
        self.server = server
        server.add_feature(NS_PRIVATE, scopes=(SCOPE_ACCOUNT,))
        server.add_iq_handler(QUERY, self.handle_iq, scopes=(SCOPE_ACCOUNT,))
        # With PEP, storage:bookmarks follows the XEP-0402 node (bookmarks_compat.py).
        self.bookmarks = None
        if "pep" in server.modules:
            self.bookmarks = BookmarksCompat(server.storage, server.module("pep"))
            server.add_feature(BOOKMARKS_COMPAT, scopes=(SCOPE_ACCOUNT,))

    async def handle_iq(self, iq: etree._Element, origin: "Session | None", to: JID) -> etree._Element:
        require_owner(origin, to)
        children = [element for element in iq[0] if isinstance(element.tag, str)]
        if len(children) != 1:
            raise StanzaError("bad-request", "a private storage query holds exactly one element")
        element = children[0]
        namespace = etree.QName(element).namespace
        if not namespace or namespace.startswith("jabber:"):
            # XEP-0049 §3: the jabber: namespaces belong to the protocol itself.
            raise StanzaError("not-acceptable", "the element needs a namespace of its own, not jabber:*")
        bookmarks = self.bookmarks if namespace == NS_LEGACY_BOOKMARKS else None
        if iq.get("type") == "get":
            stored = await self.server.storage.get_private_xml(to.local, namespace)
            found = await bookmarks.read(to.local, stored) if bookmarks is not None else None
            if found is None:
                found = etree.fromstring(stored, STORED_PARSER) if stored is not None else deepcopy(element)
            return iq_result(iq, _query(found))
        xml = None   # an empty element clears
        if len(element) or (element.text or "").strip() or element.attrib:
            xml = etree.tostring(deepcopy(element), encoding="unicode", with_tail=False)
            if len(xml.encode("utf-8")) > MAX_PRIVATE_BYTES:
                log.info("private storage of %s: %d bytes for %s refused", to, len(xml), namespace)
                raise StanzaError("not-acceptable", f"a stored element has at most {MAX_PRIVATE_BYTES} bytes")
        await self.server.storage.set_private_xml(to.local, namespace, xml)
        if bookmarks is not None:
            await bookmarks.write(to.local, element, iq.get("from"))
        return iq_result(iq)


def _query(element: etree._Element) -> etree._Element:
    query = etree.Element(QUERY, nsmap={None: NS_PRIVATE})
    query.append(element)
    return query


def setup(server: "Server") -> PrivateXml:
    return PrivateXml(server)
