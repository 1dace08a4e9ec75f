"""A fake APNs and a fake FCM for tests: real sockets on 127.0.0.1, scriptable answers.

Both run in a thread of their own (FakeAPNs with its own asyncio loop, FakeFCM as a
threaded HTTP server), so the same object serves a test's asyncio loop, a Twisted
reactor, plain synchronous code, or an xmppd process started by the test: ``start()``,
then point the client at ``host``/``port`` (APNs) or ``token_uri``/``endpoint`` (FCM),
and ``stop()`` (or use ``with``). Every method may be called from any thread.

FakeAPNs (HTTP/2 over TLS, ALPN h2, like api.push.apple.com):
- verifies the provider token (ES256 JWT: kid, iss = team id, iat younger than an hour)
  against the public half of the test key from ``make_apns_key()``;
- checks POST /3/device/<hex token>, apns-topic (the app's topic, or topic + ".voip"
  for push type voip), apns-push-type, apns-priority, apns-expiration (0 or in the
  future), apns-id (a UUID, echoed back; one is made up when absent), apns-collapse-id
  (at most 64 bytes), and a JSON payload within Apple's size limits;
- answers a request that breaks a rule as Apple would (400/403/405/413 with a reason)
  and notes the rule in ``violations``; answers the rest from the script (``respond``):
  per token or for all, e.g. 410 Unregistered with a timestamp, 400 BadDeviceToken,
  429, 500, a delay, no answer at all; 200 when nothing is scripted;
- ``down()`` refuses connections (and cuts the open ones), or accepts and closes them
  (mode "close"), until ``up()`` or for ``seconds``;
- records every request: ``requests`` (ApnsRequest: token, headers, payload, time
  received, connection number, the answer given).

FakeFCM (HTTP/1.1, like oauth2.googleapis.com/token and fcm.googleapis.com):
- ``service_account()`` is a service-account JSON (a fresh RSA key) whose token_uri
  points here; POST /token accepts google-auth's JWT bearer grant (RS256, checked
  against that key: iss, aud (Google's token URI, as google-auth
  always sends, or this token_uri), the firebase.messaging scope, exp, kid) and
  issues an access token (``token_lifetime``); ``revoke_tokens()`` makes every issued
  token expired (401 ACCESS_TOKEN_EXPIRED);
- POST /v1/projects/<project>/messages:send checks the bearer token and the message
  (a token, data values that are all strings, no reserved data keys, android priority
  and ttl well-formed, data within 4 KB), records it, and answers from the script:
  200 with a message name, or an FCM v1 error body (404 UNREGISTERED, 429 with
  Retry-After, 500, 503 …), a delay, no answer;
- ``down()``/``up()`` as for APNs; ``max_concurrent`` is the highest number of sends
  it was answering at once (to check a client's bound on parallel requests).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated, DataReceived, RemoteSettingsChanged, RequestReceived, StreamEnded, StreamReset, WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError

from xmppd.certs import generate_self_signed

__all__ = [
    "ApnsKey", "make_apns_key", "FakeAPNs", "ApnsRequest",
    "FakeFCM", "FcmRequest", "make_service_account",
]

HOST = "127.0.0.1"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"


# -- scripts ---------------------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    reason: str = ""                 # APNs reason / FCM errorCode
    timestamp: int | None = None     # APNs 410: milliseconds since the epoch
    retry_after: str | None = None   # FCM: the Retry-After header
    delay: float = 0.0               # answer this much later
    hang: bool = False               # never answer (the stream / request stays open)


class _Script:
    """Answers by rule: the first rule for this token, else the first rule for any token."""

    def __init__(self) -> None:
        self._rules: list[list[Any]] = []   # [token | None, Answer, remaining | None]
        self._lock = threading.Lock()

    def add(self, answer: Answer, token: str | None, times: int | None) -> None:
        if times is not None and times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._rules.append([token, answer, times])

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def next(self, token: str) -> Answer | None:
        with self._lock:
            for wanted in (token, None):
                for rule in self._rules:
                    if rule[0] == wanted:
                        if rule[2] is not None:
                            rule[2] -= 1
                            if rule[2] == 0:
                                self._rules.remove(rule)
                        return rule[1]
        return None


class _Records:
    """A list of records with a wait for the n-th, usable from any thread."""

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._condition = threading.Condition()

    def append(self, item: Any) -> None:
        with self._condition:
            self._items.append(item)
            self._condition.notify_all()

    def snapshot(self) -> list[Any]:
        with self._condition:
            return list(self._items)

    def clear(self) -> None:
        with self._condition:
            self._items.clear()

    def wait(self, count: int, timeout: float) -> list[Any]:
        with self._condition:
            if not self._condition.wait_for(lambda: len(self._items) >= count, timeout):
                raise TimeoutError(f"{len(self._items)} requests arrived, not {count}, within {timeout} s")
            return list(self._items)


class _FakeBase:
    def __init__(self) -> None:
        self._script = _Script()
        self._records = _Records()
        self._violations: list[str] = []
        self._lock = threading.Lock()

    def app_toml(self, name: str, path: str | Path, **extra: Any) -> str:
        """The [appserver.apps.NAME] table for this fake as a configuration file says it: app_config(path)
        (which writes the key or service-account file to path) plus `extra` keys such as push_modules."""
        from xmppd.config import toml_value

        table = {**self.app_config(path), **extra}
        return f"[appserver.apps.{name}]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in table.items())

    @property
    def violations(self) -> list[str]:
        """Every rule a client broke, in order (a correct client leaves this empty)."""
        with self._lock:
            return list(self._violations)

    def _violation(self, text: str) -> None:
        with self._lock:
            self._violations.append(text)

    @property
    def requests(self) -> list[Any]:
        return self._records.snapshot()

    def clear(self) -> None:
        """Forget recorded requests and violations (the script stays)."""
        self._records.clear()
        with self._lock:
            self._violations.clear()

    def clear_script(self) -> None:
        self._script.clear()

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[Any]:
        """Block until at least count requests were recorded; all of them."""
        return self._records.wait(count, timeout)

    async def requests_arrived(self, count: int, timeout: float = 10.0) -> list[Any]:
        """wait_for_requests() for a coroutine (runs in a thread, the loop keeps going)."""
        return await asyncio.to_thread(self._records.wait, count, timeout)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


# -- APNs ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ApnsKey:
    """A .p8-style signing key (EC P-256, PKCS#8 PEM) with its key id and team id."""
    pem: str
    key_id: str
    team_id: str

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return serialization.load_pem_private_key(self.pem.encode(), None).public_key()

    def write(self, path: str | Path) -> str:
        """Write the key as a .p8 file (what Apple's developer site hands out); its path."""
        Path(path).write_text(self.pem, encoding="ascii")
        return str(path)


def make_apns_key(key_id: str | None = None, team_id: str | None = None) -> ApnsKey:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode("ascii")
    return ApnsKey(pem, key_id or secrets.token_hex(5).upper(), team_id or secrets.token_hex(5).upper())


@dataclass
class ApnsRequest:
    token: str
    headers: dict[str, str]
    payload: dict[str, Any] | None
    body: bytes
    received_at: float            # time.time()
    monotonic: float              # time.monotonic()
    connection: int               # 1 for the first connection the fake accepted, and so on
    status: int = 0               # the answer given (0: none yet / never)
    reason: str = ""
    jwt_iat: int | None = None

    @property
    def push_type(self) -> str | None:
        return self.headers.get("apns-push-type")

    @property
    def topic(self) -> str | None:
        return self.headers.get("apns-topic")

    @property
    def expiration(self) -> int | None:
        value = self.headers.get("apns-expiration")
        return int(value) if value is not None and value.lstrip("-").isdigit() else None


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_PATH = re.compile(r"/3/device/([^/?]*)")
PUSH_TYPES = {"alert", "background", "voip", "complication", "fileprovider", "mdm", "location",
              "liveactivity", "pushtotalk", "widgets", "controls"}


class FakeAPNs(_FakeBase):
    """See the module docstring. ``FakeAPNs(topic)``, then ``start()``."""

    def __init__(self, topic: str = "org.example.xmppd", *, key: ApnsKey | None = None) -> None:
        super().__init__()
        self.topic = topic
        self.key = key or make_apns_key()
        self.host = HOST
        self.port = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-apns-")
        self.cert_path = str(Path(self._tmp.name) / "apns.crt")
        self._key_path = str(Path(self._tmp.name) / "apns.key")
        generate_self_signed("localhost", self.cert_path, self._key_path, extra_names=(HOST,))
        self._server_ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_ssl.load_cert_chain(self.cert_path, self._key_path)
        self._server_ssl.set_alpn_protocols(["h2"])
        self._public_key = self.key.public_key
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._protocols: set[_ApnsServerProtocol] = set()
        self._connections = 0
        self._down_mode: str | None = None

    # -- what a test uses --

    @property
    def ca_file(self) -> str:
        """The certificate to trust (it is self-signed)."""
        return self.cert_path

    @property
    def key_pem(self) -> str:
        return self.key.pem

    @property
    def key_id(self) -> str:
        return self.key.key_id

    @property
    def team_id(self) -> str:
        return self.key.team_id

    @property
    def connections(self) -> int:
        """How many TLS connections were accepted so far."""
        with self._lock:
            return self._connections

    def app_config(self, key_file: str | Path) -> dict[str, Any]:
        """An [appserver.apps.NAME] table for this fake (writes the key to key_file)."""
        return {"type": "apns", "key_file": self.key.write(key_file), "key_id": self.key_id,
                "team_id": self.team_id, "topic": self.topic, "sandbox": True,
                "endpoint": f"{self.host}:{self.port}", "ca_file": self.ca_file}

    def client_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.cert_path)
        context.set_alpn_protocols(["h2"])
        return context

    def respond(self, status: int, reason: str = "", *, token: str | None = None, times: int | None = None,
                timestamp: int | None = None, delay: float = 0.0, hang: bool = False) -> None:
        """Answer valid requests (for token, or all) with status and reason, times times (None: always).

        A 410 without a timestamp gets the current time (milliseconds), as Apple sends.
        """
        if status == 410 and timestamp is None:
            timestamp = int(time.time() * 1000)
        self._script.add(Answer(status, reason, timestamp=timestamp, delay=delay, hang=hang), token, times)

    def down(self, mode: str = "refuse", seconds: float | None = None) -> None:
        """Stop answering: "refuse" closes the listening socket and cuts open connections;
        "close" accepts connections and closes them at once. Until up(), or for seconds."""
        if mode not in ("refuse", "close"):
            raise ValueError("mode is 'refuse' or 'close'")
        self._run(self._go_down(mode))
        if seconds is not None:
            self._loop.call_soon_threadsafe(self._loop.call_later, seconds, self._schedule_up)

    def up(self) -> None:
        self._run(self._go_up())

    # -- life cycle --

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-apns", daemon=True)
        self._thread.start()
        self._run(self._listen())

    def stop(self) -> None:
        if self._thread is None:
            return
        self._run(self._go_down("refuse"))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._thread = None
        self._tmp.cleanup()

    def _run(self, coroutine: Any) -> Any:
        if self._loop is None:
            raise RuntimeError("start() the fake first")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _listen(self) -> None:
        self._server = await self._loop.create_server(
            lambda: _ApnsServerProtocol(self), self.host, self.port, ssl=self._server_ssl, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _go_down(self, mode: str) -> None:
        self._down_mode = mode
        if mode == "refuse" and self._server is not None:
            self._server.close()
            self._server = None
        for protocol in list(self._protocols):
            protocol.abort()

    async def _go_up(self) -> None:
        self._down_mode = None
        if self._server is None:
            await self._listen()

    def _schedule_up(self) -> None:
        asyncio.ensure_future(self._go_up())

    # -- called by the protocol, in the fake's loop --

    def _accepted(self, protocol: _ApnsServerProtocol) -> int:
        with self._lock:
            self._connections += 1
            number = self._connections
        self._protocols.add(protocol)
        return number

    def _handle(self, headers: dict[str, str], body: bytes, connection: int) -> tuple[ApnsRequest, Answer, str]:
        """Check one request, record it; (record, answer, apns-id to echo)."""
        now = time.time()
        problems: list[tuple[int, str, str]] = []   # (status, reason, description)

        def problem(status: int, reason: str, description: str) -> None:
            problems.append((status, reason, description))

        match = _PATH.fullmatch(headers.get(":path", ""))
        token = match.group(1) if match else ""
        if headers.get(":method") != "POST":
            problem(405, "MethodNotAllowed", f"method {headers.get(':method')!r}")
        if headers.get(":scheme") != "https":
            problem(400, "BadPath", f"scheme {headers.get(':scheme')!r}")
        if match is None:
            problem(404, "BadPath", f"path {headers.get(':path')!r}")
        elif not token:
            problem(400, "MissingDeviceToken", "no device token in the path")
        elif not re.fullmatch(r"[0-9a-fA-F]+", token):
            problem(400, "BadDeviceToken", f"device token {token!r} is not hexadecimal")

        iat = self._check_provider_token(headers.get("authorization"), now, problem)

        push_type = headers.get("apns-push-type")
        topic = headers.get("apns-topic")
        if push_type is None:
            problem(400, "InvalidPushType", "no apns-push-type header")
        elif push_type not in PUSH_TYPES:
            problem(400, "InvalidPushType", f"apns-push-type {push_type!r}")
        wanted_topic = f"{self.topic}.voip" if push_type == "voip" else self.topic
        if topic is None:
            problem(400, "MissingTopic", "no apns-topic header")
        elif topic != wanted_topic:
            problem(400, "TopicDisallowed", f"apns-topic {topic!r} for push type {push_type!r}, "
                                            f"expected {wanted_topic!r}")
        priority = headers.get("apns-priority")
        if priority is not None and priority not in ("1", "5", "10"):
            problem(400, "BadPriority", f"apns-priority {priority!r}")
        if push_type == "background" and priority not in (None, "5"):
            problem(400, "BadPriority", "a background push must have priority 5")
        expiration = headers.get("apns-expiration")
        if expiration is not None:
            if not re.fullmatch(r"\d+", expiration):
                problem(400, "BadExpirationDate", f"apns-expiration {expiration!r}")
            elif int(expiration) != 0 and int(expiration) <= now:
                problem(400, "BadExpirationDate",
                        f"apns-expiration {expiration} is already past (now {now:.0f})")
        apns_id = headers.get("apns-id")
        if apns_id is not None and not _UUID.fullmatch(apns_id):
            problem(400, "BadMessageId", f"apns-id {apns_id!r}")
        apns_id = apns_id or str(uuid.uuid4())
        collapse = headers.get("apns-collapse-id")
        if collapse is not None and len(collapse.encode()) > 64:
            problem(400, "BadCollapseId", f"apns-collapse-id of {len(collapse.encode())} bytes")

        payload = None
        limit = 5120 if push_type == "voip" else 4096
        if not body:
            problem(400, "PayloadEmpty", "no payload")
        elif len(body) > limit:
            problem(413, "PayloadTooLarge", f"payload of {len(body)} bytes (limit {limit})")
        else:
            try:
                payload = json.loads(body)
            except ValueError:
                problem(400, "BadPayload", "payload is not JSON")
            else:
                if not isinstance(payload, dict):
                    problem(400, "BadPayload", "payload is not a JSON object")
                    payload = None
                elif push_type == "alert" and not (isinstance(payload.get("aps"), dict) and payload["aps"].get("alert")):
                    problem(400, "BadPayload", "push type alert without aps.alert")

        record = ApnsRequest(token, dict(headers), payload, body, now, time.monotonic(), connection, jwt_iat=iat)
        if problems:
            status, reason, _ = problems[0]
            for _, _, description in problems:
                self._violation(f"request {headers.get(':path')}: {description}")
            answer = Answer(status, reason, timestamp=None)
        else:
            answer = self._script.next(token) or Answer(200)
        if not answer.hang:
            record.status, record.reason = answer.status, answer.reason
        self._records.append(record)
        return record, answer, apns_id

    def _check_provider_token(self, authorization: str | None, now: float,
                              problem: Callable[[int, str, str], None]) -> int | None:
        if not authorization:
            problem(403, "MissingProviderToken", "no authorization header")
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            problem(403, "InvalidProviderToken", f"authorization {authorization[:20]!r}… is not a bearer token")
            return None
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, self._public_key, algorithms=["ES256"],
                                options={"require": ["iat", "iss"], "verify_aud": False, "verify_iat": False})
        except jwt.PyJWTError as error:
            problem(403, "InvalidProviderToken", f"provider token does not verify: {error}")
            return None
        if header.get("alg") != "ES256" or header.get("kid") != self.key.key_id:
            problem(403, "InvalidProviderToken", f"provider token header {header}")
        if claims.get("iss") != self.key.team_id:
            problem(403, "InvalidProviderToken", f"provider token issuer {claims.get('iss')!r}")
        iat = claims.get("iat")
        if not isinstance(iat, int):
            problem(403, "InvalidProviderToken", f"provider token iat {iat!r}")
            return None
        if iat < now - 3600:
            problem(403, "ExpiredProviderToken", f"provider token issued {now - iat:.0f} s ago")
        elif iat > now + 60:
            problem(403, "InvalidProviderToken", "provider token issued in the future")
        return iat


