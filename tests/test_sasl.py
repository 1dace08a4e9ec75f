"""SASL mechanisms driven directly, with scramp's client (and a small independent RFC 5802 client) on the
other side."""

import base64
import hashlib
import hmac
import random
import re

import pytest
import scramp.core
from scramp import ScramClient, ScramMechanism

import xmppd.sasl
from xmppd.sasl import (
    Challenge,
    Failure,
    NeedCredentials,
    Success,
    available_mechanisms,
    create_mechanism,
    derive_credentials,
    fake_credentials,
)
from xmppd.storage.models import ScramCredentials

SECRET = b"fake-credentials-secret-0123456789"
ITERATIONS = 4096
EXPORTER = b"\x01" * 32
END_POINT = b"\x02" * 32
BINDINGS = {"tls-exporter": EXPORTER, "tls-server-end-point": END_POINT}

# One derivation for the whole module: PBKDF2 is deliberately slow.
USERS = {"juliet": derive_credentials("pencil", ITERATIONS)}


def mechanism(name, channel_bindings=None):
    return create_mechanism(name, fake_secret=SECRET, iterations=ITERATIONS, channel_bindings=channel_bindings)


def lookup(name, username):
    """What the caller does on NeedCredentials: PLAIN is checked against the SCRAM-SHA-256 keys."""
    base = "SCRAM-SHA-256" if name == "PLAIN" else name.removesuffix("-PLUS")
    creds = USERS.get(username)
    return creds[base] if creds else None


@pytest.fixture
def scramp_knows_tls_exporter(monkeypatch):
    """scramp refuses the tls-exporter name only because Python's ssl cannot export keying material; the
    SCRAM arithmetic does not depend on the type, and the test supplies the data itself."""
    monkeypatch.setattr(scramp.core.CbName, "SUPPORTED_TYPES", frozenset({"tls-exporter", "tls-server-end-point"}))
    monkeypatch.setattr(scramp.core.CbName, "UNSUPPORTED_TYPES", frozenset())


def run_scram(name, username, password, *, client_binding=None, server_bindings=None, client_mechs=None):
    """Full exchange; returns (final step, server-first message or None). Verifies v= on success."""
    client = ScramClient(client_mechs or [name], username, password, channel_binding=client_binding)
    mech = mechanism(name, server_bindings)
    step = mech.start(client.get_client_first().encode())
    if isinstance(step, Failure):
        return step, None
    assert step == NeedCredentials(username)
    step = mech.provide_credentials(lookup(name, username))
    assert isinstance(step, Challenge)
    client.set_server_first(step.data.decode())
    final = mech.respond(client.get_client_final().encode())
    if isinstance(final, Success):
        client.set_server_final(final.additional_data.decode())  # raises unless the server proved the key
    return final, step.data.decode()


