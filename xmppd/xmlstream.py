"""Sans-IO parser and serializers for RFC 6120 XML streams.

`StreamParser.feed()` takes bytes as they come off the socket and returns
stream events; it never does I/O.  Why it is built the way it is:

* lxml builds the elements, but a small byte scanner in front of it decides
  where every top-level element (stanza) starts and ends.  lxml only ever
  receives whole units: the stream's start tag, one complete stanza, the
  closing tag.  libxml2's push parser answers differently depending on how
  its input is split (XML declaration, undeclared entities); feeding it
  whole units makes every result independent of TCP segmentation.
* The scanner enforces what lxml cannot: RFC 6120 restricted XML (§11.1),
  the stanza size limit *while* a stanza arrives (a client that never closes
  a tag is cut off after max_stanza_size bytes), the nesting limit, and no
  character data at stream level.  It drops whitespace between stanzas
  before lxml sees it, so keepalives cost no memory.
* A complete stanza is matched with one regular expression (C speed); only
  stanzas that are split across reads, deeper than a few levels or contain
  CDATA fall back to a token-by-token loop.  The two paths accept the same
  input, the fast one is only a shortcut.
* Every stanza is copied out of the stream document into its own document:
  the copy keeps `xmlns='jabber:client'` as its default namespace (lxml's
  remove() would invent an `ns0:` prefix) and a queued stanza does not keep
  the stream's document alive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lxml import etree

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
NS_CLIENT = "jabber:client"

STREAM_CLOSE: bytes = b"</stream:stream>"

# RFC 6120 §4.9.3 defined stream error conditions.
STREAM_ERROR_CONDITIONS = frozenset({
    "bad-format", "bad-namespace-prefix", "conflict", "connection-timeout",
    "host-gone", "host-unknown", "improper-addressing", "internal-server-error",
    "invalid-from", "invalid-namespace", "invalid-xml", "not-authorized",
    "not-well-formed", "policy-violation", "remote-connection-failed", "reset",
    "resource-constraint", "restricted-xml", "see-other-host", "system-shutdown",
    "undefined-condition", "unsupported-encoding", "unsupported-feature",
    "unsupported-stanza-type", "unsupported-version",
})


@dataclass(slots=True)
class StreamOpened:
    """The <stream:stream ...> start tag was read."""
    attrs: dict[str, str]


@dataclass(slots=True)
class StanzaReceived:
    """A complete top-level child of the stream, detached (its own document)."""
    element: "etree._Element"


@dataclass(slots=True)
class StreamClosed:
    """</stream:stream> was read."""


class StreamError(Exception):
    """Raised by feed(); the stream must be closed with this RFC 6120 §4.9.3 condition.

    `events` holds the events that the failing feed() call completed before
    the error (stanzas that arrived intact in the same read); a caller may
    still process them before closing the stream.
    """

    def __init__(self, condition: str, text: str = ""):
        super().__init__(condition, text)
        self.condition = condition
        self.text = text
        self.events: list[StreamOpened | StanzaReceived | StreamClosed] = []

    def __str__(self) -> str:
        return f"{self.condition}: {self.text}" if self.text else self.condition


# ---------------------------------------------------------------- scanner tables

_LT, _GT, _SLASH, _BANG, _QMARK = b"<>/!?"

_WS_RUN = re.compile(rb"[ \t\r\n]*+")
# Inside a start tag, resumable at any position outside an attribute value:
# unquoted parts and complete quoted values; stops at '>', at '<' (never legal
# in a tag) or at a value that is unterminated or contains '<'.
_TAG_BODY = re.compile(rb"""[^<>"']*+(?:(?:"[^"<]*+"|'[^'<]*+')[^<>"']*+)*+""")
_VALUE_REST = {ord("'"): re.compile(rb"[^'<]*+"), ord('"'): re.compile(rb'[^"<]*+')}
_NAME = re.compile(rb"[^ \t\r\n/>]*+")
_CDATA_OPEN = b"<![CDATA["
# An '&' that does not start one of the five predefined or a character reference.
_BAD_AMP = re.compile(rb"&(?!(?:amp|lt|gt|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);)")
_NAMED_REF = re.compile(rb"&[^\s&;<>\"'#=/]+;")
# XML declaration (XML 1.0 §2.8), with the encoding name captured.  The
# version number follows the 4th edition grammar, as expat (Prosody,
# ejabberd) does: <?xml version='0.9'?> is read, the stream's own version
# attribute is what the caller negotiates.
_XML_DECL = re.compile(
    rb"<\?xml[ \t\r\n]+version[ \t\r\n]*=[ \t\r\n]*(?:'[A-Za-z0-9_.:-]+'|\"[A-Za-z0-9_.:-]+\")"
    rb"(?:[ \t\r\n]+encoding[ \t\r\n]*=[ \t\r\n]*(?:'([A-Za-z][A-Za-z0-9._-]*)'|\"([A-Za-z][A-Za-z0-9._-]*)\"))?"
    rb"(?:[ \t\r\n]+standalone[ \t\r\n]*=[ \t\r\n]*(?:'(?:yes|no)'|\"(?:yes|no)\"))?"
    rb"[ \t\r\n]*\?>")
_DECL_START = b"<?xml"
_LXML_POSITION = re.compile(r"(?:, line \d+, column \d+| \(<string>, line \d+\))+$")


def _fast_stanza(levels: int) -> re.Pattern[bytes]:
    """Regex matching one complete stanza of at most `levels` nested elements
    that the token loop would accept unchanged: no CDATA, comment or PI, only
    predefined/character references.  Possessive quantifiers keep it linear."""
    ref = rb"&(?:amp|lt|gt|quot|apos|#[0-9]++|#x[0-9a-fA-F]++);"
    value = rb"(?:\"(?:[^\"<&]++|" + ref + rb")*+\"|'(?:[^'<&]++|" + ref + rb")*+')"
    start = rb"<[^<>\"'&/!?\s][^<>\"'&/]*+(?:" + value + rb"[^<>\"'&/]*+)*+"
    end = rb"</[^<>]*+>"
    elem = start + rb"(?:/>|>(?:[^<&]++|" + ref + rb")*+" + end + rb")"
    for _ in range(levels - 1):
        elem = start + rb"(?:/>|>(?:[^<&]++|" + ref + rb"|" + elem + rb")*+" + end + rb")"
    return re.compile(elem)


_FAST_LEVELS = 8
_FAST = {n: _fast_stanza(n) for n in range(1, _FAST_LEVELS + 1)}

_STREAM_TAG = f"{{{NS_STREAMS}}}stream"
_START, _PROLOG, _OPEN, _CLOSED = range(4)


def _check_refs(buf, start: int, end: int) -> None:
    """Entity references other than the five predefined ones are restricted
    XML (RFC 6120 §11.1); a stray '&' is not well-formed."""
    m = _BAD_AMP.search(buf, start, end)
    if m is None:
        return
    ref = _NAMED_REF.match(buf, m.start(), end)
    if ref is not None:
        name = bytes(ref.group()).decode("utf-8", "replace")
        raise StreamError("restricted-xml", f"entity reference {name} is not allowed")
    raise StreamError("not-well-formed", "'&' that does not start a reference")


def _lxml_message(exc: etree.LxmlError) -> str:
    """lxml's message without its position: lines and columns refer to lxml's
    view of the stream (whitespace between stanzas removed), not the peer's."""
    return _LXML_POSITION.sub("", getattr(exc, "msg", None) or str(exc))


