"""XEP-0115 entity capabilities, server side: what each local client supports.

A client's presence carries <c node ver hash/>: a hash of its disco#info. The
server learns the features behind a hash once, by asking the first client that
announces it (disco#info on node#ver), checks that the answer hashes to the
ver (§5.4, so one client cannot poison the cache for everyone), and keeps it
for every later client with the same ver. PEP reads "NODE+notify" features
from here (XEP-0163 filtered notifications).

When a session's features change (its first presence with caps, or a new
client version), 'caps-changed' (session, features, previous features) fires.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from lxml import etree

from .dataforms import FIELD, NS_DATA, VALUE, form_type
from .stanza import make, qname

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

log = logging.getLogger("xmppd.caps")

NS_CAPS = "http://jabber.org/protocol/caps"
CAPS = qname(NS_CAPS, "c")
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

# XEP-0115 §5: the hash functions of the IANA registry a client may name, by their names there.
HASHES = {"sha-1": hashlib.sha1, "sha-224": hashlib.sha224, "sha-256": hashlib.sha256,
          "sha-384": hashlib.sha384, "sha-512": hashlib.sha512}
# Distinct ver strings remembered (each a few hundred bytes): far more than there are client versions.
CACHE_SIZE = 1000
# How long a client has to answer the disco#info query.
QUERY_TIMEOUT = 15.0


class InvalidCaps(Exception):
    """A disco#info answer that XEP-0115 §5.4 says must not be used for a hash."""


def verification_string(query: etree._Element) -> str:
    """XEP-0115 §5.1: identities, features and extended forms of a disco#info <query/>, in the one
    order both sides compute. Raises InvalidCaps for duplicates or a form without a hidden FORM_TYPE."""
    identities = sorted((i.get("category", ""), i.get("type", ""), i.get(XML_LANG, ""), i.get("name", ""))
                        for i in query.iterchildren(qname(NS_DISCO_INFO, "identity")))
    features = sorted(f.get("var", "") for f in query.iterchildren(qname(NS_DISCO_INFO, "feature")))
    if len(set(identities)) != len(identities) or len(set(features)) != len(features):
        raise InvalidCaps("the same identity or feature twice")
    forms = []
    for form in query.iterchildren(qname(NS_DATA, "x")):
        kind = form_type(form)
        if kind is None:
            continue   # §5.4 3.6: a form without FORM_TYPE is left out
        type_field = next(f for f in form.iterchildren(FIELD) if f.get("var") == "FORM_TYPE")
        if type_field.get("type") != "hidden":
            raise InvalidCaps("a FORM_TYPE field that is not hidden")
        fields = sorted((f.get("var", ""), sorted(v.text or "" for v in f.iterchildren(VALUE)))
                        for f in form.iterchildren(FIELD) if f.get("var") != "FORM_TYPE")
        forms.append((kind, fields))
    if len({kind for kind, _ in forms}) != len(forms):
        raise InvalidCaps("two forms with one FORM_TYPE")
    text = "".join(f"{c}/{t}/{lang}/{name}<" for c, t, lang, name in identities)
    text += "".join(f"{var}<" for var in features)
    for kind, fields in sorted(forms):
        text += f"{kind}<"
        for var, values in fields:
            text += f"{var}<" + "".join(f"{value}<" for value in values)
    return text


def ver_of(query: etree._Element, hash_name: str) -> str:
    """The ver a client with this disco#info announces (base64 of the hash of the verification string)."""
    digest = HASHES[hash_name](verification_string(query).encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii")


def features_of(query: etree._Element) -> frozenset[str]:
    return frozenset(f.get("var", "") for f in query.iterchildren(qname(NS_DISCO_INFO, "feature")))


class Caps:
    def __init__(self, server: "Server") -> None:
        self.server = server
        self._by_ver: OrderedDict[tuple[str, str], frozenset[str]] = OrderedDict()   # (hash, ver) -> features
        self._asking: dict[tuple[str, str], asyncio.Future] = {}
        self._of_session: WeakKeyDictionary["Session", frozenset[str]] = WeakKeyDictionary()
        server.on("presence-available", self._presence)

    def features(self, session: "Session") -> frozenset[str]:
        """What the client said it supports; empty until its caps are known."""
        return self._of_session.get(session, frozenset())

    async def _presence(self, session: "Session", presence: etree._Element) -> None:
        caps = presence.find(CAPS)
        if caps is None or not caps.get("node") or not caps.get("ver"):
            return
        features = await self._learn(session, caps.get("node"), caps.get("ver"), caps.get("hash"))
        if features is None or session.closed:
            return
        previous = self._of_session.get(session, frozenset())
        if features == previous:
            return
        self._of_session[session] = features
        for pending in self.server.fire("caps-changed", session, features, previous):
            await pending

    async def _learn(self, session: "Session", node: str, ver: str, hash_name: str | None) -> frozenset[str] | None:
        if hash_name is None:
            # Legacy caps (before version 1.5) cannot be verified: asked for this client only, never cached.
            query = await self._ask(session, node, ver)
            return None if query is None else features_of(query)
        if hash_name not in HASHES:
            log.info("caps of %s: unknown hash %r, ignored", session.full, hash_name)
            return None
        key = (hash_name, ver)
        known = self._by_ver.get(key)
        if known is not None:
            self._by_ver.move_to_end(key)
            return known
        asking = self._asking.get(key)
        if asking is not None:   # another client with this ver is being asked already
            return await asyncio.shield(asking)
        asking = self._asking[key] = asyncio.get_running_loop().create_future()
        features = None
        try:
            query = await self._ask(session, node, ver)
            if query is not None:
                features = self._verified(session, query, hash_name, ver)
        finally:
            del self._asking[key]
            asking.set_result(features)
        return features

    def _verified(self, session: "Session", query: etree._Element, hash_name: str, ver: str) -> frozenset[str] | None:
        try:
            actual = ver_of(query, hash_name)
        except InvalidCaps as error:
            log.info("caps of %s: disco#info not usable for a hash (%s), ignored", session.full, error)
            return None
        if actual != ver:
            log.info("caps of %s: ver %s does not match its disco#info (%s), ignored", session.full, ver, actual)
            return None
        features = features_of(query)
        self._by_ver[(hash_name, ver)] = features
        if len(self._by_ver) > CACHE_SIZE:
            self._by_ver.popitem(last=False)
        return features

    async def _ask(self, session: "Session", node: str, ver: str) -> etree._Element | None:
        iq = make("iq", {"type": "get", "from": self.server.domain, "to": session.full})
        etree.SubElement(iq, qname(NS_DISCO_INFO, "query"), {"node": f"{node}#{ver}"},
                         nsmap={None: NS_DISCO_INFO})
        try:
            answer = await self.server.request(iq, QUERY_TIMEOUT)
        except TimeoutError:
            log.info("caps of %s: no answer to disco#info", session.full)
            return None
        query = answer.find(qname(NS_DISCO_INFO, "query"))
        if answer.get("type") != "result" or query is None:
            log.info("caps of %s: disco#info answered with an error", session.full)
            return None
        return query


def setup(server: "Server") -> Caps:
    return Caps(server)
