"""The client stream state machine, driven directly: no sockets, no reactor."""

from __future__ import annotations

import base64

import pytest
from lxml import etree
from scramp import ScramClient

from xmppd import c2s_machine as m
from xmppd.sasl import derive_credentials

HEADER = (b"<stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams'>")
CREDENTIALS = derive_credentials("secret", 4096)


def settings(**overrides) -> m.StreamSettings:
    values = dict(domain="localhost", fake_secret=b"k" * 32, tls_available=True)
    values.update(overrides)
    return m.StreamSettings(**values)


def sent(actions) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, m.Send))


def of_type(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def stream_error(actions) -> str | None:
    data = sent(actions)
    if b"<stream:error" not in data:
        return None
    assert of_type(actions, m.Closed), "a stream error always closes"
    start = data.index(b"<stream:error")
    fragment = data[start:data.index(b"</stream:error>") + 15].replace(
        b"<stream:error", b"<stream:error xmlns:stream='http://etherx.jabber.org/streams'", 1)
    element = etree.fromstring(fragment)
    return etree.QName(element[0]).localname


def plain(user: str, password: str) -> bytes:
    payload = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>".encode()


def negotiated(**overrides) -> m.C2SMachine:
    """A machine that finished STARTTLS and sent the second stream's features."""
    machine = m.C2SMachine(settings(**overrides))
    machine.receive(HEADER)
    machine.receive(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    machine.tls_started()
    machine.receive(HEADER)
    return machine


def authenticated() -> m.C2SMachine:
    machine = negotiated()
    lookup = of_type(machine.receive(plain("alice", "secret")), m.LookupCredentials)[0]
    machine.credentials(CREDENTIALS[lookup.mechanism])
    machine.receive(HEADER)
    return machine


def bound() -> m.C2SMachine:
    machine = authenticated()
    machine.receive(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    machine.bound("alice@localhost/r1")
    return machine


# ------------------------------------------------------------------ negotiation
def test_starttls_is_required_before_anything_else():
    machine = m.C2SMachine(settings())
    features = sent(machine.receive(HEADER))
    assert b"<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"><required/></starttls>" in features
    assert b"mechanisms" not in features
    actions = machine.receive(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert b"<proceed" in sent(actions) and of_type(actions, m.StartTLS)
    machine.tls_started()
    features = sent(machine.receive(HEADER))
    assert b"<mechanism>SCRAM-SHA-256</mechanism>" in features and b"<mechanism>PLAIN</mechanism>" in features
    assert b"starttls" not in features


def test_plain_auth_without_tls_is_refused():
    machine = m.C2SMachine(settings())
    machine.receive(HEADER)
    assert b"<encryption-required/>" in sent(machine.receive(plain("alice", "secret")))


def test_without_required_encryption_plain_is_not_offered_in_clear():
    machine = m.C2SMachine(settings(require_encryption=False))
    features = sent(machine.receive(HEADER))
    assert b"<starttls" in features and b"<required/>" not in features
    assert b"SCRAM-SHA-1" in features and b"PLAIN" not in features


def test_plain_in_clear_only_where_the_operator_allows_it():
    machine = m.C2SMachine(settings(require_encryption=False, allow_unencrypted_plain=True))
    assert b"<mechanism>PLAIN</mechanism>" in sent(machine.receive(HEADER))
    machine.receive(plain("alice", "secret"))
    assert b"<success" in sent(machine.credentials(CREDENTIALS["SCRAM-SHA-256"]))


@pytest.mark.parametrize("header, condition", [
    (HEADER.replace(b"localhost", b"elsewhere.example"), "host-unknown"),
    (HEADER.replace(b"version='1.0'", b""), "unsupported-version"),
    (HEADER.replace(b"jabber:client", b"jabber:server"), "invalid-namespace"),
    (b"<!DOCTYPE x>" + HEADER, "restricted-xml"),
    (HEADER + b"<message><body></message>", "not-well-formed"),
    (HEADER + b"<message to='bob@localhost'/>", "not-authorized"),
])
def test_bad_streams(header, condition):
    machine = m.C2SMachine(settings())
    actions = machine.receive(header)
    assert stream_error(actions) == condition
    assert sent(actions).startswith(b"<?xml") or b"<stream:stream" in sent(actions)  # header before error
    assert machine.phase is m.Phase.CLOSED
    assert machine.receive(b"<more/>") == []


def test_client_closing_the_stream():
    machine = m.C2SMachine(settings())
    machine.receive(HEADER)
    actions = machine.receive(b"</stream:stream>")
    assert sent(actions).endswith(b"</stream:stream>")
    assert of_type(actions, m.Closed)[0].reason == "client closed the stream"


# ------------------------------------------------------------------ SASL
def test_plain_success_then_bind():
    machine = negotiated()
    actions = machine.receive(plain("Alice", "secret"))
    lookup = of_type(actions, m.LookupCredentials)[0]
    assert (lookup.username, lookup.mechanism) == ("alice", "SCRAM-SHA-256")   # normalised localpart
    assert lookup.fallback == ("SCRAM-SHA-1",)   # an account imported with SHA-1 keys only can use PLAIN
    actions = machine.credentials(CREDENTIALS["SCRAM-SHA-256"])
    assert b"<success" in sent(actions)
    assert of_type(actions, m.Authenticated)[0].username == "alice"
    features = sent(machine.receive(HEADER))
    assert b"urn:ietf:params:xml:ns:xmpp-bind" in features
    actions = machine.receive(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                              b"<resource>phone</resource></bind></iq>")
    assert of_type(actions, m.BindRequested)[0].resource == "phone"
    reply = etree.fromstring(sent(machine.bound("alice@localhost/phone")))
    assert reply.get("type") == "result" and reply.get("id") == "b1"
    assert reply.findtext("{urn:ietf:params:xml:ns:xmpp-bind}bind/{urn:ietf:params:xml:ns:xmpp-bind}jid") \
        == "alice@localhost/phone"


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_scram_exchange(mechanism):
    machine = negotiated()
    client = ScramClient([mechanism], "alice", "secret")
    first = base64.b64encode(client.get_client_first().encode()).decode()
    actions = machine.receive(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>"
                              f"{first}</auth>".encode())
    lookup = of_type(actions, m.LookupCredentials)[0]
    assert lookup.mechanism == mechanism and lookup.fallback == ()   # SCRAM needs keys of its own hash
    challenge = etree.fromstring(sent(machine.credentials(CREDENTIALS[mechanism])))
    client.set_server_first(base64.b64decode(challenge.text).decode())
    final = base64.b64encode(client.get_client_final().encode()).decode()
    actions = machine.receive(f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{final}</response>".encode())
    success = etree.fromstring(sent(actions))
    client.set_server_final(base64.b64decode(success.text).decode())   # verifies the server signature
    assert of_type(actions, m.Authenticated)


def test_wrong_password_then_too_many_attempts():
    machine = negotiated()
    for attempt in range(1, m.MAX_AUTH_ATTEMPTS + 1):
        machine.receive(plain("alice", "wrong"))
        actions = machine.credentials(CREDENTIALS["SCRAM-SHA-256"])
        assert b"<not-authorized/>" in sent(actions)
        assert of_type(actions, m.AuthFailed)[0].condition == "not-authorized"
    assert stream_error(actions) == "policy-violation"


def test_unknown_user_fails_like_a_wrong_password():
    machine = negotiated()
    machine.receive(plain("nobody", "secret"))
    actions = machine.credentials(None)
    assert b"<not-authorized/>" in sent(actions)


@pytest.mark.parametrize("auth, condition", [
    (b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='X-UNKNOWN'>=</auth>", "invalid-mechanism"),
    (b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>not base64!</auth>", "incorrect-encoding"),
    (b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>AAAA</response>", "malformed-request"),
])
def test_sasl_protocol_errors(auth, condition):
    machine = negotiated()
    assert f"<{condition}/>".encode() in sent(machine.receive(auth))
    assert machine.phase is m.Phase.NEGOTIATING


def test_abort():
    machine = negotiated()
    machine.receive(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'/>")
    assert b"<aborted/>" in sent(machine.receive(b"<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"))


def test_authzid_of_someone_else_is_refused():
    machine = negotiated()
    payload = base64.b64encode(b"bob@localhost\0alice\0secret").decode()
    machine.receive(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>".encode())
    assert b"<invalid-authzid/>" in sent(machine.credentials(CREDENTIALS["SCRAM-SHA-256"]))


def test_channel_binding_is_offered_when_available():
    machine = m.C2SMachine(settings(), tls_active=True,
                           channel_bindings=lambda: {"tls-exporter": b"e" * 32})
    features = sent(machine.receive(HEADER))
    assert b"<mechanism>SCRAM-SHA-256-PLUS</mechanism>" in features
    assert b"<channel-binding type=\"tls-exporter\"/>" in features


# ------------------------------------------------------------------ after authentication
def test_input_waits_while_the_bind_is_answered():
    machine = authenticated()
    actions = machine.receive(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"
                              b"<message to='bob@localhost'><body>hi</body></message>")
    assert of_type(actions, m.BindRequested) and not of_type(actions, m.StanzaIn)
    actions = machine.bound("alice@localhost/r1")
    stanza = of_type(actions, m.StanzaIn)[0].element
    assert stanza.get("from") == "alice@localhost/r1"


def test_stanza_before_bind_is_not_authorized():
    machine = authenticated()
    assert stream_error(machine.receive(b"<message to='bob@localhost'/>")) == "not-authorized"


def test_bad_resource_gets_bad_request():
    machine = authenticated()
    actions = machine.receive(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                              b"<resource>\x7f</resource></bind></iq>")
    assert b"<bad-request" in sent(actions) and machine.phase is m.Phase.AUTHENTICATED


@pytest.mark.parametrize("claimed, accepted", [
    (None, True), ("alice@localhost/r1", True), ("alice@localhost", True), ("Alice@LOCALHOST/r1", True),
    ("bob@localhost/x", False), ("alice@localhost/other", False), ("localhost", False),
])
def test_from_is_stamped_or_the_stream_ends(claimed, accepted):
    machine = bound()
    attribute = f" from='{claimed}'" if claimed else ""
    actions = machine.receive(f"<message to='bob@localhost'{attribute}><body>x</body></message>".encode())
    if accepted:
        assert of_type(actions, m.StanzaIn)[0].element.get("from") == "alice@localhost/r1"
    else:
        assert stream_error(actions) == "invalid-from"


def test_unknown_elements_after_bind():
    machine = bound()
    nonza = of_type(machine.receive(b"<r xmlns='urn:xmpp:sm:3'/>"), m.NonzaIn)
    assert nonza and nonza[0].element.tag == "{urn:xmpp:sm:3}r"
    assert stream_error(machine.receive(b"<weird/>")) == "unsupported-stanza-type"


def test_legacy_session_iq_goes_through_the_stanza_queue():
    """Answered by the server like any iq, so it cannot overtake stanzas sent before it."""
    machine = bound()
    actions = machine.receive(b"<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
    assert of_type(actions, m.StanzaIn) and not sent(actions)


def test_registration_waits_for_its_answer():
    machine = negotiated(register_before_auth=True)
    actions = machine.receive(b"<iq type='set' id='r1'><query xmlns='jabber:iq:register'/></iq>" + plain("a", "b"))
    assert of_type(actions, m.PreAuthIq) and not of_type(actions, m.LookupCredentials)
    assert machine.waiting
    assert of_type(machine.pre_auth_answered(), m.LookupCredentials)


def test_registration_iq_before_auth_only_when_enabled():
    query = b"<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>"
    assert of_type(negotiated(register_before_auth=True).receive(query), m.PreAuthIq)
    assert stream_error(negotiated().receive(query)) == "not-authorized"


def test_server_close_with_and_without_error():
    machine = bound()
    assert stream_error(machine.close("system-shutdown", "bye")) == "system-shutdown"
    machine = bound()
    actions = machine.close()
    assert sent(actions) == b"</stream:stream>" and of_type(actions, m.Closed)
