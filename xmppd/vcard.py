"""XEP-0054 vcard-temp: a user stores one vCard; any user may read it.

The vCard is kept as the serialized <vCard/> element, opaque to the server.
When the owner has none, the owner gets an empty <vCard/> (§3.1) while
others get <service-unavailable/> (§3.3), the answer the router gives for an
account that does not exist, so vCard lookups reveal no accounts; a set by
anyone but the owner gets the same answer.
"""

from __future__ import annotations

import logging
from copy import deepcopy
from typing import TYPE_CHECKING

from lxml import etree

from .jid import JID
from .router import require_owner
from .server import SCOPE_ACCOUNT, SCOPE_SERVER
from .stanza import STORED_PARSER, StanzaError, iq_result, qname

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

log = logging.getLogger("xmppd.vcard")

NS_VCARD = "vcard-temp"
VCARD = qname(NS_VCARD, "vCard")

# Serialized size a vCard may have; enough for a small PHOTO, small enough that one user cannot fill the disk.
MAX_VCARD_BYTES = 64 * 1024


class VCard:
    def __init__(self, server: "Server") -> None:
        self.server = server
        server.add_feature(NS_VCARD, scopes=(SCOPE_SERVER,))
        server.add_iq_handler(VCARD, self.handle_iq, scopes=(SCOPE_ACCOUNT,))

    async def handle_iq(self, iq: etree._Element, origin: "Session | None", to: JID) -> etree._Element:
        own = origin is not None and origin.bare_jid == to
        if iq.get("type") == "set":
            require_owner(origin, to)
            return await self._set(iq, to.local)
        stored = await self.server.storage.get_vcard(to.local)
        if stored is None:
            if not own:
                raise StanzaError("service-unavailable")
            return iq_result(iq, etree.Element(VCARD, nsmap={None: NS_VCARD}))
        return iq_result(iq, etree.fromstring(stored, STORED_PARSER))

    async def _set(self, iq: etree._Element, username: str) -> etree._Element:
        vcard = iq[0]
        if len(vcard) == 0 and not (vcard.text or "").strip():
            # An empty <vCard/> clears the stored one: the way a client deletes what it published.
            await self.server.storage.set_vcard(username, None)
            await self._changed(username, vcard, iq.get("from"))
            return iq_result(iq)
        # Serialized from a copy: the copy leaves behind the namespace declarations the stanza inherited from
        # the stream (xmlns:stream …), which lxml would otherwise write into every stored vCard.
        xml = etree.tostring(deepcopy(vcard), encoding="unicode", with_tail=False)
        if len(xml.encode("utf-8")) > MAX_VCARD_BYTES:
            raise StanzaError("not-acceptable", f"a vCard may have at most {MAX_VCARD_BYTES} bytes")
        await self.server.storage.set_vcard(username, xml)
        await self._changed(username, vcard, iq.get("from"))
        return iq_result(iq)

    async def _changed(self, username: str, vcard: etree._Element, publisher: str) -> None:
        """'vcard-changed' hooks (the avatar conversion of XEP-0398) run before the set is answered."""
        for pending in self.server.fire("vcard-changed", username, vcard, publisher):
            try:
                await pending
            except Exception:
                log.exception("vcard-changed hook failed for %s", username)


def setup(server: "Server") -> VCard:
    return VCard(server)
