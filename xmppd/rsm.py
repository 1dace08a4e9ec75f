"""XEP-0059 Result Set Management: the <set/> a client pages with, and the one the server answers with.

Sans-IO: parse_request() reads a request's <set/> into a PageRequest (or
raises StanzaError for the client's mistakes); result_set() builds the answer.
What the ids mean is up to the protocol that pages (mam.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from .stanza import StanzaError, qname

NS_RSM = "http://jabber.org/protocol/rsm"
SET = qname(NS_RSM, "set")


@dataclass(frozen=True, slots=True)
class PageRequest:
    """What a client asked for. `before` is "" for an empty <before/>: the last page (XEP-0059 §2.5)."""

    max: int | None = None
    after: str | None = None
    before: str | None = None
    index: int | None = None


def parse_request(parent: etree._Element) -> PageRequest:
    """The <set/> child of `parent`, if any. bad-request for a malformed one (XEP-0059 §2.6 wants
    non-negative integers; <index/> jumps to an offset and cannot be combined with <after/> or <before/>)."""
    element = parent.find(SET)
    if element is None:
        return PageRequest()
    max_ = _integer(element, "max")
    index = _integer(element, "index")
    after = _text(element, "after")
    before = _text(element, "before")
    if after == "":
        raise StanzaError("bad-request", "RSM <after/> needs an id")
    if after is not None and before is not None:
        raise StanzaError("bad-request", "RSM <after/> and <before/> cannot be combined")
    if index is not None and (after is not None or before is not None):
        raise StanzaError("bad-request", "RSM <index/> cannot be combined with <after/> or <before/>")
    return PageRequest(max_, after, before, index)


def result_set(first: str | None, last: str | None, *, first_index: int | None = None,
               count: int | None = None) -> etree._Element:
    """The answer's <set/>: the ids of the first and last item of the page (none for an empty page), the
    first item's position in the whole result set and the size of that set where they are known."""
    element = etree.Element(SET, nsmap={None: NS_RSM})
    if first is not None and last is not None:
        first_element = etree.SubElement(element, qname(NS_RSM, "first"))
        first_element.text = first
        if first_index is not None:
            first_element.set("index", str(first_index))
        etree.SubElement(element, qname(NS_RSM, "last")).text = last
    if count is not None:
        etree.SubElement(element, qname(NS_RSM, "count")).text = str(count)
    return element


def _text(element: etree._Element, name: str) -> str | None:
    child = element.find(qname(NS_RSM, name))
    if child is None:
        return None
    return (child.text or "").strip()


def _integer(element: etree._Element, name: str) -> int | None:
    text = _text(element, name)
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise StanzaError("bad-request", f"RSM <{name}/> must be a non-negative integer")
    return int(text)
