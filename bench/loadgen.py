"""The lean load generator: many XMPP clients per process, raw asyncio, almost no parsing.

Why not tests/lean_client.py: it feeds every byte to lxml and builds an element per stanza, which
costs about as much CPU as a server spends on the stanza, so the generator would measure itself.
Here a connection is an asyncio Protocol that looks for a few byte patterns while it logs in
(SASL PLAIN or SCRAM-SHA-1, bind, optionally XEP-0198 <enable/> or <resume/>), then only counts
`</message>` and reads the sender and the send time from the body. Stanzas are pre-built bytes.

The body of every benchmark message is "<sender index> <time.monotonic_ns() at send>".
CLOCK_MONOTONIC is one clock for every process on the machine, so a receiver in any worker process
computes the delivery latency directly.

`WorkerPool` runs N worker processes (multiprocessing, spawn) and sends each a command; a worker
keeps its connections between commands, so a scenario can log clients in (untimed), then load
them (timed), then drop them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import multiprocessing
import os
import re
import time
from array import array
from dataclasses import dataclass

NS_SM = "urn:xmpp:sm:3"
MESSAGE_END = b"</message>"
BODY = re.compile(rb"<body[^>]*>(\d+) (\d+)</body>")
FEATURES = re.compile(rb"</stream:features>|<stream:features\s*/>")
SASL_REPLY = re.compile(rb"<(challenge|success|failure)\b[^>]*?(?:/>|>(.*?)</\1>)", re.S)
IQ_REPLY = re.compile(rb"<iq\b[^>]*?(?:/>|>.*?</iq>)", re.S)
JID = re.compile(rb"<jid>([^<]+)</jid>")
SM_REPLY = re.compile(rb"<(enabled|resumed|failed)\b[^>]*?(?:/>|>.*?</\1>)", re.S)
SM_ID = re.compile(rb"\bid=['\"]([^'\"]+)['\"]")
STEP_TIMEOUT = 30.0          # one negotiation step of one connection (a hang guard, not a measurement)

_scram_keys: dict[tuple[str, bytes, int], tuple[bytes, bytes]] = {}


class LoginFailed(Exception):
    """The server refused or broke off a log-in step."""


def scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(ClientKey, StoredKey) of SCRAM-SHA-1, derived once per salt: the benchmark's accounts share
    one password and, as bench/servers.py creates them, one salt, so PBKDF2 runs once per process."""
    key = (password, salt, iterations)
    if key not in _scram_keys:
        salted = hashlib.pbkdf2_hmac("sha1", password.encode(), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha1")
        _scram_keys[key] = client_key, hashlib.sha1(client_key).digest()
    return _scram_keys[key]


def stream_header(domain: str) -> bytes:
    return (f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            f"xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>").encode()


@dataclass(frozen=True)
class Target:
    """Where and how the clients log in."""
    host: str
    port: int
    domain: str
    password: str
    mechanism: str = "SCRAM-SHA-1"


class Connection(asyncio.Protocol):
    """One client connection. Log-in steps wait for a byte pattern; once `streaming` is set, only
    messages are counted and handed to `on_message(sender, sent_ns, received_ns)`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.streaming = False
        self.closed = asyncio.get_running_loop().create_future()
        self._wanted: tuple[re.Pattern, asyncio.Future] | None = None
        self.on_message = None
        self.messages = 0         # messages received while streaming
        self.sm_requests = False  # answer the server's <r/> with the number of messages received

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.streaming:
            self._count_messages(b"<r xmlns" in data)
        elif self._wanted is not None:
            pattern, future = self._wanted
            found = self._take(pattern)
            if found is not None:
                self._wanted = None
                if not future.done():
                    future.set_result(found)

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self._wanted is not None and not self._wanted[1].done():
            self._wanted[1].set_exception(LoginFailed(f"connection closed ({exc or 'by the server'})"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _count_messages(self, ack_requested: bool) -> None:
        buffer = self.buffer
        start = 0
        while (end := buffer.find(MESSAGE_END, start)) >= 0:
            self.messages += 1
            if self.on_message is not None:
                body = BODY.search(buffer, start, end)
                if body is not None:
                    self.on_message(int(body.group(1)), int(body.group(2)), time.monotonic_ns())
            start = end + len(MESSAGE_END)
        if start:
            del buffer[:start]
        elif len(buffer) > 65536:      # no message in 64 KiB: something else (pings …); forget it
            del buffer[:-4096]
        if ack_requested and self.sm_requests:
            self.write(f"<a xmlns='{NS_SM}' h='{self.messages}'/>".encode())

    # log-in steps
    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _take(self, pattern: re.Pattern) -> tuple[bytes, ...] | None:
        """(the whole match, its groups …) as bytes, removed from the buffer with what preceded it.
        (A match on a bytearray reads the buffer when asked, so it is copied before the buffer changes.)"""
        match = pattern.search(self.buffer)
        if match is None:
            return None
        found = (bytes(match.group(0)), *(None if group is None else bytes(group) for group in match.groups()))
        del self.buffer[:match.end()]
        return found

    async def expect(self, pattern: re.Pattern) -> tuple[bytes, ...]:
        """Wait until the buffer holds a match: (the whole match, its groups …)."""
        found = self._take(pattern)
        if found is not None:
            return found
        if self.transport is None:
            raise LoginFailed("connection closed")
        future = asyncio.get_running_loop().create_future()
        self._wanted = pattern, future
        try:
            return await asyncio.wait_for(future, STEP_TIMEOUT)
        finally:
            self._wanted = None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect(target: Target, username: str) -> Connection:
    """TCP, stream, SASL, stream restart: a connection ready to bind or resume. The server's SCRAM
    signature is not checked: the generator trusts the server it measures (a wrong password still
    fails, at the server)."""
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(Connection, target.host, target.port)
    header = stream_header(target.domain)
    connection.write(header)
    await connection.expect(FEATURES)
    if target.mechanism == "PLAIN":
        initial = base64.b64encode(f"\0{username}\0{target.password}".encode())
        connection.write(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + initial + b"</auth>")
    else:
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n={username},r={nonce}"
        connection.write(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>"
                         + base64.b64encode(f"n,,{first_bare}".encode()) + b"</auth>")
        reply = await connection.expect(SASL_REPLY)
        if reply[1] != b"challenge":
            raise LoginFailed(f"{username}: {reply[0][:200]!r}")
        server_first = base64.b64decode(reply[2] or b"").decode()
        fields = dict(item.split("=", 1) for item in server_first.split(","))
        if not fields.get("r", "").startswith(nonce):
            raise LoginFailed(f"{username}: server nonce does not extend ours")
        client_key, stored_key = scram_keys(target.password, base64.b64decode(fields["s"]), int(fields["i"]))
        without_proof = f"c=biws,r={fields['r']}"
        signature = hmac.digest(stored_key, f"{first_bare},{server_first},{without_proof}".encode(), "sha1")
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
        connection.write(b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
                         + base64.b64encode(f"{without_proof},p={proof}".encode()) + b"</response>")
    reply = await connection.expect(SASL_REPLY)
    if reply[1] != b"success":
        raise LoginFailed(f"{username}: {reply[0][:200]!r}")
    connection.write(header)
    await connection.expect(FEATURES)
    return connection


@dataclass
class Client:
    """An account's client in a worker: its connection, full JID and XEP-0198 resumption id."""
    username: str
    connection: Connection | None = None
    jid: bytes = b""
    sm_id: bytes = b""


async def login(target: Target, client: Client, *, sm: bool, presence: bool) -> None:
    connection = await connect(target, client.username)
    connection.write(b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    reply = await connection.expect(IQ_REPLY)
    jid = JID.search(reply[0])
    if jid is None:
        raise LoginFailed(f"{client.username}: bind: {reply[0][:200]!r}")
    client.jid = jid.group(1)
    if sm:
        connection.write(f"<enable xmlns='{NS_SM}' resume='true'/>".encode())
        reply = await connection.expect(SM_REPLY)
        if reply[1] != b"enabled":
            raise LoginFailed(f"{client.username}: <enable/>: {reply[0][:200]!r}")
        client.sm_id = SM_ID.search(reply[0]).group(1)
        connection.sm_requests = True
    if presence:
        connection.write(b"<presence/>")
    connection.streaming = True
    client.connection = connection


async def resume(target: Target, client: Client, h: int) -> Connection:
    """A new connection that resumes the client's hibernated session; streaming from <resumed/> on."""
    connection = await connect(target, client.username)
    connection.write(f"<resume xmlns='{NS_SM}' previd='{client.sm_id.decode()}' h='{h}'/>".encode())
    reply = await connection.expect(SM_REPLY)
    if reply[1] != b"resumed":
        raise LoginFailed(f"{client.username}: <resume/>: {reply[0][:200]!r}")
    connection.sm_requests = True
    connection.messages = h
    connection.streaming = True
    connection.data_received(b"")      # what came right behind <resumed/>
    client.connection = connection
    return connection


def message_bytes(to: bytes, sender: int) -> tuple[bytes, bytes]:
    """The two halves of a benchmark message around its send time."""
    return (b"<message type='chat' to='" + to + b"'><body>" + str(sender).encode() + b" ",
            b"</body></message>")


class Worker:
    """The clients of one worker process and the commands the orchestrator sends it."""

    def __init__(self) -> None:
        self.target: Target | None = None
        self.clients: list[Client] = []

    async def ready(self) -> dict:
        """Answered once the process has started and imported everything (so that start-up is not
        measured as load-generator CPU)."""
        return {}

    async def login(self, target: Target, usernames: list[str], concurrency: int, sm: bool = False,
                    presence: bool = True) -> dict:
        """Log the accounts in, at most `concurrency` at once; keeps the connections."""
        self.target = target
        gate = asyncio.Semaphore(concurrency)
        errors: list[str] = []
        clients = [Client(name) for name in usernames]

        async def one(client: Client) -> None:
            async with gate:
                try:
                    await login(target, client, sm=sm, presence=presence)
                except (OSError, LoginFailed, asyncio.TimeoutError, KeyError, ValueError) as error:
                    errors.append(f"{client.username}: {type(error).__name__}: {error}")

        start = time.monotonic()
        await asyncio.gather(*(one(client) for client in clients))
        end = time.monotonic()
        self.clients += [client for client in clients if client.connection is not None]
        return {"ok": len(usernames) - len(errors), "failed": len(errors), "errors": errors[:5],
                "start": start, "end": end}

    def _pairs(self) -> list[tuple[Client, Client]]:
        """Client 2k writes to 2k+1 and 2k+1 to 2k: both ends of every conversation are here."""
        live = self.clients
        return [(live[i], live[i ^ 1]) for i in range(len(live) - len(live) % 2)]

    async def closed_loop(self, seconds: float, window: int) -> dict:
        """Every client keeps `window` messages in flight to its partner for `seconds`; returns what
        arrived within the time (count and latencies in µs)."""
        pairs = self._pairs()
        halves = [message_bytes(receiver.jid, index) for index, (_, receiver) in enumerate(pairs)]
        latencies = array("I")
        received = 0
        sent = 0
        deadline_ns = time.monotonic_ns() + int(seconds * 1e9)

        def send(sender: int) -> None:
            nonlocal sent
            head, tail = halves[sender]
            pairs[sender][0].connection.write(head + str(time.monotonic_ns()).encode() + tail)
            sent += 1

        def on_message(sender: int, sent_ns: int, now_ns: int) -> None:
            nonlocal received
            if now_ns <= deadline_ns:
                received += 1
                latencies.append(min((now_ns - sent_ns) // 1000, 0xFFFFFFFF))
                send(sender)

        for _, receiver in pairs:
            receiver.connection.on_message = on_message
        start = time.monotonic()
        for sender in range(len(pairs)):
            for _ in range(window):
                send(sender)
        await asyncio.sleep(max(0.0, deadline_ns / 1e9 - time.monotonic()))
        for _, receiver in pairs:
            receiver.connection.on_message = None
        return {"sent": sent, "received": received, "latencies_us": latencies.tobytes(),
                "start": start, "end": time.monotonic()}

    async def fixed_rate(self, rate: float, seconds: float, drain: float = 5.0) -> dict:
        """Send `rate` messages/s, round-robin over the pairs, for `seconds`; then wait up to `drain`
        seconds for the last ones."""
        pairs = self._pairs()
        halves = [message_bytes(receiver.jid, index) for index, (_, receiver) in enumerate(pairs)]
        latencies = array("I")

        def on_message(sender: int, sent_ns: int, now_ns: int) -> None:
            latencies.append(min((now_ns - sent_ns) // 1000, 0xFFFFFFFF))

        for _, receiver in pairs:
            receiver.connection.on_message = on_message
        total = int(rate * seconds)
        sent = 0
        start = time.monotonic()
        while sent < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            while sent < due:
                index = sent % len(pairs)
                head, tail = halves[index]
                pairs[index][0].connection.write(head + str(time.monotonic_ns()).encode() + tail)
                sent += 1
            await asyncio.sleep(0.001)
        send_end = time.monotonic()
        while len(latencies) < sent and time.monotonic() < send_end + drain:
            await asyncio.sleep(0.01)
        for _, receiver in pairs:
            receiver.connection.on_message = None
        return {"sent": sent, "received": len(latencies), "latencies_us": latencies.tobytes(),
                "start": start, "end": send_end}

    async def drop(self) -> dict:
        """Every connection is cut without closing its stream (a phone losing its radio)."""
        for client in self.clients:
            client.connection.abort()
        await asyncio.gather(*(client.connection.closed for client in self.clients))
        return {"dropped": len(self.clients)}

    async def resume_round_trips(self, target: Target, phones: list[str], sender: str, rounds: int,
                                 stanzas: int) -> dict:
        """Each phone, in turn and `rounds` times: drop its socket, the sender writes `stanzas`
        messages to its full JID (and pings the server, so they are routed), then the phone
        reconnects, resumes and receives them. Returns each round trip in µs, from the phone's TCP
        connect to its last redelivered message."""
        self.target = target
        writer = Client(sender)
        await login(target, writer, sm=False, presence=True)
        clients = [Client(name) for name in phones]
        for client in clients:
            await login(target, client, sm=True, presence=False)
        trips = array("I")
        failures: list[str] = []
        for round_ in range(rounds):
            for client in clients:
                h = client.connection.messages
                client.connection.abort()
                await client.connection.closed
                head, tail = message_bytes(client.jid, 0)
                writer.connection.write(b"".join(head + str(time.monotonic_ns()).encode() + tail
                                                 for _ in range(stanzas)))
                await ping(writer.connection, f"p{round_}")
                start = time.monotonic_ns()
                try:
                    connection = await resume(target, client, h)
                    deadline = time.monotonic() + STEP_TIMEOUT
                    while connection.messages < h + stanzas and time.monotonic() < deadline:
                        await asyncio.sleep(0.0005)
                except (OSError, LoginFailed, asyncio.TimeoutError) as error:
                    failures.append(f"{client.username}: {type(error).__name__}: {error}")
                    return {"round_trips_us": trips.tobytes(), "failures": failures}
                if connection.messages < h + stanzas:
                    failures.append(f"{client.username}: {connection.messages - h} of {stanzas} redelivered")
                    return {"round_trips_us": trips.tobytes(), "failures": failures}
                trips.append((time.monotonic_ns() - start) // 1000)
        self.clients += [writer, *clients]
        return {"round_trips_us": trips.tobytes(), "failures": failures}

    async def close(self) -> dict:
        """End every stream cleanly and wait (briefly) for the server to close."""
        for client in self.clients:
            client.connection.streaming = False
            client.connection.write(b"</stream:stream>")
        try:
            await asyncio.wait_for(asyncio.gather(*(c.connection.closed for c in self.clients)), 10)
        except asyncio.TimeoutError:
            pass
        for client in self.clients:
            client.connection.abort()
        closed = len(self.clients)
        self.clients = []
        return {"closed": closed}


async def ping(connection: Connection, id: str) -> None:
    """An XEP-0199 ping to the server: everything sent before it has been handled once it returns."""
    connection.streaming = False
    connection.write(f"<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>".encode())
    await connection.expect(re.compile(rb"<iq\b[^>]*?\bid=['\"]" + id.encode() + rb"['\"][^>]*?(?:/>|>.*?</iq>)",
                                       re.S))
    connection.streaming = True


def _worker_main(pipe) -> None:
    """A worker process: run each command the pipe brings on one event loop, answer with its result."""
    async def serve() -> None:
        worker = Worker()
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, pipe.recv)
            if command is None:
                return
            name, kwargs = command
            try:
                result = await getattr(worker, name)(**kwargs)
            except Exception as error:      # reported to the orchestrator, which stops the scenario
                result = {"error": f"{type(error).__name__}: {error}"}
            pipe.send(result)

    asyncio.run(serve())


class WorkerPool:
    """N load-generator processes; `run` sends one command to each and collects the answers."""

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes = []
        self.processes = []
        for _ in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(target=_worker_main, args=(theirs,), daemon=True)
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)
        self.run("ready", [{}] * count, 60)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def send(self, name: str, per_worker: list[dict]) -> None:
        for pipe, kwargs in zip(self.pipes, per_worker):
            pipe.send((name, kwargs))

    def collect(self, timeout: float) -> list[dict]:
        results = []
        deadline = time.monotonic() + timeout
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"a load-generator worker did not answer within {timeout:.0f} s")
            try:
                result = pipe.recv()
            except (EOFError, OSError) as error:
                raise RuntimeError(f"a load-generator worker died ({error!r}); see its traceback above") from None
            if "error" in result:
                raise RuntimeError(f"load-generator worker failed: {result['error']}")
            results.append(result)
        return results

    def run(self, name: str, per_worker: list[dict], timeout: float) -> list[dict]:
        self.send(name, per_worker)
        return self.collect(timeout)

    def close(self) -> None:
        for pipe, process in zip(self.pipes, self.processes):
            try:
                pipe.send(None)
            except OSError:
                pass
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()


def split(items: list, parts: int) -> list[list]:
    """items in `parts` contiguous slices of (almost) equal length, every slice of even length
    except maybe the last, so that conversation pairs stay in one worker."""
    pairs = len(items) // 2
    bounds = [2 * (pairs * k // parts) for k in range(parts)] + [len(items)]
    return [items[bounds[k]:bounds[k + 1]] for k in range(parts)]