class _ApnsServerProtocol(asyncio.Protocol):
    def __init__(self, fake: FakeAPNs) -> None:
        self.fake = fake
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        self.outgoing: dict[int, bytes] = {}   # answer bodies waiting for the client's window
        self.transport: asyncio.Transport | None = None
        self.number = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.number = self.fake._accepted(self)
        if self.fake._down_mode is not None:
            transport.abort()
            return
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn != "h2":
            self.fake._violation(f"connection {self.number}: ALPN {alpn!r}, not 'h2'")
        self.conn.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fake._protocols.discard(self)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as error:
            self.fake._violation(f"connection {self.number}: HTTP/2 protocol error {error}")
            self.abort()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self.streams[event.stream_id] = (dict(event.headers), bytearray())
            elif isinstance(event, DataReceived):
                if event.stream_id in self.streams:
                    self.streams[event.stream_id][1].extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                self._request(event.stream_id)
            elif isinstance(event, StreamReset):
                self.streams.pop(event.stream_id, None)
                self.outgoing.pop(event.stream_id, None)
            elif isinstance(event, (WindowUpdated, RemoteSettingsChanged)):
                self._send_bodies()
            elif isinstance(event, ConnectionTerminated):
                if self.transport is not None:
                    self.transport.close()
        self._flush()

    def _request(self, stream_id: int) -> None:
        headers, body = self.streams.pop(stream_id, ({}, bytearray()))
        record, answer, apns_id = self.fake._handle(headers, bytes(body), self.number)
        if answer.hang:
            return
        if answer.delay:
            asyncio.get_running_loop().call_later(answer.delay, self._answer, stream_id, answer, apns_id)
        else:
            self._answer(stream_id, answer, apns_id)

    def _answer(self, stream_id: int, answer: Answer, apns_id: str) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        headers = [(":status", str(answer.status)), ("apns-id", apns_id)]
        body = b""
        if answer.status != 200:
            error: dict[str, Any] = {"reason": answer.reason}
            if answer.timestamp is not None:
                error["timestamp"] = answer.timestamp
            body = json.dumps(error).encode()
            headers += [("content-type", "application/json"), ("content-length", str(len(body)))]
        try:
            self.conn.send_headers(stream_id, headers, end_stream=not body)
        except H2Error:
            return
        if body:
            self.outgoing[stream_id] = body
            self._send_bodies()
        self._flush()

    def _send_bodies(self) -> None:
        """Send what the client's flow-control windows allow; the rest waits for WINDOW_UPDATE."""
        for stream_id, data in list(self.outgoing.items()):
            try:
                while data:
                    size = min(len(data), self.conn.local_flow_control_window(stream_id),
                               self.conn.max_outbound_frame_size)
                    if size <= 0:
                        break
                    self.conn.send_data(stream_id, data[:size], end_stream=size == len(data))
                    data = data[size:]
            except H2Error:
                data = b""
            if data:
                self.outgoing[stream_id] = data
            else:
                del self.outgoing[stream_id]

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.conn.data_to_send())


