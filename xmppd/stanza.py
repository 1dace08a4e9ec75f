"""Building and inspecting stanzas (RFC 6120 §8) as lxml elements.

Stanzas travel through the server as the lxml elements the parser produced;
these helpers keep the namespace bookkeeping in one place.
"""

from __future__ import annotations

from copy import deepcopy
from datetime import datetime, timezone

from lxml import etree

NS_CLIENT = "jabber:client"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_DELAY = "urn:xmpp:delay"

MESSAGE = f"{{{NS_CLIENT}}}message"
PRESENCE = f"{{{NS_CLIENT}}}presence"
IQ = f"{{{NS_CLIENT}}}iq"
STANZA_TAGS = frozenset((MESSAGE, PRESENCE, IQ))

# RFC 6120 §8.3.3: the error type that goes with each defined condition.
ERROR_TYPES = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "cancel",
    "unexpected-request": "wait",
}


def qname(ns: str, name: str) -> str:
    """Clark notation, the form lxml uses for tags: {ns}name."""
    return f"{{{ns}}}{name}"


def kind(element: etree._Element) -> str:
    """'message', 'presence' or 'iq' (or another local name for non-stanzas)."""
    return etree.QName(element).localname


def make(tag: str, attrs: dict[str, str | None] | None = None, ns: str = NS_CLIENT) -> etree._Element:
    """A new top-level stanza element in the content namespace; None-valued attributes are skipped."""
    element = etree.Element(qname(ns, tag), nsmap={None: ns})
    if attrs:
        for key, value in attrs.items():
            if value is not None:
                element.set(key, value)
    return element


def child(parent: etree._Element, ns: str, name: str, text: str | None = None) -> etree._Element:
    """Append a namespaced child (lxml adds the xmlns only where it differs from the parent)."""
    element = etree.SubElement(parent, qname(ns, name), nsmap={None: ns} if ns != _ns_of(parent) else None)
    if text is not None:
        element.text = text
    return element


def _ns_of(element: etree._Element) -> str | None:
    return etree.QName(element).namespace


def iq_result(request: etree._Element, payload: etree._Element | None = None) -> etree._Element:
    """The type='result' answer to an iq, addressed back to its sender."""
    reply = make("iq", {"type": "result", "id": request.get("id"),
                        "from": request.get("to"), "to": request.get("from")})
    if payload is not None:
        reply.append(payload)
    return reply


def error_reply(stanza: etree._Element, condition: str, text: str | None = None,
                error_type: str | None = None) -> etree._Element:
    """An error stanza answering `stanza` (RFC 6120 §8.3): to/from swapped, the original payload of an
    iq left out (it may be large and the sender has it), the defined condition and optional text."""
    reply = make(kind(stanza), {"type": "error", "id": stanza.get("id"),
                                "from": stanza.get("to"), "to": stanza.get("from")})
    if kind(stanza) != "iq":
        # Messages and presences keep their payload so the sender can tell which one failed.
        for original in stanza:
            reply.append(deepcopy(original))
    error = etree.SubElement(reply, qname(NS_CLIENT, "error"))
    error.set("type", error_type or ERROR_TYPES.get(condition, "cancel"))
    etree.SubElement(error, qname(NS_STANZAS, condition), nsmap={None: NS_STANZAS})
    if text:
        text_element = etree.SubElement(error, qname(NS_STANZAS, "text"), nsmap={None: NS_STANZAS})
        text_element.text = text
    return reply


# For XML the server stored itself (stanzas, vCards, PEP items, private XML; all came through the stream
# parser once): parsed again with the same restrictions anyway, no entities, no network, no comments or PIs.
STORED_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True, remove_pis=True)


def with_delay(data: bytes, when: datetime, from_: str, text: str | None = None) -> bytes:
    """A serialised message or presence with a XEP-0203 stamp saying when the server got it, for a
    stanza handed over late (offline storage, a resumption); one that is stamped already keeps its
    stamp, and other stanzas come back unchanged."""
    if not (data.startswith(b"<message") or data.startswith(b"<presence")):
        return data
    element = etree.fromstring(data, STORED_PARSER)
    if element.find(qname(NS_DELAY, "delay")) is not None:
        return data
    delay = etree.SubElement(element, qname(NS_DELAY, "delay"), nsmap={None: NS_DELAY})
    delay.set("from", from_)
    delay.set("stamp", when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    if text:
        delay.text = text
    return serialize(element)


def serialize(element: etree._Element) -> bytes:
    """The bytes sent on a client stream (UTF-8, no XML declaration, no tail text)."""
    return etree.tostring(element, encoding="utf-8", with_tail=False)


class StanzaError(Exception):
    """Raised by a handler to answer the stanza it is handling with an error (RFC 6120 §8.3)."""

    def __init__(self, condition: str, text: str | None = None, error_type: str | None = None):
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text
        self.error_type = error_type
