"""Self-signed certificates for a fresh install, and a one-line summary for the log.

The key is ECDSA P-256: every TLS stack an XMPP client or server uses today accepts it,
it is generated instantly, and its handshakes are cheaper and smaller than RSA-2048's
(that matters for phones that reconnect often). The certificate names the domain and
*.domain (so conference., upload., push. are covered) as DNS-IDs, plus the domain as
XmppAddr (RFC 6120 §13.7.1.4) for peers that check that.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence

import idna
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from xmppd.files import replaced_atomically
from xmppd.jid import normalize_domain

__all__ = ["generate_self_signed", "certificate_summary"]

ID_ON_XMPPADDR = ObjectIdentifier("1.3.6.1.5.5.7.8.5")  # RFC 6120 §13.7.1.4


def generate_self_signed(
    domain: str,
    cert_path: str,
    key_path: str,
    *,
    days: int = 3650,
    extra_names: Sequence[str] = (),
    overwrite: bool = False,
) -> None:
    """Write a new key (mode 0600) and self-signed certificate (0644) for domain.

    Refuses (FileExistsError) to replace existing files unless overwrite=True, so that a
    repeated setup step never throws away a certificate peers may have pinned.
    """
    if days <= 0:
        raise ValueError("days must be positive")
    if not overwrite:
        for path in (cert_path, key_path):
            if os.path.exists(path):
                raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")

    key = ec.generate_private_key(ec.SECP256R1())
    names = [domain] if _ip(domain) else [domain, f"*.{domain}"]
    names += [name for name in extra_names if name not in names]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _ascii(domain))])
    now = datetime.datetime.now(datetime.timezone.utc)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate peers' clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_general_names(domain, names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        # clientAuth too: on server-to-server links this server is also the TLS client.
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(key_path, key_pem, 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def certificate_summary(cert_path: str) -> str:
    """One log line: subject, names, expiry and SHA-256 fingerprint of the first PEM cert."""
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = []
    else:
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        names += [str(n) for n in san.get_values_for_type(x509.IPAddress)]
        names += [
            "xmpp:" + _der_utf8_decode(other.value)
            for other in san.get_values_for_type(x509.OtherName)
            if other.type_id == ID_ON_XMPPADDR
        ]
    expires = cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    return (
        f"subject={cert.subject.rfc4514_string()} names={','.join(names) or '-'} "
        f"not_after={expires} sha256={fingerprint}"
    )


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None


def _ascii(name: str) -> str:
    """DNS names go into certificates as A-labels (RFC 5280 §7.2)."""
    if name.isascii():
        return name
    wildcard = name.startswith("*.")
    encoded = idna.encode(name[2:] if wildcard else name, uts46=True).decode("ascii")
    return f"*.{encoded}" if wildcard else encoded


def _general_names(domain: str, names: Sequence[str]) -> list[x509.GeneralName]:
    general: list[x509.GeneralName] = []
    for name in names:
        address = _ip(name)
        general.append(x509.IPAddress(address) if address else x509.DNSName(_ascii(name)))
    if not _ip(domain):
        general.append(x509.OtherName(ID_ON_XMPPADDR, _der_utf8(normalize_domain(domain))))
    return general


def _der_utf8(text: str) -> bytes:
    """DER UTF8String, the XmppAddr value type (RFC 6120 §13.7.1.4)."""
    data = text.encode("utf-8")
    if len(data) < 0x80:
        length = bytes([len(data)])
    else:
        size = (len(data).bit_length() + 7) // 8
        length = bytes([0x80 | size]) + len(data).to_bytes(size, "big")
    return b"\x0c" + length + data


def _der_utf8_decode(der: bytes) -> str:
    if len(der) < 2 or der[0] != 0x0C:
        return der.hex()
    if der[1] < 0x80:
        return der[2:2 + der[1]].decode("utf-8", "replace")
    size = der[1] & 0x7F
    return der[2 + size:].decode("utf-8", "replace")


def _write(path: str, data: bytes, mode: int) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a key behind."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with replaced_atomically(path, mode) as out:
        out.write(data)
