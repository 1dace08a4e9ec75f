"""sd_notify: the datagrams xmppd sends to systemd, on real AF_UNIX sockets, and when a real server sends them."""

from __future__ import annotations

import secrets
import signal
import socket
import sqlite3
import threading
import time

import psycopg
import pytest

from tests.harness import XmppdProcess, free_ports
from tests.storage_fixtures import BACKENDS
from xmppd import sdnotify
from xmppd.storage.migrations import MIGRATIONS


@pytest.fixture
def path_listener(tmp_path, monkeypatch):
    """A datagram socket at a path, named by NOTIFY_SOCKET, as systemd sets it up."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode("utf-8").split("\n")


def test_ready_reaches_a_path_socket(path_listener):
    assert sdnotify.ready("serving localhost")
    assert received(path_listener) == ["READY=1", "STATUS=serving localhost"]


def test_abstract_socket(monkeypatch):
    name = f"xmppd-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.stopping()
        assert received(sock) == ["STOPPING=1"]


def test_reloading_carries_the_monotonic_time(path_listener):
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading, stamp = received(path_listener)
    assert reloading == "RELOADING=1"
    assert stamp.startswith("MONOTONIC_USEC=") and before <= int(stamp.split("=")[1]) <= after
    assert sdnotify.ready()
    assert received(path_listener) == ["READY=1"]


def test_a_newline_in_the_status_cannot_add_an_assignment(path_listener):
    assert sdnotify.status("could not start:\nREADY=1")
    assert received(path_listener) == ["STATUS=could not start: READY=1"]


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sdnotify.ready() is False


def test_a_missing_or_odd_socket_is_logged_not_raised(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.ready() is False
    messages = [record.getMessage() for record in caplog.records]
    assert any("could not notify the service manager" in m and "nobody-listens" in m for m in messages)
    assert any("neither a path nor an abstract socket" in m for m in messages)


class ReadinessWatcher(threading.Thread):
    """Receives the server's datagrams; at READY=1 it checks at once what must be true by then."""

    def __init__(self, sock: socket.socket, server: XmppdProcess, metrics_port: int) -> None:
        super().__init__(daemon=True)
        self.sock, self.server, self.metrics_port = sock, server, metrics_port
        self.messages: list[list[str]] = []
        self.seen = 0   # messages wait_for() has looked at
        self.at_ready: dict = {}

    def run(self) -> None:
        self.sock.settimeout(60)
        while True:
            try:
                lines = received(self.sock)
            except OSError:
                return
            self.messages.append(lines)
            if "READY=1" in lines and not self.at_ready:
                self.at_ready = {"ports": [self._accepts(p) for p in
                                           (self.server.port, self.server.tls_port, self.metrics_port)],
                                 "schema": self._schema_version()}
            if "STOPPING=1" in lines:
                return

    @staticmethod
    def _accepts(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return True
        except OSError:
            return False

    def _schema_version(self) -> int:
        query = "SELECT MAX(version) FROM schema_version"
        if self.server.backend == "sqlite":
            uri = f"file:{self.server.storage_kwargs['sqlite_path']}?mode=ro"
            with sqlite3.connect(uri, uri=True) as connection:
                return connection.execute(query).fetchone()[0]
        with psycopg.connect(self.server.storage_kwargs["postgresql_dsn"]) as connection:
            return connection.execute(query).fetchone()[0]


def wait_for(watcher: ReadinessWatcher, line: str) -> list[str]:
    """The first datagram (after those already looked at) holding `line`."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for lines in watcher.messages[watcher.seen:]:
            watcher.seen += 1
            if line in lines:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"no {line!r} within 30 s; got {watcher.messages}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_server_is_ready_only_once_migrated_and_listening(backend, tmp_path, certificate, monkeypatch):
    [metrics_port] = free_ports(1)
    server = XmppdProcess(tmp_path, backend, *certificate,
                          extra_toml=f"\n[metrics]\nport = {metrics_port}\n")
    notify_path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(notify_path)
        monkeypatch.setenv("NOTIFY_SOCKET", notify_path)   # the server process inherits it
        watcher = ReadinessWatcher(sock, server, metrics_port)
        watcher.start()
        try:
            server.start()
            deadline = time.monotonic() + 30
            while not watcher.at_ready and time.monotonic() < deadline:
                time.sleep(0.05)
            assert watcher.at_ready, f"no READY=1 within 30 s; got {watcher.messages}\n{server.log()}"
            assert watcher.at_ready == {"ports": [True, True, True], "schema": MIGRATIONS[-1].version}
            ready = next(lines for lines in watcher.messages if "READY=1" in lines)
            [status] = [line for line in ready if line.startswith("STATUS=serving localhost; listening on ")]
            assert f"127.0.0.1:{server.port}," in status and "(control)" in status, status
            # SIGHUP: RELOADING=1, then READY=1 again, saying whether the file was taken.
            server.process.send_signal(signal.SIGHUP)
            assert wait_for(watcher, "STATUS=configuration reloaded")[0] == "READY=1"
            reloading = watcher.messages[-2]
            assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC="), watcher.messages
            server.config_path.write_text(server.config_path.read_text() + "\n[c2s]\nport = -1\n")
            server.process.send_signal(signal.SIGHUP)
            assert wait_for(watcher, "STATUS=reload failed, the previous configuration stays in use "
                                     "(see the log)")[0] == "READY=1"
            server.stop()
            watcher.join(30)
            assert watcher.messages[-1][0] == "STOPPING=1", watcher.messages
        finally:
            server.cleanup()