class StreamParser:
    """Incremental parser for one XML stream (one per stream restart).

    feed() returns StreamOpened, StanzaReceived and StreamClosed events in
    order; malformed, restricted or oversized input raises StreamError, after
    which the parser stays dead.  Depths count the stanza element as level 1;
    lxml's own limit (256 levels including the stream root) bounds max_depth.
    """

    __slots__ = ("_content_ns", "_max_size", "_max_depth", "_fast", "_buf",
                 "_phase", "_stack", "_pos", "_resume", "_quote", "_start",
                 "_lxml", "_events", "_root", "_root_tag", "_error")

    def __init__(self, *, content_ns: str = NS_CLIENT, max_stanza_size: int = 262144,
                 max_depth: int = 64):
        self._content_ns = content_ns
        self._max_size = max_stanza_size
        self._max_depth = max_depth
        self._fast = _FAST[min(_FAST_LEVELS, max_depth)] if max_depth > 0 else None
        self._buf = b""           # bytes of the unit in progress, from self._start
        self._phase = _START
        self._stack: list[bytes] = []   # names of the open elements inside the stream root
        self._pos = 0             # start of the token being scanned
        self._resume = 0          # where scanning of that token continues
        self._quote = 0           # quote byte if _resume is inside an attribute value
        self._start = 0           # '<' of the current top-level unit
        self._lxml = None
        self._events = None
        self._root = None
        self._root_tag = b""
        self._error: tuple[str, str] | None = None

    def feed(self, data: bytes) -> list[StreamOpened | StanzaReceived | StreamClosed]:
        """Parse more bytes; return the events completed by them, in order. Raises StreamError.
        After a StreamError the parser is dead (further feed() raises the same error again)."""
        if self._error is not None:
            raise StreamError(*self._error)
        if self._phase == _CLOSED or not data:
            return []
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data
        events: list[StreamOpened | StanzaReceived | StreamClosed] = []
        try:
            if self._phase == _OPEN:
                done = self._scan_stream(buf, events)
            else:
                done = self._scan_prolog(buf, events)
        except StreamError as exc:
            self._die(exc.condition, exc.text)
            exc.events = events
            raise
        if done:
            self._buf = b""
            self._pos = self._resume = self._start = 0
        else:
            keep = self._start
            if buf is self._buf:
                del buf[:keep]
            else:
                self._buf = bytearray(memoryview(buf)[keep:])
            self._pos -= keep
            self._resume -= keep
            self._start = 0
        return events

    def _die(self, condition: str, text: str) -> None:
        self._error = (condition, text)
        self._buf = b""
        self._lxml = self._events = self._root = None

    # ------------------------------------------------------------ prolog

    def _scan_prolog(self, buf, events) -> bool:
        """Before the root: optional XML declaration at byte 0, whitespace,
        then the stream start tag.  Returns True when buf is fully used."""
        n = len(buf)
        if self._phase == _START:
            if not self._scan_decl(buf, n):
                return False
            self._phase = _PROLOG
        pos = self._pos
        if self._resume <= pos:                  # no start tag in progress
            pos = _WS_RUN.match(buf, pos).end()
            if pos == n:
                return True
            if buf[pos] != _LT:
                raise StreamError("not-well-formed", "content before the stream header")
            self._pos = self._resume = self._start = pos
        limit = pos + self._max_size
        bound = min(n, limit)
        if pos + 1 >= bound:
            return self._incomplete(n, limit, "stream header")
        kind = buf[pos + 1]
        if kind == _QMARK or kind == _BANG:
            raise StreamError("restricted-xml",
                              "DTD, comment or processing instruction before the stream header")
        if kind == _SLASH:
            raise StreamError("not-well-formed", "end tag before the stream header")
        end = self._scan_tag(buf, bound)
        if end < 0:
            return self._incomplete(n, limit, "stream header")
        self._open_stream(buf, pos, end + 1, events)
        self._pos = self._resume = self._start = end + 1
        self._quote = 0
        if self._phase == _CLOSED:
            return True
        return self._scan_stream(buf, events)

    def _scan_decl(self, buf, n: int) -> bool:
        """Handle the XML declaration ourselves (libxml2's push parser reads it
        differently depending on how it is split).  False: need more bytes."""
        head = bytes(buf[:6])
        if head[:1] in (b"\x00", b"\xfe", b"\xff") or head[:2] == b"<\x00":
            raise StreamError("unsupported-encoding", "only UTF-8 is allowed")
        if len(head) < 6 and _DECL_START.startswith(head[:5]):
            return False                         # could still become "<?xml "
        if not head.startswith(_DECL_START):
            return True                          # no declaration
        if head[5] not in b" \t\r\n":
            raise StreamError("restricted-xml", "processing instructions are not allowed")
        limit = self._max_size
        bound = min(n, limit)
        end = buf.find(b"?>", max(self._resume, 5), bound)
        if end < 0:
            self._resume = max(5, bound - 1)
            return self._incomplete(n, limit, "XML declaration")
        decl = _XML_DECL.fullmatch(buf, 0, end + 2)
        if decl is None:
            raise StreamError("not-well-formed", "malformed XML declaration")
        encoding = decl.group(1) or decl.group(2)
        if encoding is not None and bytes(encoding).lower() != b"utf-8":
            raise StreamError("unsupported-encoding",
                              f"encoding {bytes(encoding).decode('ascii')} is not UTF-8")
        self._pos = self._resume = self._start = end + 2
        return True

    def _open_stream(self, buf, start: int, end: int, events) -> None:
        self._root_tag = bytes(buf[start:end])
        _check_refs(self._root_tag, 0, len(self._root_tag))
        self._new_lxml()
        root = self._root
        if root is None:
            raise StreamError("invalid-namespace",
                              f"root element is not <stream> in {NS_STREAMS}")
        if root.nsmap.get(None) != self._content_ns:
            raise StreamError("invalid-namespace",
                              f"default namespace is not {self._content_ns}")
        events.append(StreamOpened(dict(root.attrib)))
        self._phase = _OPEN
        if self._root_tag[-2] == _SLASH:        # <stream:stream .../>
            self._phase = _CLOSED
            events.append(StreamClosed())

    def _new_lxml(self) -> None:
        """(Re)start lxml on the stream's start tag.  Restarting between stanzas
        empties lxml's error log, which otherwise grows with every warning
        (e.g. the relative namespace 'vcard-temp') for the stream's lifetime."""
        self._lxml = etree.XMLPullParser(
            events=("start",), tag=_STREAM_TAG, encoding="utf-8",
            resolve_entities=False, no_network=True, load_dtd=False, collect_ids=False)
        self._events = self._lxml.read_events()
        self._root = None
        self._lxml_feed(self._root_tag)
        for _, element in self._events:
            self._root = element
            break

    def _lxml_feed(self, chunk: bytes) -> None:
        try:
            self._lxml.feed(chunk)
        except etree.LxmlError as exc:
            raise StreamError("not-well-formed", _lxml_message(exc)) from None
        if self._lxml.feed_error_log:
            self._check_log()

    def _check_log(self) -> bool:
        """Namespace errors (unbound prefix, ...) do not stop libxml2's push
        parser; they only show up in its log.  URI warnings are tolerated:
        returns True when the log holds only those."""
        for entry in self._lxml.feed_error_log:
            if entry.level >= etree.ErrorLevels.ERROR and not entry.type_name.startswith("WAR_"):
                raise StreamError("not-well-formed", entry.message)
        return True

    # ------------------------------------------------------------ stream

    def _scan_stream(self, buf, events) -> bool:
        """Inside the stream root.  Returns True when buf is fully used."""
        n = len(buf)
        pos = self._pos
        stack = self._stack
        max_size = self._max_size
        fast = self._fast
        while True:
            if not stack:
                if pos >= n:
                    return True
                if buf[pos] != _LT:              # whitespace between stanzas: dropped
                    pos = _WS_RUN.match(buf, pos).end()
                    if pos == n:
                        return True
                    if buf[pos] != _LT:
                        raise self._stray(buf[pos])
                if self._resume <= pos:          # a new stanza, not one in progress
                    if fast is not None:
                        m = fast.match(buf, pos)
                        if m is not None:
                            end = m.end()
                            if end - pos <= max_size:
                                self._deliver(buf, pos, end, events)
                                pos = end
                                continue
                    self._resume = pos
                    self._quote = 0
                self._start = pos
            start = self._start
            limit = start + max_size
            bound = n if n < limit else limit
            resume = self._resume
            self._pos = pos
            if pos + 1 >= bound:
                return self._incomplete(n, limit, "stanza")
            if buf[pos] != _LT:                  # character data in a stanza
                i = buf.find(b"<", resume, bound)
                if i < 0:
                    self._resume = bound
                    return self._incomplete(n, limit, "stanza")
                if buf.find(b"&", pos, i) >= 0:
                    _check_refs(buf, pos, i)
                pos = self._resume = i
                continue
            kind = buf[pos + 1]
            if kind == _SLASH:                    # end tag
                end = buf.find(b">", max(resume, pos + 2), bound)
                if end < 0:
                    self._resume = bound
                    return self._incomplete(n, limit, "stanza")
                if not stack:                     # </stream:stream>, checked by lxml
                    self._close_stream(buf, start, end + 1, events)
                    return True
                name = bytes(buf[pos + 2:end]).rstrip(b" \t\r\n")
                if name != stack.pop():
                    raise StreamError("not-well-formed",
                                      f"end tag </{name.decode('utf-8', 'replace')}> does not match")
                pos = self._resume = end + 1
                if not stack:
                    self._deliver(buf, start, pos, events)
            elif kind == _BANG:
                body = pos + len(_CDATA_OPEN)
                have = min(bound, body)
                if buf[pos:have] != _CDATA_OPEN[:have - pos]:
                    raise StreamError("restricted-xml", "comments and DTDs are not allowed")
                if have < body:
                    return self._incomplete(n, limit, "stanza")
                if not stack:
                    raise StreamError("bad-format", "character data at stream level")
                end = buf.find(b"]]>", max(resume, body), bound)
                if end < 0:
                    self._resume = max(body, bound - 2)
                    return self._incomplete(n, limit, "stanza")
                pos = self._resume = end + 3
            elif kind == _QMARK:
                raise StreamError("restricted-xml", "processing instructions are not allowed")
            else:                                 # start tag
                end = self._scan_tag(buf, bound)
                if end < 0:
                    return self._incomplete(n, limit, "stanza")
                if len(stack) >= self._max_depth:
                    raise StreamError("policy-violation",
                                      f"elements nested deeper than {self._max_depth}")
                if buf.find(b"&", pos, end) >= 0:
                    _check_refs(buf, pos, end)
                self._quote = 0
                if buf[end - 1] != _SLASH:
                    stack.append(bytes(_NAME.match(buf, pos + 1, end).group()))
                    pos = self._resume = end + 1
                else:
                    pos = self._resume = end + 1
                    if not stack:
                        self._deliver(buf, start, pos, events)

    def _scan_tag(self, buf, bound: int) -> int:
        """Find the '>' closing the start tag at self._pos, resuming where the
        last call stopped.  Returns its index, or -1 if bound comes first."""
        p = self._resume
        if p <= self._pos:
            p = self._pos + 1
        quote = self._quote
        while True:
            if quote:
                p = _VALUE_REST[quote].match(buf, p, bound).end()
                if p == bound:
                    self._resume, self._quote = p, quote
                    return -1
                if buf[p] == _LT:
                    break
                p += 1
                quote = 0
            p = _TAG_BODY.match(buf, p, bound).end()
            if p == bound:
                self._resume, self._quote = p, 0
                return -1
            c = buf[p]
            if c == _GT:
                return p
            if c == _LT:
                break
            quote = c
            p += 1
        raise StreamError("not-well-formed", "'<' inside a tag")

    def _incomplete(self, n: int, limit: int, what: str) -> bool:
        """The current token needs more bytes: wait, unless they would push
        the unit past the size limit."""
        if n > limit:
            raise StreamError("policy-violation", f"{what} exceeds {self._max_size} bytes")
        return False

    @staticmethod
    def _stray(byte: int) -> StreamError:
        """Non-whitespace at stream level: a byte that can never occur in UTF-8
        XML is not well-formed, any real character is bad format."""
        if byte < 0x20 or 0x80 <= byte < 0xC2 or byte > 0xF4:
            return StreamError("not-well-formed", f"invalid byte 0x{byte:02x}")
        return StreamError("bad-format", "character data at stream level")

    def _deliver(self, buf, start: int, end: int, events) -> None:
        """Hand one complete stanza to lxml and move it out of the stream document."""
        lxml = self._lxml
        try:
            lxml.feed(buf[start:end] if type(buf) is bytes else bytes(buf[start:end]))
        except etree.LxmlError as exc:
            raise StreamError("not-well-formed", _lxml_message(exc)) from None
        root = self._root
        events.append(StanzaReceived(root[0].__copy__()))
        del root[0]
        for _ in self._events:      # a <stream:stream> nested in the stanza
            pass
        if lxml.feed_error_log and self._check_log():
            self._new_lxml()

    def _close_stream(self, buf, start: int, end: int, events) -> None:
        self._lxml_feed(bytes(buf[start:end]))
        self._phase = _CLOSED
        events.append(StreamClosed())
        self._lxml = self._events = self._root = None


