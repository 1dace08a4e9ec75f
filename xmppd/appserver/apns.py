"""Apple Push Notification service: HTTP/2 with token-based auth (a .p8 key), through aioapns.

One ``ApnsProvider`` per iOS app (bundle id = ``topic``). It signs one ES256 provider
token (JWT: kid = key id, iss = team id, iat) for all its connections and renews it
every 30 minutes (Apple refuses tokens older than an hour and tokens renewed more often
than every 20 minutes). Connections stay open while used and close after 5 idle minutes.

What the app receives
=====================

Every push carries the fields of providers.event_fields() at the top level of the
payload, beside ``aps``. ``account`` is the registration's collapse id.

kind "message" (push type alert, topic <bundle id>, priority 10, apns-collapse-id =
collapse id, expires after a day unless the notification says otherwise)::

    {"aps": {"alert": {"title": "New message"}, "sound": "default", "mutable-content": 1},
     "kind": "message", "account": "<collapse id>",
     "message-count": 3, "pending-subscription-count": 0}

  With sender and body included by the XMPP server, the alert shows them and the fields
  carry them::

    {"aps": {"alert": {"title": "juliet@capulet.example", "body": "Wherefore art thou, Romeo?"},
             "sound": "default", "mutable-content": 1},
     "kind": "message", "account": "…", "message-count": 1, "pending-subscription-count": 0,
     "sender": "juliet@capulet.example/balcony", "body": "Wherefore art thou, Romeo?"}

  Only subscription requests pending (message-count 0): the title is "New contact
  request". ``mutable-content`` lets a Notification Service Extension fetch the
  messages over XMPP and rewrite the alert before it is shown.

kind "call" (push type voip, topic <bundle id>.voip, priority 10, apns-collapse-id =
collapse id + "-call", expires after 30 s)::

    {"kind": "call", "account": "…", "call-id": "<XEP-0353 id>", "caller": "romeo@montague.example"}

kind "call-ended" (the same, expires after 60 s): the caller withdrew the call
(XEP-0353 <retract/>)::

    {"kind": "call-ended", "account": "…", "call-id": "<XEP-0353 id>", "caller": "romeo@montague.example"}

  PushKit hands both to the app at once (no ``aps``: a VoIP push shows nothing by
  itself). Since iOS 13 the app must report a call to CallKit for *every* VoIP push it
  receives, or iOS stops delivering them: on "call" report the incoming call with
  call-id as its UUID source and caller as its handle; on "call-ended" end that call
  (reason remoteEnded), and if no such call is ringing, report it and end it at once.

Encrypted (the client gave a key, encryption.py): nothing but ``account`` in clear::

    {"aps": {"alert": {"title": "New message"}, "sound": "default", "mutable-content": 1},
     "account": "…", "encrypted": "<base64 ciphertext||tag>", "iv": "<base64 12 bytes>"}

  (a call: the same without ``aps``), the plaintext being providers.encrypted_fields().

APNs answers → Result
=====================
200 → delivered; 410 (Unregistered, ExpiredToken) → unregistered, with Apple's
timestamp; 400 BadDeviceToken or DeviceTokenNotForTopic → unregistered; 429, 5xx, a
reset stream, a refused or broken connection, no answer within ``timeout`` → retry;
403 ExpiredProviderToken → retry with a new token; anything else → rejected.
``send()`` returns within about ``timeout`` seconds whatever APNs does.

Around aioapns 4.0
==================
- It builds its connection pool on the event loop current at construction, so the
  client is created at the first ``send()``, inside the running loop.
- Its protocol matches an error body to a request only if the body arrives in one
  DATA frame with a "reason", waits forever for an answer without one, never returns
  HTTP/2 flow-control credit (after 64 KiB of error bodies a connection stalls), sends
  request bodies ignoring the peer's window (FlowControlError with many pushes in
  flight), and raises InvalidStateError on an answer to a request that was given up.
  ``_Connection`` replaces that part: answers are gathered per stream and settled at the
  end of the stream, whatever they contain; received data is acknowledged; bodies wait
  for window credit; given-up requests are skipped.
- It would open up to 1000 streams before hearing the server's limit. A connection is
  used only once the server's first SETTINGS frame arrived, and a stream the server
  refused (REFUSED_STREAM), or one over a limit lowered later, goes to aioapns' retry.
- A pool that cannot connect tries ``max_connection_attempts`` times one second apart;
  xmppd uses 2, and bounds the whole send with ``timeout`` on top. A request that
  timed out marks its connection as stuck: it is aborted, so the next push opens a
  fresh one.
- Host and port come from a protocol subclass (``APNS_SERVER``/``APNS_PORT``), which is
  also how the tests point it at their fake APNs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from functools import partial
from typing import Any

import jwt
from aioapns import APNs, NotificationRequest, PushType
from aioapns.common import NotificationResult
from aioapns.connection import APNsKeyConnectionPool, APNsTLSClientProtocol, AuthorizationHeaderProvider
from aioapns.exceptions import ConnectionClosed, MaxAttemptsExceeded
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from h2.events import (
    ConnectionTerminated, DataReceived, RemoteSettingsChanged, ResponseReceived, StreamEnded, StreamReset,
    WindowUpdated,
)
from h2.errors import ErrorCodes
from h2.exceptions import H2Error, ProtocolError, TooManyStreamsError
from hpack import Encoder

from .encryption import encrypt_payload
from .providers import Notification, Result, collapse_key, encrypted_fields, event_fields, ttl_for

__all__ = ["ApnsProvider", "client_ssl_context", "PRODUCTION_HOST", "SANDBOX_HOST"]

log = logging.getLogger("xmppd.appserver.apns")
# aioapns logs every refused connection and failed push at ERROR; each push's outcome comes
# back as a Result instead, and the app server logs it once, with the account and the reason.
logging.getLogger("aioapns").setLevel(logging.CRITICAL)

PRODUCTION_HOST = "api.push.apple.com"
SANDBOX_HOST = "api.sandbox.push.apple.com"
APNS_PORT = 443

NEUTRAL_TITLE = "New message"
SUBSCRIPTION_TITLE = "New contact request"
PRIORITY_IMMEDIATE = 10
UNREGISTERED_REASONS = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic"})
SETTINGS_TIMEOUT = 5.0
_HEX_TOKEN = re.compile(r"[0-9A-Fa-f]{16,400}")


def client_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A TLS client context for APNs: the system's CAs (or ca_file, for tests), ALPN h2."""
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    return context


