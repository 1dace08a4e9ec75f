"""Tests for xmppd.xmlstream: the sans-IO RFC 6120 stream parser and serializers."""

import random
import tracemalloc
import zlib

import pytest
from lxml import etree

from xmppd.xmlstream import (
    NS_CLIENT, NS_STREAM_ERRORS, NS_STREAMS, STREAM_CLOSE, StanzaReceived, StreamClosed,
    StreamError, StreamOpened, StreamParser, stream_error, stream_header,
)

HEADER = (b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
          b" to='example.com' version='1.0' xml:lang='en'>")
DECL = b"<?xml version='1.0'?>"
MESSAGE = (b"<message to='juliet@example.com/balcony' from='romeo@example.net/orchard' type='chat'"
           b" id='ktx72v49'><body>Art thou not Romeo, and a Montague?</body></message>")
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


# ------------------------------------------------------------------ helpers

def run(data: bytes, cuts=(), **kwargs):
    """Feed data split at `cuts`; return (events, error condition or None).
    Events completed in the failing call (StreamError.events) are included."""
    parser = StreamParser(**kwargs)
    events, condition, prev = [], None, 0
    try:
        for cut in [*cuts, len(data)]:
            events += parser.feed(data[prev:cut])
            prev = cut
    except StreamError as exc:
        events += exc.events
        condition = exc.condition
    return events, condition


def summary(events):
    out = []
    for event in events:
        if isinstance(event, StanzaReceived):
            assert event.element.getparent() is None
            out.append(etree.tostring(event.element))
        elif isinstance(event, StreamOpened):
            out.append(("open", tuple(sorted(event.attrs.items()))))
        else:
            assert isinstance(event, StreamClosed)
            out.append("close")
    return out


def splits(data: bytes, seed: int):
    """All-at-once, byte-at-a-time and a few random split patterns."""
    rng = random.Random(seed)
    yield []
    yield range(1, len(data))
    for _ in range(6):
        k = rng.randint(1, min(20, max(1, len(data) - 1)))
        yield sorted(rng.sample(range(1, len(data)), k)) if len(data) > 1 else []


def stanzas(events):
    return [e.element for e in events if isinstance(e, StanzaReceived)]


def error_of(data: bytes, **kwargs):
    return run(data, **kwargs)[1]


# ------------------------------------------------------------------ corpus
# (id, parser kwargs, stream bytes, expected error condition or None)

GOOD_BODY = (
    b"<message to='a@b' type='chat' id='1'><body>h\xc3\xa9llo \xe4\xb8\xad\xe6\x96\x87"
    b" \xf0\x9f\x98\x80 &amp; &lt;&gt;&quot;&apos; &#65;&#x1F600;</body>"
    b"<x xmlns='urn:x' a=\"it's &gt; &#x41;\" b='say \"hi\"' c='a/b>c'/></message>\n  "
    b"<presence><show>away</show><status>\xc3\xa9t\xc3\xa9</status></presence>\t\r\n"
    b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>"
    b"<message><body><![CDATA[<b>&nbsp; ]] > \xc3\xa9</b>]]></body></message>"
)
DEEP_OK = b"<a>" * 10 + b"x" + b"</a>" * 10
PADDED = b"<message>" + b"x" * 200 + b"<!-- -->"

