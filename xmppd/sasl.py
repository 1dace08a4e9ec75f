"""SASL mechanisms for client logins (RFC 6120 §6), without I/O.

A mechanism is a small state machine: the c2s stream feeds it the decoded
payloads of <auth> and <response> and gets back a step to act on. Looking up
credentials is the caller's (asynchronous) job, so a mechanism asks for them
with NeedCredentials and continues in provide_credentials.

SCRAM (RFC 5802, RFC 7677) with channel binding (RFC 5056; tls-exporter of
RFC 9266, tls-server-end-point of RFC 5929) and PLAIN (RFC 4616). Password
hashing and SASLprep come from scramp; the SCRAM exchange itself is done
here because scramp's server accepts neither an authzid in the GS2 header
nor tls-exporter, both of which XMPP clients use.

An unknown username is never revealed: it gets deterministic fake
credentials, the same message shapes and the same hashing work, and fails
where a wrong password fails.
"""

from __future__ import annotations

import abc
import base64
import binascii
import hashlib
import hmac
import secrets
import unicodedata
from dataclasses import dataclass
from enum import Enum, auto

from scramp import ScramException, ScramMechanism

from xmppd.storage.models import SCRAM_MECHANISMS, ScramCredentials

CHANNEL_BINDING_TYPES = ("tls-exporter", "tls-server-end-point")
PLUS_SUFFIX = "-PLUS"
# RFC 7677 §4: at least 4096; scramp's clients refuse fewer.
MIN_ITERATIONS = 4096
SALT_LENGTH = 16

# Strongest first; the order available_mechanisms offers them in.
_SCRAM_BY_STRENGTH = ("SCRAM-SHA-256", "SCRAM-SHA-1")
_HASHES = {"SCRAM-SHA-1": hashlib.sha1, "SCRAM-SHA-256": hashlib.sha256}
_BASE_MECHANISMS = frozenset((*SCRAM_MECHANISMS, "PLAIN"))
# The same words for an unknown user and a wrong password.
_NOT_AUTHORIZED_TEXT = "Invalid username or password"


def derive_credentials(password: str, iterations: int) -> dict[str, ScramCredentials]:
    """Both SCRAM-SHA-1 and SCRAM-SHA-256 keys (SASLprep'd password, fresh random salt each). Called once per
    password change; the password is never stored.

    Raises ValueError for a password SASLprep prohibits or an iteration count out of range.
    """
    credentials = {}
    for mechanism in SCRAM_MECHANISMS:
        try:
            salt, stored_key, server_key, count = ScramMechanism(mechanism).make_auth_info(
                password, iteration_count=iterations, salt=secrets.token_bytes(SALT_LENGTH)
            )
        except ScramException as e:
            raise ValueError(f"cannot derive {mechanism} credentials: {e}") from e
        credentials[mechanism] = ScramCredentials(salt, count, stored_key, server_key)
    return credentials