# ---------------------------------------------------------------- serializers

_INVALID_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ATTR_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;",
                               '"': "&quot;", "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"})
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})


def _escape(value: str, table: dict[int, str]) -> str:
    if _INVALID_XML_CHAR.search(value):
        raise ValueError(f"{value!r} contains a character XML cannot carry")
    return value.translate(table)


def stream_header(*, from_: str, stream_id: str, to: str | None = None, version: str = "1.0",
                  lang: str = "en", content_ns: str = NS_CLIENT) -> bytes:
    """Bytes of the XML declaration + <stream:stream ...> opening tag the server sends (values escaped)."""
    attrs = [("xmlns", content_ns), ("xmlns:stream", NS_STREAMS),
             ("from", from_), ("id", stream_id)]
    if to is not None:
        attrs.append(("to", to))
    attrs += [("version", version), ("xml:lang", lang)]
    body = " ".join(f"{name}='{_escape(value, _ATTR_ESCAPES)}'" for name, value in attrs)
    return f"<?xml version='1.0'?><stream:stream {body}>".encode()


def stream_error(condition: str, text: str | None = None, app_error: bytes = b"") -> bytes:
    """Bytes of <stream:error><condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>[<text ...>]</stream:error>
    (the stream: prefix must be usable inside an already-open stream whose root declares xmlns:stream).
    `app_error` is an application-specific condition element (RFC 6120 §4.9.4), already serialised."""
    if condition not in STREAM_ERROR_CONDITIONS:
        raise ValueError(f"{condition!r} is not an RFC 6120 stream error condition")
    out = f"<stream:error><{condition} xmlns='{NS_STREAM_ERRORS}'/>"
    if text:
        out += f"<text xmlns='{NS_STREAM_ERRORS}'>{_escape(text, _TEXT_ESCAPES)}</text>"
    return out.encode() + app_error + b"</stream:error>"