CORPUS = [
    ("plain", {}, HEADER + GOOD_BODY + STREAM_CLOSE, None),
    ("declaration", {}, DECL + HEADER + GOOD_BODY + STREAM_CLOSE, None),
    ("declaration-full", {},
     b'<?xml version="1.0" encoding="utf-8" standalone="yes" ?>\n' + HEADER + MESSAGE, None),
    ("whitespace-before-header", {}, b"\n  " + HEADER + MESSAGE, None),
    ("keepalives", {}, HEADER + b" " + MESSAGE + b"\n \n" + MESSAGE + b" \t ", None),
    ("unclosed-stream", {}, HEADER + MESSAGE + b"<message><body>par", None),
    ("after-close-ignored", {}, HEADER + MESSAGE + STREAM_CLOSE + b"garbage<!-- &x; -->", None),
    ("deep-within-limit", {}, HEADER + DEEP_OK, None),
    ("client-stream-error", {},
     HEADER + b"<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
              b"</stream:error>" + STREAM_CLOSE, None),
    ("local-prefixes", {},
     HEADER + b"<iq><p:x xmlns:p='urn:p'><p:y p:a='1'/></p:x><stream:features/></iq>", None),
    ("nested-stream-element", {},
     HEADER + b"<iq><stream:stream><x/></stream:stream></iq>" + MESSAGE + STREAM_CLOSE, None),
    ("vcard-temp-relative-ns", {},
     HEADER + b"<iq><vCard xmlns='vcard-temp'/></iq>" * 3 + MESSAGE, None),
    ("self-closed-root", {},
     b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'/>", None),
    ("exact-size-limit", {"max_stanza_size": len(MESSAGE)}, HEADER + MESSAGE + b"  " + MESSAGE, None),
    ("exact-depth-limit", {"max_depth": 10}, HEADER + DEEP_OK, None),
    ("exact-depth-limit-fast", {"max_depth": 3}, HEADER + b"<a><b><c/>t</b></a><a><b>x</b></a>", None),
    # restricted XML (RFC 6120 §11.1)
    ("comment-in-stanza", {}, HEADER + b"<message><!-- hi --></message>", "restricted-xml"),
    ("comment-between", {}, HEADER + MESSAGE + b"<!-- hi -->", "restricted-xml"),
    ("comment-before-header", {}, b"<!-- hi -->" + HEADER, "restricted-xml"),
    ("pi-in-stanza", {}, HEADER + b"<message><?foo bar?></message>", "restricted-xml"),
    ("pi-between", {}, HEADER + b"<?foo?>", "restricted-xml"),
    ("pi-after-decl", {}, DECL + b"<?xml-stylesheet href='a'?>" + HEADER, "restricted-xml"),
    ("pi-at-start", {}, b"<?xml-stylesheet href='a'?>" + HEADER, "restricted-xml"),
    ("decl-not-at-start", {}, b" " + DECL + HEADER, "restricted-xml"),
    ("doctype", {}, b"<!DOCTYPE stream:stream>" + HEADER, "restricted-xml"),
    ("doctype-internal-subset", {},
     DECL + b"<!DOCTYPE s [<!ENTITY x 'boom'>]>" + HEADER + b"<a>&x;</a>", "restricted-xml"),
    ("doctype-external", {}, b"<!DOCTYPE s SYSTEM 'http://127.0.0.1/x.dtd'>" + HEADER, "restricted-xml"),
    ("markup-decl-in-stanza", {}, HEADER + b"<a><!ENTITY x 'y'></a>", "restricted-xml"),
    ("entity-in-text", {}, HEADER + b"<message><body>&nbsp;</body></message>", "restricted-xml"),
    ("entity-in-attr", {}, HEADER + b"<message to='&x;'/>", "restricted-xml"),
    ("entity-in-header", {}, HEADER[:-1] + b" from='&x;'>", "restricted-xml"),
    ("entity-after-stanzas", {}, HEADER + MESSAGE + b"<a>ok &amp; &bogus;</a>", "restricted-xml"),
    # not well-formed
    ("mismatched-tags", {}, HEADER + b"<message><body></message></body>", "not-well-formed"),
    ("mismatch-before-stanza-ends", {}, HEADER + b"<message><body></message>", "not-well-formed"),
    ("mismatch-prefix-differs", {},
     HEADER + b"<a xmlns:p='urn:p' xmlns:q='urn:p'><p:b></q:b></a>", "not-well-formed"),
    ("end-tag-trailing-space-ok", {}, HEADER + b"<a><b>x</b \t></a >" + MESSAGE, None),
    ("mismatched-close", {}, HEADER + MESSAGE + b"</stream:foo>", "not-well-formed"),
    ("stray-end-tag", {}, HEADER + b"<a/></b>", "not-well-formed"),
    ("bad-attr-syntax", {}, HEADER + b"<message to=a/>", "not-well-formed"),
    ("lt-in-attr", {}, HEADER + b"<message to='<'/>", "not-well-formed"),
    ("duplicate-attr", {}, HEADER + b"<message to='a' to='b'/>", "not-well-formed"),
    ("unbound-prefix", {}, HEADER + b"<message><foo:bar/></message>", "not-well-formed"),
    ("unbound-attr-prefix", {}, HEADER + b"<message foo:x='1'/>", "not-well-formed"),
    ("unbound-prefix-header", {},
     b"<stream:stream xmlns='jabber:client' to='example.com'>", "not-well-formed"),
    ("bare-ampersand", {}, HEADER + b"<a>fish & chips</a>", "not-well-formed"),
    ("ampersand-no-semicolon", {}, HEADER + b"<a>&amp</a>", "not-well-formed"),
    ("bad-char-ref", {}, HEADER + b"<a>&#0;</a>", "not-well-formed"),
    ("control-char", {}, HEADER + b"<a>\x01</a>", "not-well-formed"),
    ("control-char-stream-level", {}, HEADER + b"\x00", "not-well-formed"),
    ("cdata-end-in-text", {}, HEADER + b"<a>]]></a>", "not-well-formed"),
    ("invalid-utf8", {}, HEADER + b"<a>\xff</a>", "not-well-formed"),
    ("truncated-utf8", {}, HEADER + b"<a>\xc3(</a>", "not-well-formed"),
    ("overlong-utf8", {}, HEADER + b"<a>\xc0\xaf</a>", "not-well-formed"),
    ("surrogate-utf8", {}, HEADER + b"<a>\xed\xa0\x80</a>", "not-well-formed"),
    ("invalid-utf8-attr", {}, HEADER + b"<a b='\xfe'/>", "not-well-formed"),
    ("invalid-utf8-header", {}, HEADER[:-1] + b" from='\xff'>", "not-well-formed"),
    ("content-before-header", {}, b"hello" + HEADER, "not-well-formed"),
    ("utf8-bom", {}, b"\xef\xbb\xbf" + HEADER, "not-well-formed"),
    ("end-tag-first", {}, b"</stream:stream>", "not-well-formed"),
    ("malformed-declaration", {}, b"<?xml encoding='UTF-8'?>" + HEADER, "not-well-formed"),
    ("declaration-bad-version-chars", {}, b"<?xml version='1 0'?>" + HEADER, "not-well-formed"),
    ("declaration-other-version", {}, b"<?xml version='0.9'?>" + HEADER, None),
    ("error-after-good-stanzas", {}, HEADER + MESSAGE + MESSAGE + b"<a></b>", "not-well-formed"),
    # encodings
    ("latin1-declared", {},
     b"<?xml version='1.0' encoding='ISO-8859-1'?>" + HEADER, "unsupported-encoding"),
    ("utf16-declared", {}, b'<?xml version="1.0" encoding="UTF-16"?>' + HEADER, "unsupported-encoding"),
    ("utf16-le-bom", {}, "<stream:stream>".encode("utf-16"), "unsupported-encoding"),
    ("utf16-be", {}, "<stream:stream>".encode("utf-16-be"), "unsupported-encoding"),
    ("utf16-le", {}, "<stream:stream>".encode("utf-16-le"), "unsupported-encoding"),
    # namespaces of the stream header
    ("wrong-root-name", {},
     b"<stream:foo xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
     "invalid-namespace"),
    ("wrong-stream-ns", {},
     b"<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong'>", "invalid-namespace"),
    ("unprefixed-root", {}, b"<stream xmlns='http://etherx.jabber.org/streams'>", "invalid-namespace"),
    ("wrong-content-ns", {},
     b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>",
     "invalid-namespace"),
    ("missing-content-ns", {},
     b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>", "invalid-namespace"),
    ("server-ns-on-client-parser", {"content_ns": "jabber:server"}, HEADER, "invalid-namespace"),
    # stream level character data
    ("text-at-stream-level", {}, HEADER + MESSAGE + b" hello ", "bad-format"),
    ("reference-at-stream-level", {}, HEADER + b"&amp;", "bad-format"),
    ("cdata-at-stream-level", {}, HEADER + b"<![CDATA[ ]]>", "bad-format"),
    ("utf8-at-stream-level", {}, HEADER + b"\xc3\xa9", "bad-format"),
    # limits
    ("stanza-one-byte-too-big", {"max_stanza_size": len(MESSAGE) - 1}, HEADER + MESSAGE,
     "policy-violation"),
    ("too-big-then-broken", {"max_stanza_size": 150}, HEADER + PADDED[:180] + b"<!-- </x>",
     "policy-violation"),
    # '<!-' (3 bytes from offset 209) tells a comment from CDATA
    ("restricted-straddling-limit", {"max_stanza_size": 211}, HEADER + PADDED, "policy-violation"),
    ("restricted-inside-limit", {"max_stanza_size": 212}, HEADER + PADDED, "restricted-xml"),
    ("huge-start-tag", {"max_stanza_size": 150}, HEADER + b"<message to='" + b"a" * 300,
     "policy-violation"),
    ("huge-header", {"max_stanza_size": 150}, HEADER[:-1] + b" x='" + b"a" * 200,
     "policy-violation"),
    ("header-within-limit", {"max_stanza_size": len(HEADER)}, HEADER + b"<a/>", None),
    ("header-over-limit", {"max_stanza_size": len(HEADER) - 1}, HEADER + b"<a/>", "policy-violation"),
    ("huge-declaration", {"max_stanza_size": 50}, b"<?xml version='1.0'" + b" " * 100 + b"?>",
     "policy-violation"),
    ("too-deep", {"max_depth": 9}, HEADER + DEEP_OK, "policy-violation"),
    ("too-deep-fast", {"max_depth": 2}, HEADER + b"<a><b><c/></b></a>", "policy-violation"),
    ("too-deep-default", {}, HEADER + b"<a>" * 65, "policy-violation"),
]


@pytest.mark.parametrize("kwargs,data,expected", [c[1:] for c in CORPUS],
                         ids=[c[0] for c in CORPUS])
def test_corpus_condition(kwargs, data, expected):
    assert error_of(data, **kwargs) == expected


@pytest.mark.parametrize("kwargs,data,expected", [c[1:] for c in CORPUS],
                         ids=[c[0] for c in CORPUS])
def test_chunking_invariance(kwargs, data, expected):
    reference = run(data, **kwargs)
    reference = (summary(reference[0]), reference[1])
    for seed, cuts in enumerate(splits(data, zlib.crc32(data))):
        events, condition = run(data, cuts, **kwargs)
        assert (summary(events), condition) == reference, f"split pattern {seed}"


MUTATIONS = [b"<", b">", b"&", b"'", b'"', b"<!--", b"<?x?>", b"]]>", b"&foo;", b"/", b"\xc3",
             b"\xff", b"<![CDATA[", b" ", b"</a>", b"<a>", b"xmlns:q='u'", b"q:", b"&#", b"\x00"]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(out))
        op = rng.random()
        if op < 0.3:
            out[i] = rng.randrange(256)
        elif op < 0.7:
            out[i:i] = rng.choice(MUTATIONS)
        else:
            del out[i:i + rng.randint(1, 5)]
    return bytes(out)


@pytest.mark.parametrize("seed", range(8))
def test_fuzzed_streams_are_chunking_invariant(seed):
    """Random corruptions of good streams: the same events and the same error
    whatever the split, and never an exception other than StreamError."""
    rng = random.Random(seed)
    bases = [HEADER + GOOD_BODY + STREAM_CLOSE, DECL + HEADER + DEEP_OK + MESSAGE]
    limits = [{}, {"max_stanza_size": 170}, {"max_depth": 3}, {"max_stanza_size": 200, "max_depth": 9}]
    for _ in range(60):
        data = _mutate(rng, rng.choice(bases))
        kwargs = rng.choice(limits)
        events, condition = run(data, **kwargs)
        reference = (summary(events), condition)
        for cuts in [range(1, len(data))] + [
                sorted(rng.sample(range(1, len(data)), rng.randint(1, 12))) for _ in range(3)]:
            events, condition = run(data, cuts, **kwargs)
            assert (summary(events), condition) == reference, data


# ------------------------------------------------------------------ events

def test_events_in_order_with_detached_stanzas():
    events, condition = run(DECL + HEADER + MESSAGE + b"<presence/>" + STREAM_CLOSE)
    assert condition is None
    assert [type(e) for e in events] == [StreamOpened, StanzaReceived, StanzaReceived, StreamClosed]
    assert events[0].attrs == {"to": "example.com", "version": "1.0", XML_LANG: "en"}
    message, presence = stanzas(events)
    assert message.tag == f"{{{NS_CLIENT}}}message"
    assert message.get("to") == "juliet@example.com/balcony"
    assert message.findtext(f"{{{NS_CLIENT}}}body") == "Art thou not Romeo, and a Montague?"
    assert message.getparent() is None and presence.getparent() is None
    assert message.getroottree().getroot() is message     # its own document
    assert message.nsmap == {None: NS_CLIENT}
    assert etree.tostring(presence) == b'<presence xmlns="jabber:client"/>'


def test_stanza_keeps_foreign_namespaces_and_prefixes():
    data = HEADER + b"<iq><q:x xmlns:q='urn:q'><q:y q:a='1'>t</q:y></q:x><stream:error/></iq>"
    (iq,) = stanzas(run(data)[0])
    y = iq.find("{urn:q}x/{urn:q}y")
    assert y.get("{urn:q}a") == "1" and y.text == "t"
    assert iq[1].tag == f"{{{NS_STREAMS}}}error"
    assert etree.fromstring(etree.tostring(iq)).find("{urn:q}x/{urn:q}y").text == "t"


def test_text_cdata_and_references_become_text():
    data = HEADER + b"<m><b>&lt;&amp;&#65;&#x42;<![CDATA[<&x;]]>\xc3\xa9</b></m>"
    (m,) = stanzas(run(data)[0])
    assert m[0].text == "<&AB<&x;\u00e9"


def test_multibyte_characters_split_everywhere():
    text = "h\u00e9llo \u4e2d\u6587 \U0001F600".encode()
    data = HEADER + b"<message><body>" + text + b"</body></message>"
    for cut in range(len(HEADER), len(data)):
        parser = StreamParser()
        events = parser.feed(data[:cut]) + parser.feed(data[cut:])
        assert stanzas(events)[0][0].text == text.decode()


def test_keepalives_produce_no_events():
    parser = StreamParser()
    parser.feed(HEADER)
    for keepalive in (b" ", b"\n", b"\r\n", b"\t", b" " * 1000):
        assert parser.feed(keepalive) == []
    assert len(stanzas(parser.feed(MESSAGE))) == 1


def test_whitespace_does_not_count_toward_next_stanza():
    parser = StreamParser(max_stanza_size=len(MESSAGE))
    parser.feed(HEADER)
    parser.feed(b" " * 10 * len(MESSAGE))
    assert len(stanzas(parser.feed(b"\n" * 500 + MESSAGE))) == 1


def test_whitespace_flood_uses_no_memory():
    parser = StreamParser()
    parser.feed(HEADER)
    chunk = b" \n\t\r" * 16384                    # 64 KiB
    tracemalloc.start()
    try:
        for _ in range(800):                      # 50 MiB
            assert parser.feed(chunk) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    assert len(stanzas(parser.feed(MESSAGE))) == 1


def test_events_after_close_are_ignored():
    parser = StreamParser()
    assert [type(e) for e in parser.feed(HEADER + STREAM_CLOSE)] == [StreamOpened, StreamClosed]
    assert parser.feed(b"<!-- anything -->&x;\xff") == []
    assert parser.feed(MESSAGE) == []


def test_parser_is_dead_after_error():
    parser = StreamParser()
    parser.feed(HEADER)
    with pytest.raises(StreamError) as first:
        parser.feed(b"<a><!-- x --></a>")
    assert first.value.condition == "restricted-xml" and first.value.text
    for data in (MESSAGE, b" ", b"x"):
        with pytest.raises(StreamError) as again:
            parser.feed(data)
        assert (again.value.condition, again.value.text) == (first.value.condition, first.value.text)


def test_mismatched_end_tag_is_reported_without_waiting_for_more():
    parser = StreamParser()
    parser.feed(HEADER + b"<message><body>")
    with pytest.raises(StreamError) as exc:
        parser.feed(b"hi</message>")
    assert exc.value.condition == "not-well-formed"


def test_error_carries_stanzas_completed_before_it():
    parser = StreamParser()
    parser.feed(HEADER)
    with pytest.raises(StreamError) as exc:
        parser.feed(MESSAGE + b" <presence/> <a>&bogus;</a>")
    assert exc.value.condition == "restricted-xml"
    assert [e.element.tag for e in exc.value.events] == [
        f"{{{NS_CLIENT}}}message", f"{{{NS_CLIENT}}}presence"]


def test_stream_error_str_and_defaults():
    err = StreamError("policy-violation")
    assert err.condition == "policy-violation" and err.text == "" and err.events == []
    assert str(StreamError("bad-format", "why")) == "bad-format: why"


def test_never_leaks_lxml_errors():
    deeper_than_libxml2 = b"<b>" * 300 + b"</b>" * 300
    for data in (HEADER + deeper_than_libxml2, HEADER + b"<a b='1' b='2'/>", HEADER + b"<\xff/>"):
        with pytest.raises(StreamError) as exc:
            StreamParser(max_depth=1000).feed(data)
        assert exc.value.condition == "not-well-formed"


def test_content_ns_server():
    header = HEADER.replace(b"jabber:client", b"jabber:server")
    events, condition = run(header + b"<message/>", content_ns="jabber:server")
    assert condition is None
    assert stanzas(events)[0].tag == "{jabber:server}message"


# ------------------------------------------------------------------ limits and memory

@pytest.mark.parametrize("prefix", [b"<message><body>", b"<message to='", b"<message",
                                    b"<message><![CDATA[", b"<a><b><c>"])
def test_ten_megabytes_never_closed_is_cut_off_early(prefix):
    limit = 262144
    parser = StreamParser(max_stanza_size=limit)
    parser.feed(HEADER)
    filler = b"A" * 65536
    sent = len(prefix)
    tracemalloc.start()
    try:
        with pytest.raises(StreamError) as exc:
            parser.feed(prefix)
            while sent < 10 * 1024 * 1024:
                parser.feed(filler)
                sent += len(filler)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exc.value.condition == "policy-violation"
    assert sent <= limit + len(filler)
    assert peak < 3 * limit


def test_oversized_stanza_fed_byte_by_byte_is_cut_at_the_limit():
    parser = StreamParser(max_stanza_size=65536)
    parser.feed(HEADER)
    data = b"<message to='" + b"x" * 70000
    with pytest.raises(StreamError) as exc:
        for i in range(len(data)):
            parser.feed(data[i:i + 1])
    assert exc.value.condition == "policy-violation"
    assert i == 65536


@pytest.mark.parametrize("split", [False, True])
def test_size_limit_is_exact(split):
    size = len(MESSAGE)
    for limit, ok in ((size, True), (size - 1, False)):
        cuts = [len(HEADER) + size // 2] if split else []
        condition = run(HEADER + MESSAGE, cuts, max_stanza_size=limit)[1]
        assert condition == (None if ok else "policy-violation")


@pytest.mark.parametrize("depth", [1, 2, 8, 9, 30])
def test_depth_limit_is_exact(depth):
    data = HEADER + b"<a>" * depth + b"</a>" * depth
    empty = HEADER + b"<a>" * (depth - 1) + b"<a/>" + b"</a>" * (depth - 1)
    for stream in (data, empty):
        assert run(stream, max_depth=depth)[1] is None
        assert run(stream, max_depth=depth - 1)[1] == "policy-violation"


def test_stream_document_does_not_grow():
    parser = StreamParser()
    parser.feed(HEADER)
    for _ in range(2000):
        parser.feed(MESSAGE + b" ")
        parser.feed(b"<iq><vCard xmlns='vcard-temp'/></iq>\n")
    root = parser._root
    assert len(root) == 0 and root.text is None
    assert len(parser._lxml.feed_error_log) <= 1      # warnings do not pile up
    assert len(parser._buf) == 0


# ------------------------------------------------------------------ serializers

def test_stream_header_parses_back():
    header = stream_header(from_="example.com", stream_id="abc123", to="juliet@example.com",
                           lang="fr")
    assert header.startswith(b"<?xml version='1.0'?><stream:stream ")
    (opened,) = StreamParser().feed(header)
    assert opened.attrs == {"from": "example.com", "id": "abc123", "to": "juliet@example.com",
                            "version": "1.0", XML_LANG: "fr"}


def test_stream_header_escapes_values():
    nasty = "a'b\"c<d>&e\tf\ng"
    header = stream_header(from_=nasty, stream_id="<id>", to=None)
    (opened,) = StreamParser().feed(header)
    assert opened.attrs["from"] == nasty and opened.attrs["id"] == "<id>"
    assert "to" not in opened.attrs


def test_stream_header_server_namespace():
    header = stream_header(from_="a.example", stream_id="1", content_ns="jabber:server")
    assert StreamParser(content_ns="jabber:server").feed(header)[0].attrs["from"] == "a.example"
    with pytest.raises(StreamError) as exc:
        StreamParser().feed(header)
    assert exc.value.condition == "invalid-namespace"


def test_stream_header_rejects_unencodable_values():
    with pytest.raises(ValueError):
        stream_header(from_="a\x00b", stream_id="1")


@pytest.mark.parametrize("text", [None, "", "too <big> & \"bad\" 'x' \u00e9"])
def test_stream_error_parses_back_inside_a_stream(text):
    data = stream_header(from_="example.com", stream_id="1") + stream_error("policy-violation", text)
    events = StreamParser().feed(data + STREAM_CLOSE)
    assert [type(e) for e in events] == [StreamOpened, StanzaReceived, StreamClosed]
    error = events[1].element
    assert error.tag == f"{{{NS_STREAMS}}}error"
    assert error[0].tag == f"{{{NS_STREAM_ERRORS}}}policy-violation"
    if text:
        assert len(error) == 2 and error[1].tag == f"{{{NS_STREAM_ERRORS}}}text"
        assert error[1].text == text
    else:
        assert len(error) == 1


def test_stream_error_uses_the_stream_prefix():
    assert stream_error("not-well-formed") == (
        b"<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        b"</stream:error>")


def test_stream_error_rejects_unknown_condition():
    with pytest.raises(ValueError):
        stream_error("not-a-condition")
    with pytest.raises(ValueError):
        stream_error("bad-format/><evil")


def test_stream_close_constant():
    assert STREAM_CLOSE == b"</stream:stream>"
