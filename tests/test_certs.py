import os
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL, crypto

from xmppd.certs import ID_ON_XMPPADDR, certificate_summary, generate_self_signed


@pytest.fixture
def pair(tmp_path):
    cert = tmp_path / "certs" / "example.org.crt"
    key = tmp_path / "private" / "example.org.key"
    generate_self_signed("example.org", str(cert), str(key), extra_names=["xmpp.example.net", "127.0.0.1"])
    return cert, key


def test_files_and_modes(pair):
    cert, key = pair
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cert).st_mode) == 0o644
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert not [p for p in key.parent.iterdir() if p.name.startswith(".tmp-")]


def test_loads_in_pyopenssl_and_key_matches(pair):
    cert, key = pair
    loaded = crypto.load_certificate(crypto.FILETYPE_PEM, cert.read_bytes())
    assert loaded.to_cryptography().subject.rfc4514_string() == "CN=example.org"
    assert crypto.load_privatekey(crypto.FILETYPE_PEM, key.read_bytes()).type() == crypto.TYPE_EC
    context = SSL.Context(SSL.TLS_METHOD)
    context.use_certificate_file(str(cert))
    context.use_privatekey_file(str(key))
    context.check_privatekey()  # raises if they do not belong together


def test_names_and_extensions(pair):
    cert, _ = pair
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    assert isinstance(parsed.public_key(), ec.EllipticCurvePublicKey)
    assert parsed.public_key().curve.name == "secp256r1"
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["example.org", "*.example.org", "xmpp.example.net"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    xmpp_addrs = [o.value for o in san.get_values_for_type(x509.OtherName) if o.type_id == ID_ON_XMPPADDR]
    assert xmpp_addrs == [b"\x0c\x0bexample.org"]
    assert parsed.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    lifetime = parsed.not_valid_after_utc - parsed.not_valid_before_utc
    assert 3649 < lifetime.days <= 3650


def _handshake(cert, key, server_hostname):
    """TLS over a loopback socketpair; returns the server's view of the result or raises."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(cert), str(key))
    client_ctx = ssl.create_default_context(cafile=str(cert))
    assert client_ctx.check_hostname and client_ctx.verify_mode == ssl.CERT_REQUIRED
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    server_result = {}

    def serve():
        try:
            with server_ctx.wrap_socket(b, server_side=True) as tls:
                server_result["data"] = tls.recv(5)
                tls.sendall(b"pong!")
        except (ssl.SSLError, OSError) as exc:
            server_result["error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(a, server_hostname=server_hostname) as tls:
            tls.sendall(b"ping!")
            assert tls.recv(5) == b"pong!"
            version = tls.version()
    finally:
        a.close()
        thread.join(10)
        b.close()
    assert server_result == {"data": b"ping!"}
    return version


@pytest.mark.parametrize("name", ["example.org", "conference.example.org", "xmpp.example.net", "127.0.0.1"])
def test_tls_handshake_matches_san(pair, name):
    cert, key = pair
    assert _handshake(cert, key, name) in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("name", ["example.com", "a.b.example.org"])
def test_tls_handshake_rejects_other_names(pair, name):
    cert, key = pair
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(cert, key, name)


def test_refuses_to_overwrite(pair):
    cert, key = pair
    before = (cert.read_bytes(), key.read_bytes())
    with pytest.raises(FileExistsError):
        generate_self_signed("example.org", str(cert), str(key))
    with pytest.raises(FileExistsError):
        generate_self_signed("example.org", str(cert.with_name("new.crt")), str(key))
    assert not cert.with_name("new.crt").exists()
    assert (cert.read_bytes(), key.read_bytes()) == before
    generate_self_signed("example.org", str(cert), str(key), overwrite=True)
    assert cert.read_bytes() != before[0] and key.read_bytes() != before[1]
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600


def test_idn_domain(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    generate_self_signed("münchen.example", str(cert), str(key), days=30)
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        "xn--mnchen-3ya.example",
        "*.xn--mnchen-3ya.example",
    ]
    summary = certificate_summary(str(cert))
    assert "xmpp:münchen.example" in summary
    assert _handshake(cert, key, "xn--mnchen-3ya.example")


def test_summary(pair):
    cert, _ = pair
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    summary = certificate_summary(str(cert))
    assert summary.startswith("subject=CN=example.org names=example.org,*.example.org,xmpp.example.net,")
    assert "127.0.0.1" in summary and "xmpp:example.org" in summary
    assert f"not_after={parsed.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}" in summary
    assert "sha256=" in summary
    assert "\n" not in summary
