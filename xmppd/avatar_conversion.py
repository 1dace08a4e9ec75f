"""XEP-0398, one way: an avatar published through PEP (XEP-0084) becomes the vCard's PHOTO (XEP-0153).

Clients that only read vCard avatars then see the avatar a modern client set.
When the owner publishes metadata, the image named by its first <info/> with
no url is read from the urn:xmpp:avatar:data node and written into the stored
vCard as PHOTO (TYPE, BINVAL); empty metadata (the avatar was removed) removes
PHOTO. The other way (a vCard PHOTO published to PEP) and the presence hash
of XEP-0153 are not done. Loaded by pep.py when the vcard module is.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lxml import etree

from .stanza import qname
from .storage.models import PepItem
from .vcard import MAX_VCARD_BYTES, NS_VCARD, VCARD

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("xmppd.avatar")

NS_METADATA = "urn:xmpp:avatar:metadata"
NS_DATA = "urn:xmpp:avatar:data"
NS_CONVERSION = "urn:xmpp:pep-vcard-conversion:0"
PHOTO = qname(NS_VCARD, "PHOTO")

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True, remove_pis=True)


def vcard_with_photo(vcard_xml: str | None, image_type: str | None, base64_data: str | None) -> str:
    """The vCard (a new one if there is none) with its PHOTO replaced; without data, with no PHOTO."""
    vcard = etree.fromstring(vcard_xml, _PARSER) if vcard_xml else etree.Element(VCARD, nsmap={None: NS_VCARD})
    for old in vcard.findall(PHOTO):
        vcard.remove(old)
    if base64_data:
        photo = etree.SubElement(vcard, PHOTO)
        etree.SubElement(photo, qname(NS_VCARD, "TYPE")).text = image_type or "image/png"
        etree.SubElement(photo, qname(NS_VCARD, "BINVAL")).text = base64_data
    return etree.tostring(vcard, encoding="unicode")


class AvatarConversion:
    def __init__(self, server: "Server") -> None:
        self.server = server
        server.add_feature(NS_CONVERSION, scopes=("account",))
        server.on("pep-published", self._published)

    async def _published(self, owner: str, node: str, item: PepItem) -> None:
        if node != NS_METADATA:
            return
        metadata = etree.fromstring(item.payload, _PARSER)
        infos = [info for info in metadata.iterchildren(qname(NS_METADATA, "info")) if not info.get("url")]
        storage = self.server.storage
        if not infos:
            if metadata.find(qname(NS_METADATA, "info")) is None:   # <metadata/>: no avatar any more
                stored = await storage.get_vcard(owner)
                if stored is not None:
                    await storage.set_vcard(owner, vcard_with_photo(stored, None, None))
            return
        info = infos[0]
        found = await storage.pep_items(owner, NS_DATA, item_ids=[info.get("id", "")])
        if not found:
            log.info("avatar of %s: metadata names %s, which is not in %s; vCard left alone",
                     owner, info.get("id"), NS_DATA)
            return
        data = (etree.fromstring(found[0].payload, _PARSER).text or "").strip()
        xml = vcard_with_photo(await storage.get_vcard(owner), info.get("type"), data)
        if len(xml.encode("utf-8")) > MAX_VCARD_BYTES:
            log.info("avatar of %s: %d bytes do not fit in a vCard (at most %d); vCard left alone",
                     owner, len(xml), MAX_VCARD_BYTES)
            return
        await storage.set_vcard(owner, xml)


def setup(server: "Server") -> AvatarConversion:
    return AvatarConversion(server)