def fake_credentials(secret: bytes, username: str, mechanism: str, iterations: int) -> ScramCredentials:
    """Deterministic credentials for a user that does not exist (salt = HMAC(secret, mechanism+username)), so an
    unknown user gets a normal-looking server-first message and fails only at the proof: no oracle.

    The username is NFKC-normalized and case-folded first: spellings that name one real account share its
    one salt, so spellings of an unknown name must share one too. The keys are random-looking, not derived
    from any password, so no proof can match them.
    """
    if mechanism not in _HASHES:
        raise ValueError(f"not a SCRAM mechanism with stored credentials: {mechanism!r}")
    folded = unicodedata.normalize("NFKC", username).casefold()
    message = mechanism.encode() + b"\0" + folded.encode("utf-8", "surrogatepass")
    digest_size = _HASHES[mechanism]().digest_size

    def derive(label: bytes) -> bytes:
        return hmac.new(secret, label + b"\0" + message, hashlib.sha256).digest()

    return ScramCredentials(
        salt=derive(b"salt")[:SALT_LENGTH],
        iterations=iterations,
        stored_key=derive(b"stored-key")[:digest_size],
        server_key=derive(b"server-key")[:digest_size],
    )


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send <challenge> with this data."""

    data: bytes


@dataclass(frozen=True, slots=True)
class NeedCredentials:
    """Look up the stored credentials of `username`, then call provide_credentials (None if unknown)."""

    username: str


@dataclass(frozen=True, slots=True)
class Success:
    """Authenticated as `username`; the caller still checks `authzid` and sends <success> with additional_data."""

    username: str
    authzid: str | None
    additional_data: bytes | None


@dataclass(frozen=True, slots=True)
class Failure:
    """Send <failure> with this RFC 6120 §6.5 condition; the attempt is over."""

    condition: str
    text: str = ""


class _State(Enum):
    START = auto()
    AWAIT_FIRST = auto()  # an empty challenge was sent; the first message comes in a <response>
    AWAIT_CREDENTIALS = auto()
    AWAIT_FINAL = auto()  # SCRAM: server-first was sent
    DONE = auto()


class _Malformed(Exception):
    """Raised by parsers; becomes Failure('malformed-request') at the public boundary."""


class Mechanism(abc.ABC):
    """One authentication attempt. Calls out of order end it with Failure('malformed-request')."""

    name: str

    def __init__(self) -> None:
        self._state = _State.START

    def start(self, initial_response: bytes | None) -> Challenge | NeedCredentials | Failure:
        """Handle <auth>; an absent or empty initial response gets an empty challenge (RFC 6120 §6.4.2)."""
        if self._state is not _State.START:
            return self._out_of_order()
        if not initial_response:
            self._state = _State.AWAIT_FIRST
            return Challenge(b"")
        return self._first(initial_response)

    def respond(self, data: bytes) -> Challenge | NeedCredentials | Success | Failure:
        """Handle a <response>."""
        if self._state is not _State.AWAIT_FIRST:
            return self._out_of_order()
        if not data:
            return self._finish(Failure("malformed-request", "Empty response"))
        return self._first(data)

    def provide_credentials(self, credentials: ScramCredentials | None) -> Challenge | Success | Failure:
        """Continue after NeedCredentials with the user's stored credentials, or None for an unknown user."""
        if self._state is not _State.AWAIT_CREDENTIALS:
            return self._out_of_order()
        step = self._guarded(self._verify, credentials)
        if isinstance(step, Challenge):
            self._state = _State.AWAIT_FINAL
            return step
        return self._finish(step)

    @abc.abstractmethod
    def _client_first(self, data: bytes) -> NeedCredentials | Failure:
        """Parse the client's first message; may raise _Malformed."""

    @abc.abstractmethod
    def _verify(self, credentials: ScramCredentials | None) -> Challenge | Success | Failure:
        """Check (or challenge) against the credentials; may raise _Malformed or ScramException."""

    def _first(self, data: bytes) -> NeedCredentials | Failure:
        step = self._guarded(self._client_first, data)
        if isinstance(step, NeedCredentials):
            self._state = _State.AWAIT_CREDENTIALS
            return step
        return self._finish(step)

    def _guarded(self, handler, argument):
        """scramp raises only over the password or the stored credentials (SASLprep, salt, iteration count):
        for the client that is a refusal like any other."""
        try:
            return handler(argument)
        except _Malformed as e:
            return Failure("malformed-request", str(e))
        except ScramException:
            return Failure("not-authorized", _NOT_AUTHORIZED_TEXT)

    def _finish(self, step: Success | Failure) -> Success | Failure:
        self._state = _State.DONE
        return step

    def _out_of_order(self) -> Failure:
        return self._finish(Failure("malformed-request", "Unexpected SASL step"))


def _decode_utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("Not UTF-8") from None


class _Plain(Mechanism):
    """RFC 4616. Verified against the SCRAM-SHA-256 credentials (or the SCRAM-SHA-1 ones of an account that
    has only those: imported from Prosody) by deriving the StoredKey from the offered password with the
    stored salt and iteration count."""

    name = "PLAIN"

    def __init__(self, fake_secret: bytes, iterations: int) -> None:
        super().__init__()
        self._fake_secret = fake_secret
        self._iterations = iterations

    def _client_first(self, data: bytes) -> NeedCredentials:
        fields = _decode_utf8(data).split("\0")
        if len(fields) != 3:
            raise _Malformed("Expected [authzid] NUL authcid NUL password")
        authzid, self._authcid, self._password = fields
        if not self._authcid or not self._password:
            raise _Malformed("Empty username or password")
        self._authzid = authzid or None
        return NeedCredentials(self._authcid)

    def _verify(self, credentials: ScramCredentials | None) -> Success | Failure:
        exists = credentials is not None
        if credentials is None:
            # Same PBKDF2 work as for a real user, so timing does not tell them apart.
            credentials = fake_credentials(self._fake_secret, self._authcid, "SCRAM-SHA-256", self._iterations)
        password, self._password = self._password, None
        _, stored_key, _, _ = ScramMechanism(_mechanism_of(credentials)).make_auth_info(
            password, iteration_count=credentials.iterations, salt=credentials.salt
        )
        if hmac.compare_digest(stored_key, credentials.stored_key) and exists:
            return Success(self._authcid, self._authzid, None)
        return Failure("not-authorized", _NOT_AUTHORIZED_TEXT)


