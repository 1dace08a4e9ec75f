"""The client-to-server stream as a state machine without I/O (RFC 6120 §4–§7).

Bytes go in through ``receive()``; what the transport must do comes out as a
list of actions (send bytes, start TLS, look up credentials, bind a resource,
route a stanza, close). Anything that needs storage or the session table is an
action the caller answers later (``credentials()``, ``bound()``); until it
does, the machine holds further input so stanzas are handled in order.
The Twisted protocol in c2s.py is only the shell around this class.
"""

from __future__ import annotations

import base64
import binascii
import enum
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

from lxml import etree

from . import sasl
from .jid import JID, InvalidJID, normalize_localpart, normalize_resource
from .stanza import IQ, NS_CLIENT, STANZA_TAGS, error_reply, iq_result, qname, serialize
from .storage.models import ScramCredentials
from .stream_mgmt import NS_SM, RESUME, failed_bytes, parse_h
from .xmlstream import (
    NS_STREAMS,
    STREAM_CLOSE,
    StanzaReceived,
    StreamClosed,
    StreamError,
    StreamOpened,
    StreamParser,
    stream_error,
    stream_header,
)

NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_REGISTER_FEATURE = "http://jabber.org/features/iq-register"
NS_REGISTER = "jabber:iq:register"
NS_SASL_CB = "urn:xmpp:sasl-cb:0"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

# RFC 6120 §6.4.5: allow a few retries, then close with <policy-violation/>.
MAX_AUTH_ATTEMPTS = 5


# ---------------------------------------------------------------- actions
@dataclass(slots=True)
class Send:
    data: bytes


@dataclass(slots=True)
class StartTLS:
    """Bytes sent before this action go out in clear text; everything after is inside TLS."""


@dataclass(slots=True)
class LookupCredentials:
    """Answer with ``credentials()``. ``username`` is None when what the client sent is no valid
    localpart: the caller answers None after the same delay, so the client cannot tell. When the user has
    no keys for ``mechanism``, those of ``fallback`` serve as well (PLAIN can check a password against
    either hash: accounts imported from Prosody have only SCRAM-SHA-1 keys)."""
    username: str | None
    mechanism: str
    fallback: tuple[str, ...] = ()


@dataclass(slots=True)
class Authenticated:
    username: str
    mechanism: str


@dataclass(slots=True)
class AuthFailed:
    username: str | None
    mechanism: str
    condition: str


@dataclass(slots=True)
class BindRequested:
    """Answer with ``bound()`` or ``bind_failed()``. ``resource`` is None: the server picks one."""
    resource: str | None


@dataclass(slots=True)
class PreAuthIq:
    """An iq the server may answer before authentication (XEP-0077 in-band registration)."""
    element: etree._Element


@dataclass(slots=True)
class ResumeRequested:
    """XEP-0198 <resume/> instead of bind: answer with resumed() or resume_failed()."""
    previd: str
    h: int


@dataclass(slots=True)
class StanzaIn:
    """A stanza from the bound client, its 'from' stamped with the full JID."""
    element: etree._Element


@dataclass(slots=True)
class NonzaIn:
    """A top-level element outside jabber:client after binding (e.g. XEP-0198 <r/>)."""
    element: etree._Element


@dataclass(slots=True)
class Closed:
    """The stream is over: close the transport once the bytes sent so far are written."""
    reason: str
    condition: str | None = None


Action = Send | StartTLS | LookupCredentials | Authenticated | AuthFailed | BindRequested | PreAuthIq | \
    ResumeRequested | StanzaIn | NonzaIn | Closed


class Phase(enum.Enum):
    CONNECTED = "connected"            # waiting for the first stream header
    NEGOTIATING = "negotiating"        # features sent, before SASL success
    AUTHENTICATING = "authenticating"  # a SASL exchange is under way
    AUTHENTICATED = "authenticated"    # SASL done, waiting for bind
    BOUND = "bound"                    # stanzas flow
    CLOSED = "closed"


@dataclass(slots=True)
class StreamSettings:
    """What the machine needs from the configuration; one instance serves all connections."""
    domain: str
    require_encryption: bool = True
    allow_unencrypted_plain: bool = False   # PLAIN on a stream without TLS ([auth] allow_unencrypted_plain)
    tls_available: bool = True
    mechanisms: tuple[str, ...] = ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")
    channel_binding: bool = True
    max_stanza_size: int = 262144
    scram_iterations: int = 4096
    fake_secret: bytes = b""
    register_before_auth: bool = False
    # Extra <stream:features/> children offered after authentication (XEP-0198 <sm/>, XEP-0352 <csi/> …).
    bound_features: Callable[[], Iterable[etree._Element]] = lambda: ()