@pytest.mark.parametrize("name", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_scram_success(name):
    final, _ = run_scram(name, "juliet", "pencil")
    assert isinstance(final, Success)
    assert (final.username, final.authzid) == ("juliet", None)
    assert final.additional_data.startswith(b"v=")


@pytest.mark.parametrize("name", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_scram_wrong_password(name):
    final, _ = run_scram(name, "juliet", "pencil!")
    assert final.condition == "not-authorized"


@pytest.mark.parametrize("name", ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"])
@pytest.mark.parametrize("binding_type", ["tls-exporter", "tls-server-end-point"])
def test_scram_plus_success(scramp_knows_tls_exporter, name, binding_type):
    final, _ = run_scram(name, "juliet", "pencil", client_binding=(binding_type, BINDINGS[binding_type]),
                         server_bindings=BINDINGS)
    assert isinstance(final, Success)


@pytest.mark.parametrize("binding_type", ["tls-exporter", "tls-server-end-point"])
def test_scram_plus_wrong_binding_data(scramp_knows_tls_exporter, binding_type):
    final, _ = run_scram("SCRAM-SHA-256-PLUS", "juliet", "pencil", client_binding=(binding_type, b"\x09" * 32),
                         server_bindings=BINDINGS)
    assert final.condition == "not-authorized"


def test_scram_plus_binding_type_not_available(scramp_knows_tls_exporter):
    final, _ = run_scram("SCRAM-SHA-256-PLUS", "juliet", "pencil", client_binding=("tls-exporter", EXPORTER),
                         server_bindings={"tls-server-end-point": END_POINT})
    assert final.condition == "malformed-request"


def test_y_flag_is_a_downgrade_when_plus_is_offered():
    # scramp's client sends 'y' when it has binding data but picks a mechanism without -PLUS.
    final, _ = run_scram("SCRAM-SHA-256", "juliet", "pencil", client_binding=("tls-server-end-point", END_POINT),
                         server_bindings={"tls-server-end-point": END_POINT})
    assert final.condition == "not-authorized"


def test_y_flag_is_fine_when_plus_is_not_offered():
    final, _ = run_scram("SCRAM-SHA-256", "juliet", "pencil", client_binding=("tls-server-end-point", END_POINT))
    assert isinstance(final, Success)


def test_gs2_flag_must_match_the_mechanism():
    assert mechanism("SCRAM-SHA-256", BINDINGS).start(b"p=tls-exporter,,n=juliet,r=abc").condition == (
        "malformed-request")
    for flag in (b"n", b"y"):
        step = mechanism("SCRAM-SHA-256-PLUS", BINDINGS).start(flag + b",,n=juliet,r=abc")
        assert step.condition == "malformed-request"


def test_unknown_user_looks_like_a_known_one_until_the_proof():
    known, known_first = run_scram("SCRAM-SHA-256", "juliet", "wrong")
    unknown, unknown_first = run_scram("SCRAM-SHA-256", "romeo", "wrong")
    shape = re.compile(r"r=[!-+\--~]+,s=([A-Za-z0-9+/]+=*),i=(\d+)")
    known_salt, known_i = shape.fullmatch(known_first).groups()
    unknown_salt, unknown_i = shape.fullmatch(unknown_first).groups()
    assert len(base64.b64decode(known_salt)) == len(base64.b64decode(unknown_salt))
    assert known_i == unknown_i == str(ITERATIONS)
    assert known == unknown == Failure("not-authorized", known.text)


def test_unknown_user_gets_a_stable_salt():
    salts = set()
    for username in ("romeo", "romeo", "Romeo"):  # spellings of one account share a salt, as a real one would
        _, first = run_scram("SCRAM-SHA-256", username, "x")
        salts.add(first.split(",")[1])
    _, other = run_scram("SCRAM-SHA-256", "mercutio", "x")
    assert len(salts) == 1 and other.split(",")[1] not in salts


@pytest.mark.parametrize("name", ["PLAIN", "SCRAM-SHA-256"])
def test_unknown_user_never_succeeds_even_if_fake_keys_matched(monkeypatch, name):
    """Were the fake keys ever those of the offered password, the mechanism still refuses a missing user."""
    monkeypatch.setattr(xmppd.sasl, "fake_credentials", lambda *args: USERS["juliet"]["SCRAM-SHA-256"])
    if name == "PLAIN":
        final = run_plain(b"\0romeo\0pencil", "romeo")
    else:
        final, _ = run_scram(name, "romeo", "pencil")
    assert final.condition == "not-authorized"


def test_saslname_escapes_are_decoded():
    final, _ = run_scram("SCRAM-SHA-256", "a,b=c", "x")
    assert final.condition == "not-authorized"  # unknown user, but the name came through
    assert mechanism("SCRAM-SHA-256").start(b"n,,n=a=2Cb=3Dc,r=abc") == NeedCredentials("a,b=c")
    assert mechanism("SCRAM-SHA-256").start(b"n,,n=Juliet,r=abc") == NeedCredentials("Juliet")  # as sent


def client_final(hash_name, password, creds_first, client_first_bare, gs2_header, binding_data=b""):
    """An RFC 5802 §3 client written straight from the spec, for what scramp's client cannot send (authzid)."""
    r, s, i = (item[2:] for item in creds_first.split(","))
    salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), base64.b64decode(s), int(i))
    client_key = hmac.new(salted, b"Client Key", hash_name).digest()
    stored_key = hashlib.new(hash_name, client_key).digest()
    without_proof = f"c={base64.b64encode(gs2_header + binding_data).decode()},r={r}"
    auth_message = f"{client_first_bare},{creds_first},{without_proof}".encode()
    signature = hmac.new(stored_key, auth_message, hash_name).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


@pytest.mark.parametrize("name,binding", [("SCRAM-SHA-1", b""), ("SCRAM-SHA-256-PLUS", EXPORTER)])
def test_scram_authzid_is_returned(name, binding):
    gs2 = b"p=tls-exporter,a=juliet@example.com," if binding else b"n,a=juliet@example.com,"
    mech = mechanism(name, BINDINGS if binding else None)
    assert mech.start(gs2 + b"n=juliet,r=clientnonce") == NeedCredentials("juliet")
    first = mech.provide_credentials(lookup(name, "juliet")).data.decode()
    hash_name = "sha1" if name == "SCRAM-SHA-1" else "sha256"
    final = mech.respond(client_final(hash_name, "pencil", first, "n=juliet,r=clientnonce", gs2, binding))
    assert final.username == "juliet" and final.authzid == "juliet@example.com"


def test_scram_start_without_initial_response():
    client = ScramClient(["SCRAM-SHA-256"], "juliet", "pencil")
    mech = mechanism("SCRAM-SHA-256")
    assert mech.start(None) == Challenge(b"")
    assert mech.respond(client.get_client_first().encode()) == NeedCredentials("juliet")
    client.set_server_first(mech.provide_credentials(lookup("SCRAM-SHA-256", "juliet")).data.decode())
    assert isinstance(mech.respond(client.get_client_final().encode()), Success)


@pytest.mark.parametrize("first", [
    b"n,,",
    b"n,n=juliet,r=abc",
    b"x,,n=juliet,r=abc",
    b"n,b=x,n=juliet,r=abc",
    b"n,,m=ext,n=juliet,r=abc",
    b"n,,r=abc,n=juliet",
    b"n,,n=juliet",
    b"n,,n=,r=abc",
    b"n,,n=ju=2Xliet,r=abc",
    b"n,,n=juliet,r=",
    b"n,,n=juliet,r=a\x7fb",
    b"n,,n=juliet,r=abc,bad",
    b"n,,n=\xff,r=abc",
    b"n,a=,n=juliet,r=abc",
])
def test_scram_malformed_client_first(first):
    assert mechanism("SCRAM-SHA-256").start(first).condition == "malformed-request"


def start_scram_as_juliet():
    mech = mechanism("SCRAM-SHA-256")
    mech.start(b"n,,n=juliet,r=abc")
    nonce = mech.provide_credentials(lookup("SCRAM-SHA-256", "juliet")).data.split(b",")[0][2:]
    return mech, nonce


@pytest.mark.parametrize("final", [
    b"c=biws,r={nonce}",
    b"c=biws,r={nonce},p=!!!",
    b"c=b!ws,r={nonce},p=AAAA",
    b"r={nonce},c=biws,p=AAAA",
    b"c=biws,r=other,p=AAAA",
    b"c=biws,r={nonce},1,p=AAAA",
    b"\xff",
])
def test_scram_malformed_client_final(final):
    mech, nonce = start_scram_as_juliet()
    assert mech.respond(final.replace(b"{nonce}", nonce)).condition == "malformed-request"


def test_scram_short_proof_is_not_authorized():
    mech, nonce = start_scram_as_juliet()
    assert mech.respond(b"c=biws,r=" + nonce + b",p=AAAA").condition == "not-authorized"


def run_plain(message, username="juliet"):
    mech = mechanism("PLAIN")
    step = mech.start(message)
    if isinstance(step, Failure):
        return step
    assert step == NeedCredentials(username)
    return mech.provide_credentials(lookup("PLAIN", username))


def test_plain_success_and_authzid():
    assert run_plain(b"\0juliet\0pencil") == Success("juliet", None, None)
    assert run_plain(b"juliet@example.com\0juliet\0pencil") == Success("juliet", "juliet@example.com", None)


def test_plain_password_is_saslprepped_like_the_stored_one():
    creds = derive_credentials("I\u00adX", ITERATIONS)["SCRAM-SHA-256"]  # soft hyphen maps to nothing
    mech = mechanism("PLAIN")
    mech.start(b"\0juliet\0IX")
    assert isinstance(mech.provide_credentials(creds), Success)


def test_plain_checks_sha1_keys_of_an_account_that_has_only_those():
    """Accounts imported from Prosody (xmppctl import) have SCRAM-SHA-1 keys only; the c2s layer then passes
    those, and PLAIN must check the password against them with SHA-1."""
    sha1 = USERS["juliet"]["SCRAM-SHA-1"]
    mech = mechanism("PLAIN")
    mech.start(b"\0juliet\0pencil")
    assert mech.provide_credentials(sha1) == Success("juliet", None, None)
    mech = mechanism("PLAIN")
    mech.start(b"\0juliet\0pencil!")
    assert mech.provide_credentials(sha1).condition == "not-authorized"


def test_plain_failures():
    wrong = run_plain(b"\0juliet\0pencil!")
    assert wrong.condition == "not-authorized"
    assert run_plain(b"\0romeo\0pencil", "romeo") == wrong  # unknown user: same answer
    assert run_plain("\0juliet\0pen\u0007cil".encode()).condition == "not-authorized"  # SASLprep prohibits
    for malformed in (b"juliet\0pencil", b"\0\0pencil", b"\0juliet\0", b"a\0b\0c\0d", b"\0jul\xffiet\0pencil"):
        assert run_plain(malformed).condition == "malformed-request"


def test_plain_unknown_user_does_the_same_hashing(monkeypatch):
    calls = []
    real = hashlib.pbkdf2_hmac

    def counting(hash_name, password, salt, iterations, *args):
        calls.append((hash_name, len(salt), iterations))
        return real(hash_name, password, salt, iterations, *args)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counting)
    run_plain(b"\0juliet\0wrong")
    known = list(calls)
    calls.clear()
    run_plain(b"\0romeo\0wrong", "romeo")
    assert known == calls and len(calls) == 1


