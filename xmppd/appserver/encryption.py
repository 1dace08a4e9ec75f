"""Encrypted push payloads: AES-GCM with a key the client chose, and the real authentication tag.

A push travels through the app server's operator, then Apple or Google. A client that
wants none of them to read who wrote or what was written gives the app server a
symmetric key when it enables push; the push then carries only ciphertext.

The convention is Tigase's (https://xeps.tigase.net/docs/push-notifications/encrypt/),
used by Siskin IM and Snikket iOS, where the client adds to its XEP-0357 <enable/>::

    <encrypt xmlns='tigase:push:encrypt:0' alg='aes-128-gcm'>BASE64 KEY</encrypt>

xmppd's app server reads the key from the publish-options form the XMPP server copies
into every publish (XEP-0357 §5), in two fields named after that element:

    <field var='encrypt-alg'><value>aes-128-gcm</value></field>     (or aes-256-gcm)
    <field var='encrypt-key'><value>BASE64 KEY (16 or 32 bytes)</value></field>

(``key_from_fields()`` reads them; an XMPP server that receives Tigase's <encrypt/>
element in <enable/> can copy it into these two fields.)

What the app receives, next to its unencrypted ``account`` field:

``iv``          base64 of the 12 random bytes used as the GCM nonce (a new one per push)
``encrypted``   base64 of ciphertext || tag, the tag being the full 16-byte GCM tag

The plaintext is the UTF-8 JSON object of providers.encrypted_fields(). To read it:
split the decoded ``encrypted`` into ciphertext (all but the last 16 bytes) and tag (the
last 16), and open it with AES-GCM, the key, the iv, and no associated data. Any change
to the ciphertext, the tag or the iv makes opening fail, as it must.

Prosody's mod_cloud_notify_encrypted (without util.crypto) appends sixteen zero bytes
instead of the tag, and Siskin does not check it, so a payload there can be altered
unnoticed. Here the tag is real; a client that checks it (as every client should) works
with both, because the layout is the same.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "NS_ENCRYPT", "ALGORITHMS", "FIELD_ALG", "FIELD_KEY", "IV_BYTES", "TAG_BYTES",
    "encrypt_payload", "decrypt_payload", "parse_key", "key_from_fields",
]

NS_ENCRYPT = "tigase:push:encrypt:0"
ALGORITHMS = {"aes-128-gcm": 16, "aes-256-gcm": 32}   # name → key length in bytes
FIELD_ALG = "encrypt-alg"
FIELD_KEY = "encrypt-key"
IV_BYTES = 12
TAG_BYTES = 16


def encrypt_payload(key: bytes, payload: dict[str, Any]) -> dict[str, str]:
    """{"encrypted": base64(ciphertext || tag), "iv": base64(iv)} for the JSON of payload."""
    _check_key(key)
    plaintext = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    iv = os.urandom(IV_BYTES)
    sealed = AESGCM(key).encrypt(iv, plaintext, None)   # ciphertext followed by the 16-byte tag
    return {"encrypted": base64.b64encode(sealed).decode("ascii"), "iv": base64.b64encode(iv).decode("ascii")}


def decrypt_payload(key: bytes, fields: Mapping[str, str]) -> dict[str, Any]:
    """What an app does with a push: open ``encrypted`` with ``iv`` (raises InvalidTag if altered)."""
    _check_key(key)
    sealed = base64.b64decode(fields["encrypted"], validate=True)
    iv = base64.b64decode(fields["iv"], validate=True)
    return json.loads(AESGCM(key).decrypt(iv, sealed, None).decode("utf-8"))


def parse_key(algorithm: str, key_base64: str) -> bytes:
    """The raw key for a Tigase-style (alg, base64 key) pair; ValueError if either is unusable."""
    expected = ALGORITHMS.get(algorithm.strip().lower())
    if expected is None:
        raise ValueError(f"unsupported push encryption algorithm {algorithm!r} "
                         f"(supported: {', '.join(ALGORITHMS)})")
    try:
        key = base64.b64decode("".join(key_base64.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the push encryption key is not valid base64") from None
    if len(key) != expected:
        raise ValueError(f"{algorithm} needs a {expected}-byte key, got {len(key)} bytes")
    return key


def key_from_fields(fields: Mapping[str, str]) -> bytes | None:
    """The key from publish-options fields (encrypt-alg, encrypt-key); None if the client gave none.

    A key field without an algorithm means aes-128-gcm (the only one Tigase defines).
    Raises ValueError for an unsupported algorithm or a malformed key, so that the app
    server can refuse the publish (<bad-request/>) rather than push in clear.
    """
    key = fields.get(FIELD_KEY)
    if not key:
        return None
    return parse_key(fields.get(FIELD_ALG) or "aes-128-gcm", key)


def _check_key(key: bytes) -> None:
    if len(key) not in ALGORITHMS.values():
        raise ValueError(f"an AES-GCM push key has 16 or 32 bytes, not {len(key)}")