class ApnsProvider:
    """Pushes to one iOS app (bundle id ``topic``) with one .p8 signing key."""

    name = "apns"

    def __init__(self, app_name: str, key_pem: str, key_id: str, team_id: str, topic: str, sandbox: bool, *,
                 host: str | None = None, port: int | None = None, ssl_context: ssl.SSLContext | None = None,
                 timeout: float = 10.0, max_connections: int = 4, max_connection_attempts: int = 2) -> None:
        """key_pem: the text of the .p8 file. host/port/ssl_context: for tests (a fake APNs);
        a given ssl_context gets ALPN h2 set. timeout bounds every send(), connecting included."""
        _check_signing_key(key_pem)
        for label, value in (("key id", key_id), ("team id", team_id), ("topic", topic)):
            if not value:
                raise ValueError(f"APNs app {app_name!r}: the {label} is missing")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.app_name = app_name
        self.topic = topic
        self.sandbox = sandbox
        self.timeout = timeout
        self.host = host or (SANDBOX_HOST if sandbox else PRODUCTION_HOST)
        self.port = port or APNS_PORT
        self._key_pem = key_pem
        self._auth = _ProviderToken(key_pem, key_id, team_id)
        self._ssl_context = ssl_context or client_ssl_context()
        self._ssl_context.set_alpn_protocols(["h2"])   # APNs speaks HTTP/2 only
        self._max_connections = max_connections
        self._max_connection_attempts = max_connection_attempts
        self._protocol_class = type("_Connection", (_Connection,),
                                    {"APNS_SERVER": self.host, "APNS_PORT": self.port})
        self._client: APNs | None = None
        self._closed = False

    async def send(self, notification: Notification) -> Result:
        if self._closed:
            return Result("retry", "the APNs provider is shut down")
        if not _HEX_TOKEN.fullmatch(notification.token):
            return Result("unregistered", "BadDeviceToken (not a hexadecimal APNs token)")
        try:
            request = self.request_for(notification)
        except Exception as error:   # a payload that cannot be built is this push's problem, not APNs'
            log.exception("APNs app %s: cannot build a push", self.app_name)
            return Result("rejected", f"cannot build the push: {error}")
        try:
            async with asyncio.timeout(self.timeout):   # no task per push, unlike wait_for
                answer = await self._apns().send_notification(request)
        except TimeoutError:
            self._abort_stuck_connections()
            return Result("retry", f"no answer from APNs within {self.timeout:g} s")
        except (MaxAttemptsExceeded, ApnsConnectionError, ConnectionClosed, OSError, H2Error) as error:
            detail = f": {error}" if str(error) else ""
            return Result("retry", f"APNs unreachable ({type(error).__name__}{detail})")
        except Exception as error:
            log.exception("APNs app %s: unexpected failure", self.app_name)
            return Result("rejected", f"unexpected failure: {type(error).__name__}: {error}")
        return self._result(answer)

    async def close(self) -> None:
        self._closed = True
        if self._client is not None:
            self._client.pool.close()
            self._client = None

    # -- building the request ------------------------------------------------------------

    def request_for(self, notification: Notification) -> NotificationRequest:
        """The aioapns request for a notification (headers and payload as documented above)."""
        n = notification
        ttl = ttl_for(n)
        if n.kind == "message":
            return NotificationRequest(
                device_token=n.token, message=self.payload_for(n), time_to_live=ttl,
                priority=PRIORITY_IMMEDIATE, collapse_key=collapse_key(n.collapse_id), push_type=PushType.ALERT,
                apns_topic=self.topic,
            )
        return NotificationRequest(
            device_token=n.token, message=self.payload_for(n), time_to_live=ttl,
            priority=PRIORITY_IMMEDIATE, collapse_key=collapse_key(n.collapse_id, "-call"), push_type=PushType.VOIP,
            apns_topic=f"{self.topic}.voip",
        )

    @staticmethod
    def payload_for(notification: Notification) -> dict[str, Any]:
        n = notification
        if n.encryption_key is not None:
            fields: dict[str, Any] = {"account": n.collapse_id, **encrypt_payload(n.encryption_key, encrypted_fields(n))}
        else:
            fields = event_fields(n)
        if n.kind != "message":
            return fields
        alert: dict[str, str] = {"title": NEUTRAL_TITLE}
        if n.encryption_key is None:
            if n.sender:
                alert["title"] = fields["sender"].split("/", 1)[0]
            elif not n.message_count and (n.pending_subscriptions or 0) > 0:
                alert["title"] = SUBSCRIPTION_TITLE
            if n.body:
                alert["body"] = fields["body"]
        return {"aps": {"alert": alert, "sound": "default", "mutable-content": 1}, **fields}

    # -- answers ---------------------------------------------------------------------------

    def _result(self, answer: NotificationResult) -> Result:
        status, reason = str(answer.status), answer.description or ""
        if status == "200":
            return Result("delivered")
        if status == "410":
            stamp = answer.timestamp
            when = stamp / 1000.0 if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) else None
            return Result("unregistered", f"410 {reason or 'Unregistered'}", unregistered_at=when)
        if status == "400" and reason in UNREGISTERED_REASONS:
            return Result("unregistered", f"400 {reason}")
        if status == "429" or status.startswith("5") or status in ("reset", "0"):
            return Result("retry", f"{status} {reason}".strip())
        if status == "403" and reason == "ExpiredProviderToken":
            self._auth.renew()
            return Result("retry", f"403 {reason}")
        return Result("rejected", f"{status} {reason}".strip())

    # -- aioapns ---------------------------------------------------------------------------

    def _apns(self) -> APNs:
        if self._client is None:
            # aioapns binds its pool to the current event loop: build it here, in the running loop.
            client = APNs(key=self._key_pem, key_id=self._auth.key_id, team_id=self._auth.team_id,
                          topic=self.topic, use_sandbox=self.sandbox, ssl_context=self._ssl_context,
                          max_connections=self._max_connections,
                          max_connection_attempts=self._max_connection_attempts, err_func=_quiet)
            client.pool = _Pool(
                protocol_class=self._protocol_class, auth=self._auth, key=self._key_pem,
                key_id=self._auth.key_id, team_id=self._auth.team_id, topic=self.topic,
                max_connections=self._max_connections, max_connection_attempts=self._max_connection_attempts,
                use_sandbox=self.sandbox, ssl_context=self._ssl_context,
            )
            self._client = client
        return self._client

    def _abort_stuck_connections(self) -> None:
        """Abort every connection holding a request that was given up: it stopped answering."""
        if self._client is None:
            return
        for connection in list(self._client.pool.connections):
            if any(future.cancelled() for future in connection.requests.values()):
                log.info("APNs app %s: aborting a connection that stopped answering", self.app_name)
                self._client.pool.discard_connection(connection)   # no new request goes to it
                if connection.transport is not None:
                    connection.transport.abort()