def test_plain_empty_initial_response_means_data_follows():
    mech = mechanism("PLAIN")
    assert mech.start(b"") == Challenge(b"")
    assert mech.respond(b"\0juliet\0pencil") == NeedCredentials("juliet")
    assert isinstance(mech.provide_credentials(lookup("PLAIN", "juliet")), Success)
    mech = mechanism("PLAIN")
    mech.start(None)
    assert mech.respond(b"").condition == "malformed-request"


def test_out_of_order_calls():
    mech = mechanism("SCRAM-SHA-256")
    assert mech.respond(b"n,,n=juliet,r=abc").condition == "malformed-request"  # respond before start
    assert mech.start(b"n,,n=juliet,r=abc").condition == "malformed-request"  # the attempt is over

    mech = mechanism("SCRAM-SHA-256")
    assert mech.provide_credentials(None).condition == "malformed-request"  # credentials before asked

    mech = mechanism("SCRAM-SHA-256")
    mech.start(b"n,,n=juliet,r=abc")
    assert mech.respond(b"c=biws").condition == "malformed-request"  # while the lookup is pending

    mech = mechanism("PLAIN")
    mech.start(b"\0juliet\0pencil")
    assert isinstance(mech.provide_credentials(lookup("PLAIN", "juliet")), Success)
    assert mech.respond(b"").condition == "malformed-request"
    assert mech.provide_credentials(None).condition == "malformed-request"
    assert mech.start(b"\0juliet\0pencil").condition == "malformed-request"

    mech = mechanism("SCRAM-SHA-256")
    mech.start(b"n,,n=juliet,r=abc")
    assert mech.start(b"n,,n=juliet,r=abc").condition == "malformed-request"  # start twice