# -- FCM -------------------------------------------------------------------------------------

@dataclass
class FcmRequest:
    project: str
    token: str | None
    message: dict[str, Any]
    headers: dict[str, str]
    received_at: float
    monotonic: float
    status: int = 0
    error_code: str = ""
    validate_only: bool = False

    @property
    def data(self) -> dict[str, Any]:
        return self.message.get("data") or {}

    @property
    def android(self) -> dict[str, Any]:
        return self.message.get("android") or {}


def make_service_account(token_uri: str, project_id: str = "xmppd-test") -> tuple[dict[str, str], rsa.RSAPublicKey]:
    """A service-account JSON (as Google issues them) with a new RSA key, and that key's public half."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode("ascii")
    account = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": f"xmppd-push@{project_id}.iam.gserviceaccount.com",
        "client_id": str(secrets.randbelow(10**20)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "universe_domain": "googleapis.com",
    }
    return account, key.public_key()


FCM_ERRORS = {   # HTTP status → (status, default errorCode, message), as FCM v1 answers
    400: ("INVALID_ARGUMENT", "INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch"),
    404: ("NOT_FOUND", "UNREGISTERED", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "Quota exceeded for quota metric."),
    500: ("INTERNAL", "INTERNAL", "Internal error encountered."),
    503: ("UNAVAILABLE", "UNAVAILABLE", "The service is currently unavailable."),
}
_RESERVED_DATA_KEYS = {"from", "notification", "message_type"}


class FakeFCM(_FakeBase):
    """See the module docstring. ``FakeFCM(project_id)``, then ``start()``, then ``service_account()``."""

    def __init__(self, project_id: str = "xmppd-test", *, token_lifetime: int = 3600) -> None:
        super().__init__()
        self.project_id = project_id
        self.token_lifetime = token_lifetime
        self.host = HOST
        self.port = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._sockets: set[socket.socket] = set()
        self._down_mode: str | None = None
        self._accounts: dict[str, tuple[dict[str, str], rsa.RSAPublicKey]] = {}   # client_email → …
        self._tokens: dict[str, float] = {}   # access token → expiry (time.time())
        self.token_requests: list[dict[str, Any]] = []
        self._token_script = _Script()
        self._in_flight = 0
        self.max_concurrent = 0
        self._released = threading.Event()
        self._message_ids = 0

    # -- what a test uses --

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    @property
    def endpoint(self) -> str:
        """The FCM endpoint base (pyfcm's FCM_END_POINT_BASE): …/v1/projects."""
        return f"{self.base_url}/v1/projects"

    def service_account(self, project_id: str | None = None) -> dict[str, str]:
        """A new service account that this fake trusts, token_uri pointing here."""
        account, public_key = make_service_account(self.token_uri, project_id or self.project_id)
        with self._lock:
            self._accounts[account["client_email"]] = (account, public_key)
        return account

    def app_config(self, service_account_file: str | Path) -> dict[str, Any]:
        """An [appserver.apps.NAME] table for this fake (writes a new service account to the file)."""
        Path(service_account_file).write_text(json.dumps(self.service_account()), encoding="utf-8")
        return {"type": "fcm", "service_account_file": str(service_account_file), "project_id": self.project_id,
                "endpoint": self.endpoint}

    def respond(self, status: int, error_code: str | None = None, *, token: str | None = None,
                times: int | None = None, retry_after: str | int | None = None, delay: float = 0.0,
                hang: bool = False) -> None:
        """Answer valid sends (for token, or all) with status (and errorCode), times times (None: always)."""
        if status != 200 and error_code is None:
            error_code = FCM_ERRORS.get(status, ("", "", ""))[1]
        if hang:
            self._released.clear()
        self._script.add(Answer(status, error_code or "", retry_after=None if retry_after is None else str(retry_after),
                                delay=delay, hang=hang), token, times)

    def respond_token(self, status: int, error: str = "invalid_grant", *, times: int | None = None) -> None:
        """Answer the token endpoint with an error (e.g. 400 invalid_grant, 500)."""
        self._token_script.add(Answer(status, error), None, times)

    def revoke_tokens(self) -> None:
        """Every access token issued so far is expired from now on."""
        with self._lock:
            for token in self._tokens:
                self._tokens[token] = 0.0

    def release(self) -> None:
        """Let requests held by hang=True go (they get a 500 and the connection closes)."""
        self._released.set()

    def down(self, mode: str = "refuse", seconds: float | None = None) -> None:
        """As FakeAPNs.down(): "refuse" stops listening and cuts connections, "close" drops each request."""
        if mode not in ("refuse", "close"):
            raise ValueError("mode is 'refuse' or 'close'")
        with self._lock:
            self._down_mode = mode
        if mode == "refuse":
            self._stop_listening()
        self._cut_connections()
        if seconds is not None:
            timer = threading.Timer(seconds, self.up)
            timer.daemon = True
            timer.start()

    def up(self) -> None:
        with self._lock:
            self._down_mode = None
        if self._httpd is None:
            self._listen()

    # -- life cycle --

    def start(self) -> None:
        if self._httpd is not None:
            raise RuntimeError("already started")
        self._listen()

    def stop(self) -> None:
        self._released.set()
        self._stop_listening()
        self._cut_connections()

    def _listen(self) -> None:
        fake = self

        class Handler(_FcmHandler):
            pass
        Handler.fake = fake
        httpd = ThreadingHTTPServer((self.host, self.port), Handler)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-fcm", daemon=True)
        self._thread.start()

    def _stop_listening(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _cut_connections(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- called by the handler threads --

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        now = time.time()
        record: dict[str, Any] = {"form": form, "received_at": now}
        with self._lock:
            self.token_requests.append(record)
        scripted = self._token_script.next("")
        if scripted is not None:
            return scripted.status, {"error": scripted.reason, "error_description": "scripted"}

        def refuse(description: str) -> tuple[int, dict[str, Any]]:
            self._violation(f"token request: {description}")
            return 400, {"error": "invalid_grant", "error_description": description}

        if form.get("grant_type") != JWT_BEARER:
            return refuse(f"grant_type {form.get('grant_type')!r}")
        assertion = form.get("assertion", "")
        try:
            claims = jwt.decode(assertion, options={"verify_signature": False})
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError as error:
            return refuse(f"assertion is not a JWT: {error}")
        with self._lock:
            known = self._accounts.get(claims.get("iss", ""))
        if known is None:
            return refuse(f"unknown service account {claims.get('iss')!r}")
        account, public_key = known
        try:
            # google-auth always names Google's endpoint as the audience, whatever token_uri is
            claims = jwt.decode(assertion, public_key, algorithms=["RS256"],
                                audience=[GOOGLE_TOKEN_URI, self.token_uri],
                                options={"require": ["iss", "aud", "iat", "exp"]}, leeway=60)
        except jwt.PyJWTError as error:
            return refuse(f"assertion does not verify: {error}")
        if header.get("kid") != account["private_key_id"]:
            return refuse(f"assertion kid {header.get('kid')!r}")
        if FCM_SCOPE not in str(claims.get("scope", "")).split():
            return refuse(f"scope {claims.get('scope')!r} lacks {FCM_SCOPE}")
        token = "ya29." + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = now + self.token_lifetime
        record["issued"] = token
        return 200, {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}

    def _send(self, project: str, headers: dict[str, str], body: bytes) -> tuple[Answer, FcmRequest | None, str]:
        """(answer, record, message name) for one send request."""
        now = time.time()
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        with self._lock:
            expiry = self._tokens.get(token) if scheme.lower() == "bearer" else None
        if expiry is None:
            self._violation(f"send with an unknown access token {auth[:24]!r}")
            return Answer(401, "THIRD_PARTY_AUTH_ERROR"), None, ""
        if expiry <= now:
            return Answer(401, "ACCESS_TOKEN_EXPIRED"), None, ""
        try:
            request = json.loads(body)
        except ValueError:
            self._violation("send body is not JSON")
            return Answer(400, "INVALID_ARGUMENT"), None, ""
        message = request.get("message") if isinstance(request, dict) else None
        if not isinstance(message, dict):
            self._violation("send body without a message object")
            return Answer(400, "INVALID_ARGUMENT"), None, ""
        record = FcmRequest(project, message.get("token"), message, dict(headers), now, time.monotonic(),
                            validate_only=bool(request.get("validate_only")))
        problems = self._check_message(project, message, headers)
        for text in problems:
            self._violation(text)
        if project != self.project_id:
            answer = Answer(403, "SENDER_ID_MISMATCH")
        elif problems:
            answer = Answer(400, "INVALID_ARGUMENT")
        else:
            answer = self._script.next(record.token or "") or Answer(200)
        if not answer.hang:
            record.status, record.error_code = answer.status, answer.reason
        self._records.append(record)
        name = ""
        if answer.status == 200:
            with self._lock:
                self._message_ids += 1
                name = f"projects/{project}/messages/{self._message_ids}"
        return answer, record, name

    def _check_message(self, project: str, message: dict[str, Any], headers: dict[str, str]) -> list[str]:
        problems = []
        if project != self.project_id:
            problems.append(f"send to project {project!r}, not {self.project_id!r}")
        if "application/json" not in headers.get("content-type", ""):
            problems.append(f"content-type {headers.get('content-type')!r}")
        if not isinstance(message.get("token"), str) or not message.get("token"):
            problems.append("message without a registration token")
        data = message.get("data", {})
        if not isinstance(data, dict):
            problems.append("data is not an object")
        else:
            for key, value in data.items():
                if not isinstance(value, str):
                    problems.append(f"data[{key!r}] is {type(value).__name__}, not a string")
                if key in _RESERVED_DATA_KEYS or key.startswith(("google", "gcm")):
                    problems.append(f"data key {key!r} is reserved")
            if len(json.dumps(data).encode()) > 4096:
                problems.append("data exceeds 4 KB")
        android = message.get("android", {})
        if android:
            priority = str(android.get("priority", "normal")).lower()
            if priority not in ("normal", "high"):
                problems.append(f"android priority {android.get('priority')!r}")
            ttl = android.get("ttl")
            if ttl is not None and not re.fullmatch(r"\d+(\.\d{1,9})?s", str(ttl)):
                problems.append(f"android ttl {ttl!r}")
        return problems

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_concurrent = max(self.max_concurrent, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1


class _FcmHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeFCM

    def log_message(self, format: str, *args: Any) -> None:   # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.fake._lock:
            self.fake._sockets.add(self.connection)

    def finish(self) -> None:
        with self.fake._lock:
            self.fake._sockets.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def do_POST(self) -> None:
        if self.fake._down_mode is not None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        path = urllib.parse.urlsplit(self.path).path
        if path == "/token":
            form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
            status, answer = self.fake._token(form)
            self._json(status, answer)
            return
        match = re.fullmatch(r"/v1/projects/([^/]+)/messages:send", path)
        if match is None:
            self.fake._violation(f"POST to {self.path!r}")
            self._json(404, {"error": {"code": 404, "message": "Not Found", "status": "NOT_FOUND"}})
            return
        self.fake._enter()
        try:
            answer, record, name = self.fake._send(match.group(1), headers, body)
            if answer.hang:
                self.fake._released.wait()
                self.close_connection = True
                self._json(500, _fcm_error(500, "INTERNAL"))
                return
            if answer.delay:
                time.sleep(answer.delay)
        finally:
            self.fake._leave()
        if answer.status == 200:
            self._json(200, {"name": name})
            return
        extra = {"Retry-After": answer.retry_after} if answer.retry_after is not None else {}
        self._json(answer.status, _fcm_error(answer.status, answer.reason), extra)

    def _json(self, status: int, answer: dict[str, Any], extra: dict[str, str] | None = None) -> None:
        body = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True


def _fcm_error(status: int, error_code: str) -> dict[str, Any]:
    rpc_status, _, message = FCM_ERRORS.get(status, ("UNKNOWN", "", "Error."))
    if error_code == "ACCESS_TOKEN_EXPIRED":
        details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "ACCESS_TOKEN_EXPIRED",
                    "domain": "googleapis.com"}]
        message = "Request had invalid authentication credentials."
    else:
        details = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}]
    return {"error": {"code": status, "message": message, "status": rpc_status, "details": details}}
