"""XEP-0398: avatars in PEP (XEP-0084) and in the vCard (XEP-0153) kept consistent, both ways.

Clients that only read vCard avatars see the avatar a modern client set, and
the other way round:
- when the owner publishes metadata, the image named by its first <info/> with
  no url is read from the urn:xmpp:avatar:data node and written into the
  stored vCard as PHOTO (TYPE, BINVAL); empty metadata (the avatar was
  removed) removes PHOTO;
- when the owner sets a vCard with a PHOTO that is not the PEP avatar, the
  image is published to urn:xmpp:avatar:data and its metadata (id = SHA-1 of
  the image) to urn:xmpp:avatar:metadata; a vCard without PHOTO, while PEP
  has an avatar, publishes empty metadata.
The presence hash of XEP-0153 is not added. Loaded by pep.py when the vcard
module is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from typing import TYPE_CHECKING

from lxml import etree

from .stanza import STORED_PARSER, StanzaError, qname
from .storage.models import PepItem
from .vcard import MAX_VCARD_BYTES, NS_VCARD, VCARD

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("xmppd.avatar")

NS_METADATA = "urn:xmpp:avatar:metadata"
NS_DATA = "urn:xmpp:avatar:data"
NS_CONVERSION = "urn:xmpp:pep-vcard-conversion:0"
PHOTO = qname(NS_VCARD, "PHOTO")


def vcard_with_photo(vcard_xml: str | None, image_type: str | None, base64_data: str | None) -> str:
    """The vCard (a new one if there is none) with its PHOTO replaced; without data, with no PHOTO."""
    vcard = etree.fromstring(vcard_xml, STORED_PARSER) if vcard_xml else etree.Element(VCARD, nsmap={None: NS_VCARD})
    for old in vcard.findall(PHOTO):
        vcard.remove(old)
    if base64_data:
        photo = etree.SubElement(vcard, PHOTO)
        etree.SubElement(photo, qname(NS_VCARD, "TYPE")).text = image_type or "image/png"
        etree.SubElement(photo, qname(NS_VCARD, "BINVAL")).text = base64_data
    return etree.tostring(vcard, encoding="unicode")


def _photo_of(vcard: etree._Element) -> str:
    """The base64 text of the vCard's PHOTO, without whitespace; empty if it has none."""
    return "".join((vcard.findtext(f"{PHOTO}/{qname(NS_VCARD, 'BINVAL')}") or "").split())


class AvatarConversion:
    def __init__(self, server: "Server") -> None:
        self.server = server
        server.add_feature(NS_CONVERSION, scopes=("account",))
        server.on("pep-published", self._published)
        server.on("vcard-changed", self._vcard_changed)

    async def _vcard_changed(self, owner: str, vcard: etree._Element, publisher: str) -> None:
        try:
            await self._publish_photo(owner, vcard, publisher)
        except StanzaError as error:   # the account's PEP refused it (too many nodes …)
            log.info("avatar of %s: the vCard PHOTO could not be published to PEP: %s", owner, error)

    async def _publish_photo(self, owner: str, vcard: etree._Element, publisher: str) -> None:
        text = _photo_of(vcard)
        current = await self._pep_avatar_id(owner)
        pep = self.server.module("pep")
        if not text:
            if current:   # the vCard lost its photo: so does PEP
                empty = etree.Element(qname(NS_METADATA, "metadata"), nsmap={None: NS_METADATA})
                await pep.publish(owner, NS_METADATA, "none", empty, {}, publisher)
            return
        photo = vcard.find(PHOTO)
        try:
            image = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            log.info("avatar of %s: the vCard PHOTO is not base64; not published to PEP", owner)
            return
        avatar_id = hashlib.sha1(image).hexdigest()
        if avatar_id == current:
            return   # the PEP avatar already (the vCard may just have been written from it)
        data = etree.Element(qname(NS_DATA, "data"), nsmap={None: NS_DATA})
        data.text = text
        await pep.publish(owner, NS_DATA, avatar_id, data, {}, publisher)
        metadata = etree.Element(qname(NS_METADATA, "metadata"), nsmap={None: NS_METADATA})
        etree.SubElement(metadata, qname(NS_METADATA, "info"), id=avatar_id, bytes=str(len(image)),
                         type=photo.findtext(qname(NS_VCARD, "TYPE")) or "image/png")
        await pep.publish(owner, NS_METADATA, avatar_id, metadata, {}, publisher)

    async def _pep_avatar_id(self, owner: str) -> str | None:
        """The id of the avatar the metadata node names now, None if there is none."""
        last = await self.server.storage.pep_items(owner, NS_METADATA, newest=1)
        if not last:
            return None
        info = etree.fromstring(last[0].payload, STORED_PARSER).find(qname(NS_METADATA, "info"))
        return info.get("id") if info is not None else None

    async def _published(self, owner: str, node: str, item: PepItem) -> None:
        if node != NS_METADATA:
            return
        metadata = etree.fromstring(item.payload, STORED_PARSER)
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
        data = "".join((etree.fromstring(found[0].payload, STORED_PARSER).text or "").split())
        stored = await storage.get_vcard(owner)
        if stored is not None and _photo_of(etree.fromstring(stored, STORED_PARSER)) == data:
            return   # the vCard has it already (it may be where the avatar came from)
        xml = vcard_with_photo(stored, info.get("type"), data)
        if len(xml.encode("utf-8")) > MAX_VCARD_BYTES:
            log.info("avatar of %s: %d bytes do not fit in a vCard (at most %d); vCard left alone",
                     owner, len(xml), MAX_VCARD_BYTES)
            return
        await storage.set_vcard(owner, xml)


def setup(server: "Server") -> AvatarConversion:
    return AvatarConversion(server)