def test_garbage_never_raises():
    """Whatever the client sends, every call returns a step: no scramp or parser exception escapes."""
    rng = random.Random(6120)
    alphabet = b"npyarmcsiv=,23CD\x00\xff-+/Aa1 "
    for name in ("PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256-PLUS"):
        for _ in range(300):
            mech = mechanism(name, BINDINGS)
            garbage = [bytes(rng.choice(alphabet) for _ in range(rng.randrange(30))) for _ in range(3)]
            steps = [mech.start(garbage[0]), mech.respond(garbage[1]), mech.provide_credentials(
                lookup(name, "juliet")), mech.respond(garbage[2])]
            assert all(isinstance(s, (Challenge, NeedCredentials, Success, Failure)) for s in steps)
            assert not any(isinstance(s, Success) for s in steps)


@pytest.mark.parametrize("name", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_derived_credentials_work_with_scramps_server(name):
    creds = derive_credentials("pencil", ITERATIONS)[name]
    server = ScramMechanism(name).make_server(
        lambda user: (creds.salt, creds.stored_key, creds.server_key, creds.iterations))
    client = ScramClient([name], "juliet", "pencil")
    server.set_client_first(client.get_client_first())
    client.set_server_first(server.get_server_first())
    server.set_client_final(client.get_client_final())
    client.set_server_final(server.get_server_final())


def test_derive_credentials_uses_fresh_salts():
    a, b = derive_credentials("pencil", ITERATIONS), derive_credentials("pencil", ITERATIONS)
    assert set(a) == {"SCRAM-SHA-1", "SCRAM-SHA-256"}
    assert len({a["SCRAM-SHA-1"].salt, a["SCRAM-SHA-256"].salt, b["SCRAM-SHA-256"].salt}) == 3
    assert a["SCRAM-SHA-256"].iterations == ITERATIONS and len(a["SCRAM-SHA-1"].stored_key) == 20
    with pytest.raises(ValueError):
        derive_credentials("pencil", 100)
    with pytest.raises(ValueError):
        derive_credentials("pen\u0007cil", ITERATIONS)


def test_fake_credentials_are_deterministic_and_secret_dependent():
    a = fake_credentials(SECRET, "romeo", "SCRAM-SHA-1", ITERATIONS)
    assert a == fake_credentials(SECRET, "romeo", "SCRAM-SHA-1", ITERATIONS)
    assert a.salt != fake_credentials(b"other", "romeo", "SCRAM-SHA-1", ITERATIONS).salt
    assert a.salt != fake_credentials(SECRET, "romeo", "SCRAM-SHA-256", ITERATIONS).salt
    assert len(a.stored_key) == 20 and a.iterations == ITERATIONS
    with pytest.raises(ValueError):
        fake_credentials(SECRET, "romeo", "PLAIN", ITERATIONS)


def test_available_mechanisms():
    everything = ["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"]
    assert available_mechanisms(everything, plain_allowed=True, channel_binding_types=["tls-exporter"]) == [
        "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
    assert available_mechanisms(everything, plain_allowed=False, channel_binding_types=[]) == [
        "SCRAM-SHA-256", "SCRAM-SHA-1"]
    assert available_mechanisms(["SCRAM-SHA-256", "PLAIN"], plain_allowed=True,
                                channel_binding_types=["tls-server-end-point"]) == [
        "SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "PLAIN"]
    with pytest.raises(ValueError):
        available_mechanisms(["DIGEST-MD5"], plain_allowed=True, channel_binding_types=[])
    with pytest.raises(ValueError):
        available_mechanisms(["PLAIN"], plain_allowed=True, channel_binding_types=["tls-unique"])


def test_create_mechanism_validates():
    assert mechanism("SCRAM-SHA-1-PLUS", BINDINGS).name == "SCRAM-SHA-1-PLUS"
    assert mechanism("PLAIN").name == "PLAIN"
    for bad in ("DIGEST-MD5", "PLAIN-PLUS", "SCRAM-SHA-512", "scram-sha-1"):
        with pytest.raises(ValueError):
            mechanism(bad)
    with pytest.raises(ValueError):
        mechanism("SCRAM-SHA-256-PLUS")  # no binding data for this connection
    with pytest.raises(ValueError):
        mechanism("SCRAM-SHA-256-PLUS", {"tls-exporter": b""})
    with pytest.raises(ValueError):
        create_mechanism("PLAIN", fake_secret=b"", iterations=ITERATIONS)