def _mechanism_of(credentials: ScramCredentials) -> str:
    """The SCRAM hash the keys were made with: a StoredKey is one digest long (20 bytes SHA-1, 32 SHA-256)."""
    return "SCRAM-SHA-1" if len(credentials.stored_key) == hashlib.sha1().digest_size else "SCRAM-SHA-256"


def _decode_saslname(value: str) -> str:
    """RFC 5802 §7 saslname: non-empty, ',' and '=' escaped as =2C and =3D."""
    if not value or "\0" in value:
        raise _Malformed("Empty or invalid name")
    parts = value.split("=")
    for part in parts[1:]:
        if not part.startswith(("2C", "3D")):
            raise _Malformed("'=' in a name must start =2C or =3D")
    return parts[0] + "".join(("," if part[:2] == "2C" else "=") + part[2:] for part in parts[1:])


def _attribute(item: str, key: str) -> str:
    if not item.startswith(key + "="):
        raise _Malformed(f"Expected attribute {key!r}")
    return item[2:]


def _check_extensions(items: list[str]) -> None:
    """Optional extensions (RFC 5802 §7) are ignored but must be well-formed attr=value pairs."""
    for item in items:
        if len(item) < 2 or not (item[0].isascii() and item[0].isalpha()) or item[1] != "=":
            raise _Malformed("Malformed attribute")


def _check_nonce(nonce: str) -> str:
    if not nonce or any(not 0x21 <= ord(c) <= 0x7E for c in nonce):
        raise _Malformed("Invalid nonce")
    return nonce


def _b64decode(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _Malformed("Invalid base64") from None


class _Scram(Mechanism):
    """RFC 5802 server side; the -PLUS variants require channel binding (GS2 flag 'p')."""

    def __init__(self, name: str, fake_secret: bytes, iterations: int, channel_bindings: dict[str, bytes]) -> None:
        super().__init__()
        self.name = name
        self._base = name.removesuffix(PLUS_SUFFIX)
        self._hash = _HASHES[self._base]
        self._plus = name.endswith(PLUS_SUFFIX)
        self._fake_secret = fake_secret
        self._iterations = iterations
        self._channel_bindings = channel_bindings

    def respond(self, data: bytes) -> Challenge | NeedCredentials | Success | Failure:
        """Handle a <response>: the client-final message once server-first has been sent."""
        if self._state is _State.AWAIT_FINAL:
            return self._finish(self._guarded(self._client_final, data))
        return super().respond(data)

    def _client_first(self, data: bytes) -> NeedCredentials | Failure:
        message = _decode_utf8(data)
        fields = message.split(",", 2)
        if len(fields) != 3:
            raise _Malformed("Expected a GS2 header and client-first-message-bare")
        flag, authzid, bare = fields
        failure = self._check_binding_flag(flag)
        if failure:
            return failure
        self._authzid = _decode_saslname(_attribute(authzid, "a")) if authzid else None
        self._gs2_header = f"{flag},{authzid},".encode()

        items = bare.split(",")
        if items[0].startswith("m="):
            raise _Malformed("Mandatory extensions are not supported")
        if len(items) < 2:
            raise _Malformed("Expected username and nonce")
        self._username = _decode_saslname(_attribute(items[0], "n"))
        client_nonce = _check_nonce(_attribute(items[1], "r"))
        _check_extensions(items[2:])
        self._client_first_bare = bare
        self._nonce = client_nonce + secrets.token_urlsafe(18)
        return NeedCredentials(self._username)

    def _check_binding_flag(self, flag: str) -> Failure | None:
        """RFC 5802 §6: 'p' selects a binding type for -PLUS; 'y' while we offer -PLUS means a downgrade."""
        if flag.startswith("p="):
            binding_type = flag[2:]
            if not self._plus:
                raise _Malformed("Channel binding requested with a mechanism without -PLUS")
            if binding_type not in self._channel_bindings:
                raise _Malformed(f"Unsupported channel binding type {binding_type!r}")
            self._binding_data = self._channel_bindings[binding_type]
            return None
        if flag not in ("n", "y"):
            raise _Malformed("Invalid GS2 channel binding flag")
        if self._plus:
            raise _Malformed(f"{self.name} requires channel binding")
        if flag == "y" and self._channel_bindings:
            return Failure("not-authorized", "Channel binding was offered; possible downgrade attack")
        self._binding_data = b""
        return None

    def _verify(self, credentials: ScramCredentials | None) -> Challenge:
        self._user_exists = credentials is not None
        if credentials is None:
            credentials = fake_credentials(self._fake_secret, self._username, self._base, self._iterations)
        self._credentials = credentials
        salt = base64.b64encode(credentials.salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={credentials.iterations}"
        return Challenge(self._server_first.encode())

    def _client_final(self, data: bytes) -> Success | Failure:
        message = _decode_utf8(data)
        without_proof, separator, proof_b64 = message.rpartition(",p=")
        if not separator:
            raise _Malformed("Missing proof")
        items = without_proof.split(",")
        if len(items) < 2:
            raise _Malformed("Expected channel binding and nonce")
        binding = _b64decode(_attribute(items[0], "c"))
        nonce = _attribute(items[1], "r")
        _check_extensions(items[2:])
        proof = _b64decode(proof_b64)
        if nonce != self._nonce:
            raise _Malformed("Nonce mismatch")
        if not hmac.compare_digest(binding, self._gs2_header + self._binding_data):
            return Failure("not-authorized", "Channel binding mismatch")

        auth_message = ",".join((self._client_first_bare, self._server_first, without_proof)).encode()
        credentials = self._credentials
        client_signature = hmac.new(credentials.stored_key, auth_message, self._hash).digest()
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature))
        proof_ok = len(proof) == len(client_signature) and hmac.compare_digest(
            self._hash(client_key).digest(), credentials.stored_key
        )
        if not (proof_ok and self._user_exists):
            return Failure("not-authorized", _NOT_AUTHORIZED_TEXT)
        server_signature = hmac.new(credentials.server_key, auth_message, self._hash).digest()
        return Success(self._username, self._authzid, b"v=" + base64.b64encode(server_signature))


