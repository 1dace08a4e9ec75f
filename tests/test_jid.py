import copy
import pickle

import pytest

from xmppd.jid import (
    JID,
    InvalidJID,
    normalize_domain,
    normalize_localpart,
    normalize_resource,
)

# RFC 7622 §3.5 "Examples", the valid ones: (input, local, domain, resource) after preparation.
RFC7622_VALID = [
    ("juliet@example.com", "juliet", "example.com", None),
    ("juliet@example.com/foo", "juliet", "example.com", "foo"),
    ("juliet@example.com/foo bar", "juliet", "example.com", "foo bar"),
    ("juliet@example.com/foo@bar", "juliet", "example.com", "foo@bar"),
    ("foo\\20bar@example.com", "foo\\20bar", "example.com", None),
    ("fussball@example.com", "fussball", "example.com", None),
    ("fu\u00dfball@example.com", "fu\u00dfball", "example.com", None),
    ("\u03c0@example.com", "\u03c0", "example.com", None),
    ("\u03a3@example.com/foo", "\u03c3", "example.com", "foo"),
    ("\u03c3@example.com/foo", "\u03c3", "example.com", "foo"),
    ("\u03c2@example.com/foo", "\u03c2", "example.com", "foo"),
    ("king@example.com/\u265a", "king", "example.com", "\u265a"),
    ("example.com", None, "example.com", None),
    ("example.com/foobar", None, "example.com", "foobar"),
    ("a.example.com/b@example.net", None, "a.example.com", "b@example.net"),
]

# RFC 7622 §3.5, the invalid ones, plus the empty-part cases of §3.1.
RFC7622_INVALID = [
    '"juliet"@example.com',
    "foo bar@example.com",
    "juliet@example.com/",
    "@example.com/",
    "henri\u2163@example.com",
    "\u265a@example.com",
    "juliet@",
    "/foobar",
    "@example.com",
    "a@example.com/",
    "",
    "@",
    "/",
]


@pytest.mark.parametrize("text, local, domain, resource", RFC7622_VALID)
def test_rfc7622_valid_examples(text, local, domain, resource):
    jid = JID.parse(text)
    assert (jid.local, jid.domain, jid.resource) == (local, domain, resource)


@pytest.mark.parametrize("text", RFC7622_INVALID)
def test_rfc7622_invalid_examples(text):
    with pytest.raises(InvalidJID):
        JID.parse(text)


def test_invalid_jid_is_a_value_error_with_reason():
    with pytest.raises(ValueError, match="localpart"):
        JID.parse("foo bar@example.com")


@pytest.mark.parametrize("char", list("\"&'/:<>@"))
def test_localpart_forbidden_characters(char):
    # RFC 7622 §3.3.1; '/' and '@' would split the JID differently, so test the part alone.
    with pytest.raises(InvalidJID):
        normalize_localpart(f"a{char}b")


def test_localpart_is_case_mapped_and_width_mapped():
    assert normalize_localpart("Juliet") == "juliet"
    assert normalize_localpart("\uff2a\uff35\uff2c\uff29\uff25\uff34") == "juliet"  # full width


def test_resource_keeps_case_and_maps_spaces():
    assert normalize_resource("Foo") == "Foo"
    assert normalize_resource("a\u00a0b") == "a b"  # non-ASCII space -> ASCII space
    with pytest.raises(InvalidJID):
        normalize_resource("a\x00b")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("example\u3002com", "example.com"),  # ideographic full stop is a label separator
        ("M\u00dcNCHEN.de", "m\u00fcnchen.de"),
        ("xn--mnchen-3ya.de", "m\u00fcnchen.de"),  # A-labels become U-labels
        ("localhost", "localhost"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "[::1]"),
        ("[2001:DB8:0:0::1]", "[2001:db8::1]"),
    ],
)
def test_domain_preparation(text, expected):
    assert normalize_domain(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "example.com..",
        "a..example.com",
        "under_score.example",
        "example.com:5222",
        "::1",
        "[::1",
        "[not-an-address]",
        "[fe80::1%eth0]",
        "256.1.1.1",
        "-leading.example",
        "xn--zz.example",
        "a" * 64 + ".example",
        "exa mple.com",
    ],
)
def test_invalid_domains(text):
    with pytest.raises(InvalidJID):
        normalize_domain(text)


def test_part_length_limits():
    assert JID.parse("a" * 1023 + "@example.com").local == "a" * 1023
    with pytest.raises(InvalidJID):
        JID.parse("a" * 1024 + "@example.com")
    assert JID.parse("example.com/" + "r" * 1023).resource == "r" * 1023
    with pytest.raises(InvalidJID):
        JID.parse("example.com/" + "r" * 1024)
    # octets, not characters: 512 two-octet characters are 1024 octets
    with pytest.raises(InvalidJID):
        JID.parse("example.com/" + "\u00e9" * 512)
    with pytest.raises(InvalidJID):
        JID.parse("a" * 100_000 + "@example.com")


def test_equal_spellings_are_equal_and_hash_equal():
    a = JID.parse("Juliet@Example.COM./balcony")
    b = JID.parse("juliet@example.com/balcony")
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    assert JID.parse("juliet@example.com/Balcony") != b  # resources are case-sensitive
    assert a != "juliet@example.com/balcony"


def test_str_round_trips():
    for text in ["juliet@example.com/foo@bar/baz", "example.com", "example.com/r", "j@example.com"]:
        assert str(JID.parse(text)) == text
        assert JID.parse(str(JID.parse(text))) == JID.parse(text)
    assert repr(JID.parse("j@example.com/r")) == "JID('j@example.com/r')"


def test_bare_and_with_resource():
    full = JID.parse("juliet@example.com/balcony")
    assert not full.is_bare
    assert full.bare == JID("juliet", "example.com")
    assert full.bare.is_bare
    bare = full.bare
    assert bare.bare is bare
    assert bare.with_resource("Orchard") == JID("juliet", "example.com", "Orchard")
    assert full.with_resource(None) == bare
    with pytest.raises(InvalidJID):
        bare.with_resource("")


def test_immutable_and_slotted():
    jid = JID.parse("juliet@example.com")
    with pytest.raises(AttributeError):
        jid.local = "romeo"
    with pytest.raises(AttributeError):
        jid.extra = 1
    assert not hasattr(jid, "__dict__")


def test_copy_and_pickle():
    jid = JID.parse("juliet@example.com/balcony")
    assert pickle.loads(pickle.dumps(jid)) == jid
    assert copy.deepcopy(jid) == jid


def test_parse_is_cached():
    assert JID.parse("romeo@example.net/cached") is JID.parse("romeo@example.net/cached")
