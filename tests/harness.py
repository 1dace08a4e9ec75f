"""A real xmppd process for integration tests, and slixmpp clients that talk to it.

Each XmppdProcess runs `python -m xmppd.main` with its own config, data and
ports on 127.0.0.1, on SQLite or on a fresh PostgreSQL schema. Clients are
real slixmpp ClientXMPP objects over real TCP and TLS.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from tests.storage_fixtures import backend_config
from xmppd.sasl import derive_credentials
from xmppd.storage import open_storage

DOMAIN = "localhost"
START_TIMEOUT = 30.0


def free_ports(count: int) -> list[int]:
    """Distinct free ports: all sockets stay bound until every port is picked."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class XmppdProcess:
    def __init__(self, workdir: Path, backend: str, cert: str, key: str, extra_toml: str = "") -> None:
        self.workdir = workdir
        self.backend = backend
        self.cert = cert
        self.key = key
        self.port, self.tls_port = free_ports(2)
        self.log_path = workdir / "xmppd.log"
        self.config_path = workdir / "xmppd.toml"
        self.storage_kwargs, self._remove_storage = asyncio.run(backend_config(backend, workdir))
        storage_lines = [f'backend = "{backend}"']
        if backend == "sqlite":
            storage_lines.append(f'sqlite_path = "{self.storage_kwargs["sqlite_path"]}"')
        else:
            storage_lines.append(f"postgresql_dsn = {self.storage_kwargs['postgresql_dsn']!r}")
        self.config_path.write_text(f"""
[server]
domain = "{DOMAIN}"

[logging]
level = "debug"

[storage]
{chr(10).join(storage_lines)}

[tls]
certificate = "{cert}"
private_key = "{key}"

[c2s]
interfaces = ["127.0.0.1"]
port = {self.port}
direct_tls_port = {self.tls_port}
{extra_toml}
""")
        self.process: subprocess.Popen | None = None

    def start(self) -> "XmppdProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "xmppd.main", "--config", str(self.config_path)],
                                        stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"xmppd exited with {self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"xmppd did not listen within {START_TIMEOUT} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL: no shutdown, nothing flushed. What the server acknowledged must already be durable."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> "XmppdProcess":
        """Start again with the same configuration, storage and ports (the log is appended to)."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        self.stop()
        asyncio.run(self._remove_storage())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def add_user(self, username: str, password: str) -> str:
        """Create an account directly in storage (xmppctl is tested on its own)."""
        async def create() -> None:
            storage = await open_storage(self.backend, **self.storage_kwargs)
            try:
                await storage.create_user(username, derive_credentials(password, 4096))
            finally:
                await storage.close()

        asyncio.run(create())
        return f"{username}@{DOMAIN}"

    def add_users(self, usernames: list[str], password: str) -> list[str]:
        """Create many accounts with one password (its keys derived once, one storage connection)."""
        credentials = derive_credentials(password, 4096)

        async def create() -> None:
            storage = await open_storage(self.backend, **self.storage_kwargs)
            try:
                for start in range(0, len(usernames), 50):
                    await asyncio.gather(*(storage.create_user(name, credentials)
                                           for name in usernames[start:start + 50]))
            finally:
                await storage.close()

        asyncio.run(create())
        return [f"{name}@{DOMAIN}" for name in usernames]


class Client(slixmpp.ClientXMPP):
    """A slixmpp client that records what it receives, for assertions."""

    def __init__(self, server: XmppdProcess, jid: str, password: str, *, mechanism: str | None = None,
                 direct_tls: bool = False, plaintext: bool = False) -> None:
        mechanisms = {"use_mech": mechanism} if mechanism else {}
        if plaintext:   # slixmpp refuses to authenticate in clear text unless told to
            mechanisms.update(unencrypted_scram=True, unencrypted_plain=True)
        plugin_config = {"feature_mechanisms": mechanisms}
        super().__init__(jid, password, plugin_config=plugin_config)
        self.xmppd = server
        self.direct_tls = direct_tls
        self.enable_direct_tls = direct_tls
        self.enable_starttls = not direct_tls and not plaintext
        self.enable_plaintext = plaintext
        self.ca_certs = server.cert
        self.auto_authorize = None      # subscription requests are answered by the tests
        self.auto_subscribe = False
        for plugin in ("xep_0030", "xep_0199", "xep_0092", "xep_0054", "xep_0077"):
            self.register_plugin(plugin)
        self.messages: asyncio.Queue = asyncio.Queue()
        self.presences: asyncio.Queue = asyncio.Queue()
        self.roster_pushes: asyncio.Queue = asyncio.Queue()
        self.stream_errors: list = []
        self._outcome: asyncio.Future = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _: self._settle(True))
        self.add_event_handler("failed_all_auth", lambda _: self._settle(AuthFailed(jid)))
        self.add_event_handler("disconnected", lambda reason: self._settle(Disconnected(reason)))
        self.add_event_handler("message", self.messages.put_nowait)
        self.add_event_handler("presence", self.presences.put_nowait)
        self.add_event_handler("roster_update", self.roster_pushes.put_nowait)
        self.add_event_handler("stream_error", self.stream_errors.append)

    def _settle(self, outcome) -> None:
        if not self._outcome.done():
            self._outcome.set_result(outcome)

    async def login(self, timeout: float = 15.0) -> "Client":
        """Connect and authenticate; raises AuthFailed or Disconnected."""
        port = self.xmppd.tls_port if self.direct_tls else self.xmppd.port
        self.connect("127.0.0.1", port)
        outcome = await asyncio.wait_for(self._outcome, timeout)
        if outcome is not True:
            self.abort()
            raise outcome
        return self

    async def close(self) -> None:
        if self.transport is not None:
            await self.disconnect(wait=2.0)

    async def next_message(self, timeout: float = 5.0):
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def next_presence(self, timeout: float = 5.0, *, types: tuple[str, ...] | None = None):
        while True:
            presence = await asyncio.wait_for(self.presences.get(), timeout)
            if types is None or presence["type"] in types:
                return presence


class AuthFailed(Exception):
    pass


class Disconnected(Exception):
    pass


async def iq_error_condition(awaitable) -> str:
    """The error condition an iq came back with (fails the test if it succeeded)."""
    try:
        await awaitable
    except IqError as error:
        return error.iq["error"]["condition"]
    except IqTimeout:
        return "timeout"
    raise AssertionError("the iq succeeded")


def run(coro, timeout: float = 60.0):
    """Run one async test scenario with a hard time limit."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def raw_connect(server: XmppdProcess, *, tls_port: bool = False) -> socket.socket:
    """A plain socket to the server, for speaking broken XML on purpose."""
    port = server.tls_port if tls_port else server.port
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def read_until(sock: socket.socket, marker: bytes, limit: int = 1 << 20, timeout: float = 10.0) -> bytes:
    """Read from a socket until `marker` appears or the peer closes."""
    sock.settimeout(timeout)
    data = b""
    while marker not in data and len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


__all__ = ["XmppdProcess", "Client", "AuthFailed", "Disconnected", "iq_error_condition", "run", "raw_connect",
           "read_until", "DOMAIN", "os"]


def listening(client: Client) -> Client:
    """Queue every message the client receives in client.every_message (for drain_messages)."""
    client.every_message = asyncio.Queue()
    client.register_handler(Callback("every message", MatchXPath("{jabber:client}message"),
                                     client.every_message.put_nowait))
    return client


async def drain_messages(client: Client, seconds: float = 1.0) -> list:
    """Every message that arrives until none has for `seconds`, bodiless ones too (slixmpp's
    "message" event skips those); the client must be listening()."""
    messages = []
    while True:
        try:
            messages.append(await asyncio.wait_for(client.every_message.get(), seconds))
        except asyncio.TimeoutError:
            return messages