async def _quiet(request: NotificationRequest, result: NotificationResult) -> None:
    """aioapns logs every failed push at ERROR; the app server logs them once, with context."""


def _check_signing_key(key_pem: str) -> None:
    try:
        key = load_pem_private_key(key_pem.encode("ascii") if isinstance(key_pem, str) else key_pem, None)
    except (ValueError, TypeError, UnicodeEncodeError) as error:
        raise ValueError(f"the APNs signing key is not a PEM private key: {error}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("the APNs signing key must be the EC P-256 key of a .p8 file")


class _ProviderToken(AuthorizationHeaderProvider):
    """One provider token (JWT, ES256) shared by all connections of an app, renewed every 30 minutes."""

    LIFETIME = 30 * 60

    def __init__(self, key_pem: str, key_id: str, team_id: str) -> None:
        self.key_pem = key_pem
        self.key_id = key_id
        self.team_id = team_id
        self._issued_at = 0.0
        self._header: str | None = None

    def get_header(self) -> str:
        now = time.time()
        if self._header is None or now - self._issued_at >= self.LIFETIME:
            self._issued_at = int(now)
            token = jwt.encode({"iss": self.team_id, "iat": int(self._issued_at)}, self.key_pem,
                               algorithm="ES256", headers={"kid": self.key_id})
            self._header = f"bearer {token}"
        return self._header

    def renew(self) -> None:
        self._header = None


class _LiteralEncoder(Encoder):
    """HPACK without Huffman coding. h2 never indexes the authorization header, so the provider token
    (a few hundred bytes) would be Huffman-coded in pure Python for every push, as would the token path,
    apns-id and expiration, which change every time: about half of the header work per push, for a few
    dozen bytes saved on the wire. Huffman is optional in HPACK (RFC 7541 §5.2); every decoder takes both."""

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        return super().encode(headers, huffman=False)


class _Connection(APNsTLSClientProtocol):
    """aioapns' HTTP/2 client protocol with the answer handling made robust (see the module docstring)."""

    APNS_SERVER = PRODUCTION_HOST
    APNS_PORT = APNS_PORT
    INACTIVITY_TIME = 300

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn.encoder = _LiteralEncoder()   # before the first request: nothing is encoded yet
        self._statuses: dict[int, str] = {}
        self._bodies: dict[int, bytearray] = {}
        self._outgoing: dict[int, memoryview] = {}   # request bodies waiting for flow-control credit
        self.settings_received = asyncio.Event()   # also set when the connection is lost
        self.lost = False

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        """aioapns' request, with its body sent as HTTP/2 flow control allows (not all at once)."""
        stream_id = await self.free_channels.acquire()
        headers = [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", f"/3/device/{request.device_token}"),
            ("host", self.APNS_SERVER),
            ("apns-id", request.notification_id),
            ("apns-topic", request.apns_topic or self.apns_topic),
        ]
        if request.time_to_live is not None:
            headers.append(("apns-expiration", str(int(time.time()) + request.time_to_live)))
        if request.priority is not None:
            headers.append(("apns-priority", str(request.priority)))
        if request.collapse_key is not None:
            headers.append(("apns-collapse-id", request.collapse_key))
        if request.push_type is not None:
            headers.append(("apns-push-type", request.push_type.value))
        if self.auth_provider:
            headers.append(("authorization", self.auth_provider.get_header()))
        body = json.dumps(request.message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        try:
            self.conn.send_headers(stream_id=stream_id, headers=headers)
        except TooManyStreamsError:
            # the server lowered its stream limit under us: hand the channel back, let the pool retry
            self.free_channels.release()
            raise ConnectionClosed("too many concurrent streams") from None
        future: asyncio.Future[NotificationResult] = self.loop.create_future()
        self.requests[request.notification_id] = future
        self.request_streams[stream_id] = request.notification_id
        self._outgoing[stream_id] = memoryview(body)
        self._send_bodies([stream_id])
        self.flush()
        return await future

    def _send_bodies(self, stream_ids: list[int] | None = None) -> None:
        for stream_id in list(self._outgoing) if stream_ids is None else stream_ids:
            data = self._outgoing.get(stream_id)
            if data is None:
                continue
            try:
                while True:
                    size = min(len(data), self.conn.local_flow_control_window(stream_id),
                               self.conn.max_outbound_frame_size)
                    last = size == len(data)
                    if size <= 0 and not last:
                        break   # the rest when a WINDOW_UPDATE arrives
                    self.conn.send_data(stream_id, data[:size].tobytes(), end_stream=last)
                    data = data[size:]
                    if last:
                        break
            except H2Error:   # the stream is gone (reset, connection closing)
                self._outgoing.pop(stream_id, None)
                continue
            if last:
                self._outgoing.pop(stream_id, None)
            else:
                self._outgoing[stream_id] = data

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as error:
            log.info("APNs connection broken: %s", error)
            if self.transport is not None:
                self.transport.abort()
            return
        for event in events:
            if isinstance(event, ResponseReceived):
                headers = dict(event.headers)
                self._statuses[event.stream_id] = headers.get(b":status", b"").decode("ascii", "replace")
            elif isinstance(event, DataReceived):
                self._bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                self._settle(event.stream_id)
            elif isinstance(event, StreamReset):
                refused = event.error_code == ErrorCodes.REFUSED_STREAM
                self._settle(event.stream_id, reset=True, refused=refused)
            elif isinstance(event, RemoteSettingsChanged):
                self.on_remote_settings_changed(event.changed_settings)
                self.settings_received.set()
                self._send_bodies()
            elif isinstance(event, WindowUpdated):
                self._send_bodies()
            elif isinstance(event, ConnectionTerminated):
                log.info("APNs closed the connection (GOAWAY %s %r)", event.error_code, event.additional_data)
                self.close()
        if self.transport is not None and not self.transport.is_closing():
            self.flush()

    def _settle(self, stream_id: int, reset: bool = False, refused: bool = False) -> None:
        self._outgoing.pop(stream_id, None)
        status = self._statuses.pop(stream_id, "") or ("reset" if reset else "0")
        body = bytes(self._bodies.pop(stream_id, b""))
        self.free_channels.release()
        notification_id = self.request_streams.pop(stream_id, None)
        future = self.requests.pop(notification_id, None) if notification_id is not None else None
        if future is None or future.done():
            return   # given up by its sender (timeout), or unknown
        if refused:
            # REFUSED_STREAM: not processed at all (sent before the server's stream limit was known);
            # aioapns' pool sends it again, on a free stream.
            future.set_exception(ConnectionClosed("stream refused"))
            return
        reason, timestamp = "", None
        if body:
            try:
                answer = json.loads(body)
                reason = str(answer.get("reason", ""))
                timestamp = answer.get("timestamp")
            except (ValueError, AttributeError):
                reason = body[:200].decode("utf-8", "replace")
        future.set_result(NotificationResult(notification_id, status, description=reason, timestamp=timestamp))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.settings_received.set()
        if self.inactivity_timer:
            self.inactivity_timer.cancel()
        if self.on_connection_lost:
            self.on_connection_lost(self)
        closed = ConnectionClosed(str(exc) if exc else "connection closed")
        for future in self.requests.values():
            if not future.done():
                future.set_exception(closed)
        self.requests.clear()
        self.request_streams.clear()
        self.free_channels.destroy(closed)


class _Pool(APNsKeyConnectionPool):
    """aioapns' token-auth pool with xmppd's protocol class and one shared provider token."""

    def __init__(self, *, protocol_class: type[_Connection], auth: _ProviderToken, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.protocol_class = protocol_class
        self.auth = auth

    async def create_connection(self) -> _Connection:
        factory = partial(self.protocol_class, self.apns_topic, self.loop, self.discard_connection, self.auth)
        connection = await self._create_connection(factory)
        # Use it only once the server said how many streams it takes (its first SETTINGS frame):
        # requests sent before that may be refused, or overflow h2's stream count.
        try:
            await asyncio.wait_for(connection.settings_received.wait(), SETTINGS_TIMEOUT)
        except TimeoutError:
            connection.close()
            raise ApnsConnectionError("no HTTP/2 SETTINGS from APNs") from None
        if connection.lost:
            raise ApnsConnectionError("APNs closed the connection at once")
        return connection

    def discard_connection(self, connection: Any) -> None:
        if connection in self.connections:
            self.connections.remove(connection)