def available_mechanisms(enabled: list[str], *, plain_allowed: bool,
                         channel_binding_types: list[str]) -> list[str]:
    """Names to offer, strongest first: SCRAM-SHA-256-PLUS, SCRAM-SHA-1-PLUS (only if channel_binding_types
    is non-empty and the base mechanism is enabled), SCRAM-SHA-256, SCRAM-SHA-1, PLAIN (only if plain_allowed:
    inside TLS, or where the operator allows it on plain streams).

    `enabled` lists base names (PLAIN, SCRAM-SHA-1, SCRAM-SHA-256); anything else is a ValueError.
    """
    unknown = set(enabled) - _BASE_MECHANISMS
    if unknown:
        raise ValueError(
            f"unknown SASL mechanisms {sorted(unknown)}; choose from {sorted(_BASE_MECHANISMS)} "
            f"(-PLUS variants are offered automatically when channel binding is available)"
        )
    _check_binding_types(channel_binding_types)
    scram = [name for name in _SCRAM_BY_STRENGTH if name in enabled]
    offered = [name + PLUS_SUFFIX for name in scram] if channel_binding_types else []
    offered += scram
    if plain_allowed and "PLAIN" in enabled:
        offered.append("PLAIN")
    return offered


def _check_binding_types(types) -> None:
    unknown = set(types) - set(CHANNEL_BINDING_TYPES)
    if unknown:
        raise ValueError(f"unsupported channel binding types {sorted(unknown)}; known: {list(CHANNEL_BINDING_TYPES)}")


def create_mechanism(name: str, *, fake_secret: bytes, iterations: int,
                     channel_bindings: dict[str, bytes] | None = None) -> Mechanism:
    """channel_bindings maps a binding type ('tls-exporter', 'tls-server-end-point') to its data for this
    connection; required for -PLUS. Raises ValueError for an unknown name.

    Pass the same bindings whose types available_mechanisms was given: a non-empty mapping means -PLUS was
    offered, so a SCRAM client answering with the GS2 flag 'y' is refused as a downgrade. `iterations` is the
    count fake credentials use; make it the one derive_credentials uses.
    """
    channel_bindings = dict(channel_bindings or {})
    _check_binding_types(channel_bindings)
    if not all(isinstance(data, bytes) and data for data in channel_bindings.values()):
        raise ValueError("channel binding data must be non-empty bytes")
    if not fake_secret:
        raise ValueError("fake_secret must not be empty")
    if not MIN_ITERATIONS <= iterations:
        raise ValueError(f"iterations must be at least {MIN_ITERATIONS} (RFC 7677)")
    if name == "PLAIN":
        return _Plain(fake_secret, iterations)
    if name.removesuffix(PLUS_SUFFIX) not in _HASHES:
        raise ValueError(f"unknown SASL mechanism {name!r}")
    if name.endswith(PLUS_SUFFIX) and not channel_bindings:
        raise ValueError(f"{name} needs channel binding data for this connection")
    return _Scram(name, fake_secret, iterations, channel_bindings)
