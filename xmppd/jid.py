"""JIDs (RFC 7622): parsing, PRECIS/IDNA preparation, and an immutable value type.

Every address that enters the server goes through JID.parse, so that two spellings of one
address ("Juliet@Example.COM." and "juliet@example.com") compare and hash equal everywhere
after it: routing tables, rosters, storage keys. Parsing is on the hot path of every stanza,
hence the bounded cache.
"""

from __future__ import annotations

import functools
import ipaddress
import re

import idna
from precis_i18n import get_profile

__all__ = ["InvalidJID", "JID", "normalize_localpart", "normalize_domain", "normalize_resource"]

MAX_PART_OCTETS = 1023  # RFC 7622 §3.1: each part is 1..1023 octets once prepared
# Preparation maps at most ~3 octets of input to 1 of output (full-width -> ASCII, Hangul
# jamo -> syllable), so anything longer than this cannot become a valid part; refusing it
# before PRECIS keeps hostile input from costing CPU (DESIGN invariant 4).
_MAX_RAW_OCTETS = 4 * MAX_PART_OCTETS
_CACHE_SIZE = 8192

# RFC 7622 §3.3.1: allowed by the IdentifierClass but forbidden in a localpart.
_LOCALPART_FORBIDDEN = frozenset("\"&'/:<>@")
_DOTTED_QUAD = re.compile(r"[0-9]+(?:\.[0-9]+){3}")

_USERNAME = get_profile("UsernameCaseMapped")
_OPAQUE = get_profile("OpaqueString")


class InvalidJID(ValueError):
    """The text is not a valid JID (or part of one); the message says why."""


def _check_raw(text: str, part: str) -> None:
    if not text:
        raise InvalidJID(f"empty {part}")
    if len(text) > _MAX_RAW_OCTETS or len(text.encode("utf-8", "surrogatepass")) > _MAX_RAW_OCTETS:
        raise InvalidJID(f"{part} too long")


def _check_prepared(text: str, part: str) -> str:
    if len(text.encode("utf-8")) > MAX_PART_OCTETS:
        raise InvalidJID(f"{part} longer than {MAX_PART_OCTETS} octets")
    return text


def normalize_localpart(text: str) -> str:
    """Prepare a localpart (also a username) with PRECIS UsernameCaseMapped (RFC 7622 §3.3)."""
    _check_raw(text, "localpart")
    try:
        prepared = _USERNAME.enforce(text)
    except UnicodeError as exc:
        raise InvalidJID(f"invalid localpart: {exc.reason}") from None
    bad = _LOCALPART_FORBIDDEN.intersection(prepared)
    if bad:
        raise InvalidJID(f"localpart must not contain {''.join(sorted(bad))}")
    return _check_prepared(prepared, "localpart")


def normalize_resource(text: str) -> str:
    """Prepare a resourcepart with PRECIS OpaqueString (RFC 7622 §3.4)."""
    _check_raw(text, "resourcepart")
    try:
        prepared = _OPAQUE.enforce(text)
    except UnicodeError as exc:
        raise InvalidJID(f"invalid resourcepart: {exc.reason}") from None
    return _check_prepared(prepared, "resourcepart")


@functools.lru_cache(maxsize=1024)  # a server sees few distinct domains, and IDNA is slow
def normalize_domain(text: str) -> str:
    """Prepare a domainpart (RFC 7622 §3.2): IP literal, or IDNA2008 name in U-label form.

    UTS-46 mapping (lower case, width, ideographic full stop) comes first, one trailing dot
    is stripped, A-labels are turned into U-labels so that both spellings of an IDN compare
    equal, and labels must be LDH or valid U-labels (no '_', ':', spaces...).
    """
    _check_raw(text, "domainpart")
    if text.startswith("["):
        return _ipv6_literal(text)
    try:
        mapped = idna.uts46_remap(text, std3_rules=True, transitional=False)
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidJID(f"invalid domainpart: {exc}") from None
    if mapped.endswith("."):
        mapped = mapped[:-1]
    if not mapped:
        raise InvalidJID("empty domainpart")
    if _DOTTED_QUAD.fullmatch(mapped):
        try:
            return str(ipaddress.IPv4Address(mapped))
        except ValueError:
            raise InvalidJID(f"invalid IPv4 address {mapped!r}") from None
    if "" in mapped.split("."):
        raise InvalidJID("empty label in domainpart")
    try:
        prepared = idna.decode(idna.encode(mapped))
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidJID(f"invalid domainpart: {exc}") from None
    return _check_prepared(prepared, "domainpart")


def _ipv6_literal(text: str) -> str:
    if not text.endswith("]") or "%" in text:
        raise InvalidJID("invalid IP literal in domainpart")
    try:
        address = ipaddress.IPv6Address(text[1:-1])
    except ValueError:
        raise InvalidJID("invalid IPv6 address in domainpart") from None
    return f"[{address.compressed}]"


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parse(text: str) -> JID:
    # RFC 7622 §3.1 order: resourcepart is everything after the first '/', then the
    # localpart is everything before the first '@' of what is left.
    rest, slash, resource = text.partition("/")
    local, at, domain = rest.partition("@")
    if not at:
        domain = rest
    return JID(
        normalize_localpart(local) if at else None,
        normalize_domain(domain),
        normalize_resource(resource) if slash else None,
    )


class JID:
    """An immutable, hashable JID whose parts are already prepared; None marks an absent part."""

    __slots__ = ("local", "domain", "resource")

    local: str | None
    domain: str
    resource: str | None

    def __init__(self, local: str | None, domain: str, resource: str | None = None) -> None:
        object.__setattr__(self, "local", local)
        object.__setattr__(self, "domain", domain)
        object.__setattr__(self, "resource", resource)

    @classmethod
    def parse(cls, text: str) -> JID:
        """Parse and prepare text; raises InvalidJID with the reason."""
        return _parse(text)

    @property
    def bare(self) -> JID:
        return self if self.resource is None else JID(self.local, self.domain)

    @property
    def is_bare(self) -> bool:
        return self.resource is None

    def with_resource(self, r: str | None) -> JID:
        """This JID with resource r (prepared here, since it usually comes from a client)."""
        if r is None:
            return self.bare
        return JID(self.local, self.domain, normalize_resource(r))

    def __setattr__(self, name, value):
        raise AttributeError("JID is immutable")

    def __delattr__(self, name):
        raise AttributeError("JID is immutable")

    def __reduce__(self):
        return (JID, (self.local, self.domain, self.resource))

    def __str__(self) -> str:
        text = self.domain if self.local is None else f"{self.local}@{self.domain}"
        return text if self.resource is None else f"{text}/{self.resource}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JID):
            return NotImplemented
        return (
            self.domain == other.domain
            and self.local == other.local
            and self.resource == other.resource
        )

    def __hash__(self) -> int:
        return hash((self.local, self.domain, self.resource))

    def __repr__(self) -> str:
        return f"JID({str(self)!r})"