class C2SMachine:
    """One client stream, from the first header to the closing tag."""

    def __init__(self, settings: StreamSettings, *, tls_active: bool = False,
                 channel_bindings: Callable[[], dict[str, bytes]] = dict) -> None:
        self.settings = settings
        self.phase = Phase.CONNECTED
        self.tls_active = tls_active
        self.username: str | None = None
        self.jid: str | None = None           # full JID once bound
        self.bare: str | None = None
        self.lang = "en"
        self.stream_id = ""
        self._channel_bindings = channel_bindings
        self._parser = self._new_parser()
        self._header_sent = False
        self._mechanism: sasl.Mechanism | None = None
        self._mechanism_name = ""
        self._auth_username: str | None = None
        self._auth_attempts = 0
        self._offered: list[str] = []
        self._waiting = False                 # an action is out that we need the answer to
        self._pending: deque = deque()        # parser events held while waiting
        self._bind_iq: etree._Element | None = None

    @property
    def waiting(self) -> bool:
        """An action is out whose answer the machine needs: the transport should stop reading meanwhile,
        so that input held back here stays small."""
        return self._waiting

    # ------------------------------------------------------------ inputs
    def receive(self, data: bytes) -> list[Action]:
        """Bytes from the transport."""
        if self.phase is Phase.CLOSED:
            return []
        try:
            events = self._parser.feed(data)
        except StreamError as error:
            return self._stream_error(error.condition, error.text)
        self._pending.extend(events)
        return self._drain()

    def tls_started(self) -> None:
        """The transport finished STARTTLS; the client now opens a new stream."""
        self.tls_active = True

    def credentials(self, stored: ScramCredentials | None) -> list[Action]:
        """The answer to LookupCredentials."""
        if self.phase is not Phase.AUTHENTICATING or self._mechanism is None:
            return []
        self._waiting = False
        actions = self._sasl_step(self._mechanism.provide_credentials(stored))
        return actions + self._drain()

    def bound(self, full_jid: str) -> list[Action]:
        """The answer to BindRequested: the session is registered under this full JID."""
        iq = self._bind_iq
        self._bind_iq = None
        self._waiting = False
        self.jid = full_jid
        self.phase = Phase.BOUND
        payload = etree.Element(qname(NS_BIND, "bind"), nsmap={None: NS_BIND})
        etree.SubElement(payload, qname(NS_BIND, "jid")).text = full_jid
        reply = iq_result(iq, payload)
        reply.attrib.pop("to", None)
        return [Send(serialize(reply))] + self._drain()

    def bind_failed(self, condition: str, text: str | None = None) -> list[Action]:
        iq = self._bind_iq
        self._bind_iq = None
        self._waiting = False
        return [Send(serialize(error_reply(iq, condition, text)))] + self._drain()

    def resumed(self, full_jid: str) -> list[Action]:
        """The answer to ResumeRequested: the stream now carries the resumed session (the caller has
        written <resumed/> and the unacknowledged stanzas)."""
        self._waiting = False
        self.jid = full_jid
        self.phase = Phase.BOUND
        return self._drain()

    def resume_failed(self, answer: bytes) -> list[Action]:
        """The answer to ResumeRequested when the session cannot be resumed: the client may bind anew."""
        self._waiting = False
        return [Send(answer)] + self._drain()

    def pre_auth_answered(self) -> list[Action]:
        """The answer to PreAuthIq was written; go on with what the client sent after it."""
        self._waiting = False
        return self._drain()

    def connection_lost(self) -> None:
        """The transport is gone: nothing more may be sent or acted on."""
        self.phase = Phase.CLOSED
        self._pending.clear()

    def close(self, condition: str | None = None, text: str | None = None,
              reason: str = "closed by server", app_error: bytes = b"") -> list[Action]:
        """Server-initiated end of stream: with a stream error when `condition` is given (and an
        application-specific condition element, such as XEP-0198's <handled-count-too-high/>)."""
        if self.phase is Phase.CLOSED:
            return []
        if condition:
            return self._stream_error(condition, text, reason=reason, app_error=app_error)
        self.phase = Phase.CLOSED
        return [Send(self._header_if_needed() + STREAM_CLOSE), Closed(reason)]

    # ------------------------------------------------------------ event loop
    def _drain(self) -> list[Action]:
        actions: list[Action] = []
        while self._pending and not self._waiting and self.phase is not Phase.CLOSED:
            event = self._pending.popleft()
            if isinstance(event, StanzaReceived):
                actions.extend(self._on_element(event.element))
            elif isinstance(event, StreamOpened):
                actions.extend(self._on_stream_open(event.attrs))
            elif isinstance(event, StreamClosed):
                self.phase = Phase.CLOSED
                actions.append(Send(self._header_if_needed() + STREAM_CLOSE))
                actions.append(Closed("client closed the stream"))
        return actions

    def _on_stream_open(self, attrs: dict[str, str]) -> list[Action]:
        self.stream_id = secrets.token_urlsafe(12)
        self.lang = attrs.get(XML_LANG) or "en"
        to = attrs.get("to")
        if to is not None and to.lower().rstrip(".") != self.settings.domain:
            return self._stream_error("host-unknown", f"this server does not serve {to}")
        version = attrs.get("version", "0.9")
        if _major(version) < 1:
            return self._stream_error("unsupported-version", "XMPP 1.0 streams only")
        header = stream_header(from_=self.settings.domain, stream_id=self.stream_id,
                               to=attrs.get("from"), lang="en")
        self._header_sent = True
        features = etree.Element(qname(NS_STREAMS, "features"), nsmap={"stream": NS_STREAMS})
        if self.username is None:
            self.phase = Phase.NEGOTIATING
            self._offer_pre_auth_features(features)
        else:
            self.phase = Phase.AUTHENTICATED
            etree.SubElement(features, qname(NS_BIND, "bind"), nsmap={None: NS_BIND})  # empty: the offer
            session = etree.SubElement(features, qname(NS_SESSION, "session"), nsmap={None: NS_SESSION})
            etree.SubElement(session, qname(NS_SESSION, "optional"))
            for extra in self.settings.bound_features():
                features.append(extra)
        return [Send(header + serialize(features))]

    def _offer_pre_auth_features(self, features: etree._Element) -> None:
        settings = self.settings
        if not self.tls_active and settings.tls_available:
            starttls = etree.SubElement(features, qname(NS_TLS, "starttls"), nsmap={None: NS_TLS})
            if settings.require_encryption:
                etree.SubElement(starttls, qname(NS_TLS, "required"))
                self._offered = []
                return
        binding_types = self._binding_types()
        self._offered = sasl.available_mechanisms(list(settings.mechanisms),
                                                  plain_allowed=self.tls_active or settings.allow_unencrypted_plain,
                                                  channel_binding_types=binding_types)
        mechanisms = etree.SubElement(features, qname(NS_SASL, "mechanisms"), nsmap={None: NS_SASL})
        for name in self._offered:
            etree.SubElement(mechanisms, qname(NS_SASL, "mechanism")).text = name
        if binding_types:
            # XEP-0440: tell the client which channel-binding types it may use.
            cb = etree.SubElement(features, qname(NS_SASL_CB, "sasl-channel-binding"), nsmap={None: NS_SASL_CB})
            for binding in binding_types:
                etree.SubElement(cb, qname(NS_SASL_CB, "channel-binding")).set("type", binding)
        if settings.register_before_auth:
            etree.SubElement(features, qname(NS_REGISTER_FEATURE, "register"), nsmap={None: NS_REGISTER_FEATURE})

    def _binding_types(self) -> list[str]:
        if not (self.tls_active and self.settings.channel_binding):
            return []
        return sorted(self._channel_bindings())

    def _on_element(self, element: etree._Element) -> list[Action]:
        tag = element.tag
        if not isinstance(tag, str):
            return []
        namespace = etree.QName(tag).namespace
        if self.phase is Phase.BOUND:
            if namespace == NS_CLIENT:
                return self._on_stanza(element)
            return [NonzaIn(element)]
        if namespace == NS_TLS:
            return self._on_starttls(element)
        if namespace == NS_SASL:
            return self._on_sasl(element)
        if tag == IQ:
            return self._on_iq_before_bound(element)
        if namespace == NS_SM and self.phase is Phase.AUTHENTICATED:
            return self._on_stream_management(element)
        return self._stream_error("not-authorized", "authenticate and bind a resource first")

    def _on_stream_management(self, element: etree._Element) -> list[Action]:
        """XEP-0198 between authentication and bind: <resume/> takes an earlier session over; <enable/>
        must wait until a resource is bound (§3)."""
        if element.tag == RESUME:
            previd = element.get("previd")
            h = parse_h(element.get("h"))
            if not previd or h is None:
                return [Send(failed_bytes("bad-request"))]
            self._waiting = True
            return [ResumeRequested(previd, h)]
        return [Send(failed_bytes("unexpected-request"))]

    # ------------------------------------------------------------ STARTTLS
    def _on_starttls(self, element: etree._Element) -> list[Action]:
        if (self.phase is not Phase.NEGOTIATING or self.tls_active or not self.settings.tls_available
                or etree.QName(element).localname != "starttls"):
            failure = etree.Element(qname(NS_TLS, "failure"), nsmap={None: NS_TLS})
            self.phase = Phase.CLOSED
            return [Send(serialize(failure) + STREAM_CLOSE), Closed("unexpected STARTTLS negotiation")]
        proceed = etree.Element(qname(NS_TLS, "proceed"), nsmap={None: NS_TLS})
        # RFC 6120 §5.4.3.3: after TLS both sides start a new stream; the old parser is done.
        self._parser = self._new_parser()
        self.phase = Phase.CONNECTED
        self._pending.clear()
        return [Send(serialize(proceed)), StartTLS()]

    # ------------------------------------------------------------ SASL
    def _on_sasl(self, element: etree._Element) -> list[Action]:
        name = etree.QName(element).localname
        if name == "auth":
            return self._on_auth(element)
        if self.phase is not Phase.AUTHENTICATING or self._mechanism is None:
            return self._sasl_failure("malformed-request", "no authentication exchange is under way")
        if name == "abort":
            return self._sasl_failure("aborted")
        if name != "response":
            return self._sasl_failure("malformed-request", f"unexpected <{name}/>")
        data = _decode_b64(element.text)
        if data is None:
            return self._sasl_failure("incorrect-encoding")
        return self._sasl_step(self._mechanism.respond(data))

    def _on_auth(self, element: etree._Element) -> list[Action]:
        if self.phase is Phase.AUTHENTICATING:
            return self._sasl_failure("malformed-request", "an authentication exchange is already under way")
        if self.phase is not Phase.NEGOTIATING:
            return self._stream_error("policy-violation", "already authenticated")
        if self.settings.require_encryption and not self.tls_active:
            return self._sasl_failure("encryption-required", "use STARTTLS first")
        name = element.get("mechanism", "")
        if name not in self._offered:
            return self._sasl_failure("invalid-mechanism", f"{name or 'no mechanism'} is not offered here")
        initial: bytes | None = None
        if element.text and element.text.strip():
            initial = _decode_b64(element.text)
            if initial is None:
                return self._sasl_failure("incorrect-encoding")
        # The mechanism also needs the bindings when it is not -PLUS: a 'y' GS2 flag while -PLUS was
        # offered means someone stripped -PLUS from the offer (RFC 5802 §6).
        bindings = self._channel_bindings() if self._binding_types() else None
        self._mechanism = sasl.create_mechanism(
            name, fake_secret=self.settings.fake_secret, iterations=self.settings.scram_iterations,
            channel_bindings=bindings)
        self._mechanism_name = name
        self._auth_username = None
        self.phase = Phase.AUTHENTICATING
        return self._sasl_step(self._mechanism.start(initial))

    def _sasl_step(self, step) -> list[Action]:
        if isinstance(step, sasl.Challenge):
            return [Send(_sasl_element("challenge", step.data))]
        if isinstance(step, sasl.NeedCredentials):
            try:
                self._auth_username = normalize_localpart(step.username)
            except InvalidJID:
                self._auth_username = None
            self._waiting = True
            fallback = ("SCRAM-SHA-1",) if self._mechanism_name == "PLAIN" else ()
            return [LookupCredentials(self._auth_username, _stored_mechanism(self._mechanism_name), fallback)]
        if isinstance(step, sasl.Success):
            username = self._auth_username
            own = f"{username}@{self.settings.domain}"
            if username is None or (step.authzid and step.authzid not in (own, username)):
                return self._sasl_failure("invalid-authzid", "you may only act as yourself")
            self.username = username
            self.bare = own
            self._mechanism = None
            self.phase = Phase.CONNECTED
            self._parser = self._new_parser()  # RFC 6120 §6.4.6: a new stream follows
            self._pending.clear()
            return [Send(_sasl_element("success", step.additional_data)),
                    Authenticated(username, self._mechanism_name)]
        return self._sasl_failure(step.condition, step.text)

    def _sasl_failure(self, condition: str, text: str = "") -> list[Action]:
        self._mechanism = None
        self._waiting = False
        if self.phase is Phase.AUTHENTICATING:
            self.phase = Phase.NEGOTIATING
        self._auth_attempts += 1
        failure = etree.Element(qname(NS_SASL, "failure"), nsmap={None: NS_SASL})
        etree.SubElement(failure, qname(NS_SASL, condition))
        if text:
            etree.SubElement(failure, qname(NS_SASL, "text")).text = text
        actions: list[Action] = [Send(serialize(failure)),
                                 AuthFailed(self._auth_username, self._mechanism_name, condition)]
        if self._auth_attempts >= MAX_AUTH_ATTEMPTS:
            actions.extend(self._stream_error("policy-violation", "too many failed authentication attempts"))
        return actions

    # ------------------------------------------------------------ bind and stanzas
    def _on_iq_before_bound(self, iq: etree._Element) -> list[Action]:
        payload = iq[0] if len(iq) else None
        payload_tag = payload.tag if payload is not None else None
        if self.phase is Phase.AUTHENTICATED and payload_tag == qname(NS_BIND, "bind") and iq.get("type") == "set":
            return self._on_bind(iq, payload)
        if (self.phase is Phase.NEGOTIATING and self.settings.register_before_auth
                and (self.tls_active or not self.settings.require_encryption)
                and payload_tag == qname(NS_REGISTER, "query")):
            self._waiting = True
            return [PreAuthIq(iq)]
        return self._stream_error("not-authorized", "authenticate and bind a resource first")

    def _on_bind(self, iq: etree._Element, payload: etree._Element) -> list[Action]:
        requested = payload.findtext(qname(NS_BIND, "resource"))
        resource: str | None = None
        if requested and requested.strip():
            try:
                resource = normalize_resource(requested)
            except InvalidJID as error:
                return [Send(serialize(error_reply(iq, "bad-request", str(error))))]
        self._bind_iq = iq
        self._waiting = True
        return [BindRequested(resource)]

    def _on_stanza(self, element: etree._Element) -> list[Action]:
        if element.tag not in STANZA_TAGS:
            return self._stream_error("unsupported-stanza-type", f"<{etree.QName(element).localname}/>")
        claimed = element.get("from")
        if claimed is not None and claimed != self.jid and not self._is_own_address(claimed):
            return self._stream_error("invalid-from", f"you are {self.jid}")
        element.set("from", self.jid)
        return [StanzaIn(element)]

    def _is_own_address(self, claimed: str) -> bool:
        """RFC 6120 §8.1.2.1: the bare or full JID of this session, compared after normalization."""
        try:
            address = str(JID.parse(claimed))
        except InvalidJID:
            return False
        return address == self.jid or address == self.bare

    # ------------------------------------------------------------ helpers
    def _stream_error(self, condition: str, text: str | None = None, reason: str | None = None,
                      app_error: bytes = b"") -> list[Action]:
        self.phase = Phase.CLOSED
        data = self._header_if_needed() + stream_error(condition, text or None, app_error) + STREAM_CLOSE
        return [Send(data), Closed(reason or f"stream error {condition}" + (f": {text}" if text else ""),
                                   condition)]

    def _header_if_needed(self) -> bytes:
        """RFC 6120 §4.9.1.2: even an error answer opens the stream first."""
        if self._header_sent:
            return b""
        self._header_sent = True
        self.stream_id = self.stream_id or secrets.token_urlsafe(12)
        return stream_header(from_=self.settings.domain, stream_id=self.stream_id)

    def _new_parser(self) -> StreamParser:
        self._header_sent = False
        return StreamParser(content_ns=NS_CLIENT, max_stanza_size=self.settings.max_stanza_size)


def _major(version: str) -> int:
    try:
        return int(version.split(".", 1)[0])
    except ValueError:
        return 0


def _decode_b64(text: str | None) -> bytes | None:
    """SASL payloads (RFC 6120 §6.4.2): '=' or nothing is empty; invalid base64 is None."""
    text = (text or "").strip()
    if text in ("", "="):
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _sasl_element(name: str, data: bytes | None) -> bytes:
    element = etree.Element(qname(NS_SASL, name), nsmap={None: NS_SASL})
    if data:
        element.text = base64.b64encode(data).decode("ascii")
    elif data is not None and name == "challenge":
        element.text = "="
    return serialize(element)


def _stored_mechanism(name: str) -> str:
    """Which stored SCRAM keys a mechanism checks against; PLAIN uses the SHA-256 ones."""
    return "SCRAM-SHA-1" if name.startswith("SCRAM-SHA-1") else "SCRAM-SHA-256"
