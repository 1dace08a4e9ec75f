"""TLS for client connections: certificates from PEM files, and channel-binding data.

The certificate chain is read once at start (and again on reload); the data
for SCRAM -PLUS channel binding (RFC 5929 tls-server-end-point, RFC 9266
tls-exporter) is derived here so the SASL code never touches OpenSSL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

log = logging.getLogger("xmppd.tls")


class TLSError(Exception):
    """A certificate or key that cannot be used; the message names the file."""


@dataclass
class TLSSettings:
    context_factory: ssl.CertificateOptions
    server_end_point: bytes   # RFC 5929 §4.1: hash of our certificate

    @classmethod
    def load(cls, certificate_path: str, key_path: str) -> "TLSSettings":
        try:
            with open(certificate_path, "rb") as f:
                chain_pem = f.read()
        except OSError as error:
            raise TLSError(f"cannot read certificate {certificate_path}: {error.strerror}") from None
        try:
            with open(key_path, "rb") as f:
                key_pem = f.read()
        except OSError as error:
            raise TLSError(f"cannot read private key {key_path}: {error.strerror}") from None
        try:
            chain = x509.load_pem_x509_certificates(chain_pem)
        except ValueError as error:
            raise TLSError(f"{certificate_path} holds no usable PEM certificate: {error}") from None
        try:
            key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
        except crypto.Error as error:
            raise TLSError(f"{key_path} holds no usable PEM private key: {error}") from None
        leaf = crypto.X509.from_cryptography(chain[0])
        extra = [crypto.X509.from_cryptography(c) for c in chain[1:]]
        try:
            options = ssl.CertificateOptions(
                privateKey=key, certificate=leaf, extraCertChain=extra,
                raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
            # Built now so a key that does not match fails at start, not at the first client. No
            # client-initiated renegotiation (TLS 1.2): it costs us CPU and gains the client nothing.
            options.getContext().set_options(SSL.OP_NO_RENEGOTIATION)
        except SSL.Error as error:
            raise TLSError(f"{key_path} does not match {certificate_path}: {error}") from None
        return cls(options, _end_point_hash(chain[0]))

    def channel_bindings(self, transport) -> dict[str, bytes]:
        """The binding types usable on this connection and their data (empty when TLS is not up)."""
        connection = _ssl_connection(transport)
        if connection is None:
            return {}
        bindings = {"tls-server-end-point": self.server_end_point}
        # RFC 9266: tls-exporter is defined for TLS 1.3 (1.2 would need extended master secret).
        if connection.get_protocol_version_name() == "TLSv1.3":
            bindings["tls-exporter"] = connection.export_keying_material(b"EXPORTER-Channel-Binding", 32)
        return bindings


@implementer(IOpenSSLContextFactory)
class CurrentCertificate:
    """The context factory a direct TLS listener keeps for its lifetime: each new connection gets the
    context of `settings`, which a reload replaces (connections already open keep theirs)."""

    def __init__(self, settings: TLSSettings) -> None:
        self.settings = settings

    def getContext(self) -> SSL.Context:
        return self.settings.context_factory.getContext()


def _ssl_connection(transport) -> SSL.Connection | None:
    get_handle = getattr(transport, "getHandle", None)
    handle = get_handle() if get_handle else None
    if isinstance(handle, SSL.Connection) and handle.get_protocol_version_name() not in ("", "Unknown"):
        return handle
    return None


def _end_point_hash(certificate: x509.Certificate) -> bytes:
    """RFC 5929 §4.1: the certificate's signature hash, with MD5 and SHA-1 replaced by SHA-256."""
    algorithm = certificate.signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate.public_bytes(Encoding.DER))
    return digest.finalize()
