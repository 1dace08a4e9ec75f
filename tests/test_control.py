"""The control socket and the xmppctl commands that use it: status, kick, and deluser on a running
server (both backends), and what the socket does with bad requests."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import secrets
import socket
import stat
import subprocess
import sys

import pytest

from tests.conftest import start_xmppd
from tests.harness import XmppdProcess, run
from tests.lean_client import LeanClient
from tests.storage_fixtures import BACKENDS
from xmppd.storage import open_storage

CONFIG = "require_encryption = false\n"


def xmppctl(server: XmppdProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xmppd.ctl", "--config", str(server.config_path), *args],
                          capture_output=True, text=True, timeout=60)


def socket_path(server: XmppdProcess) -> str:
    return str(server.workdir / "xmppd.sock")


def account(server: XmppdProcess, name: str) -> LeanClient:
    password = secrets.token_urlsafe(12)
    jid = server.add_user(f"{name}-{secrets.token_hex(3)}", password)
    return LeanClient(jid, password, port=server.port, auto_ack=False)


def status_lines(server: XmppdProcess) -> dict[str, str]:
    result = xmppctl(server, "status")
    assert result.returncode == 0, result.stderr
    return dict(line.split(": ", 1) for line in result.stdout.splitlines()[1:])


@pytest.fixture(scope="module", params=BACKENDS)
def xmppd(request, tmp_path_factory, certificate):
    return start_xmppd(request, tmp_path_factory, certificate, request.param, CONFIG)


def test_status_counts_what_the_metrics_count(request, tmp_path_factory, certificate):
    for backend in BACKENDS:
        server = start_xmppd(request, tmp_path_factory, certificate, backend, CONFIG)
        alice, bob, carol = account(server, "alice"), account(server, "bob"), account(server, "carol")

        async def push_registration() -> None:
            storage = await open_storage(server.backend, **server.storage_kwargs)
            try:
                await storage.push_enable(bob.username, "push.localhost", "node-1", None,
                                          datetime.datetime.now(datetime.timezone.utc), 5)
            finally:
                await storage.close()

        async def scenario():
            await alice.login(sm=True)
            await bob.login(sm=True)
            bob.abort()                                  # hibernated
            await asyncio.sleep(0.3)
            assert status_lines(server) == {"connections": "1", "sessions": "1 live, 1 hibernated",
                                            "offline messages": "0", "push registrations": "0"}
            await alice.close()
            await push_registration()
            await carol.login()
            carol.send_message(f"{alice.username}@localhost", "for later")
            await carol.ping()
            await asyncio.sleep(0.3)
            assert status_lines(server) == {"connections": "1", "sessions": "1 live, 1 hibernated",
                                            "offline messages": "1", "push registrations": "1"}
            await carol.close()

        run(scenario())
        first = xmppctl(server, "status").stdout.splitlines()[0]
        assert first.startswith("xmppd ") and "serving localhost (pid " in first
        server.stop()
        stopped = xmppctl(server, "status")
        assert stopped.returncode == 3
        assert f"xmppd is not running (nothing listens on {socket_path(server)})" in stopped.stderr


def test_the_socket_is_private_and_a_stale_one_is_replaced(request, tmp_path_factory, certificate):
    server = start_xmppd(request, tmp_path_factory, certificate, "sqlite", CONFIG)
    mode = os.stat(socket_path(server)).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    server.kill()                                       # leaves the socket file behind
    assert os.path.exists(socket_path(server))
    server.start()
    assert xmppctl(server, "status").returncode == 0
    other_dir = server.workdir / "other"
    other_dir.mkdir()
    other = XmppdProcess(other_dir, "sqlite", server.cert, server.key,
                         CONFIG + f'\n[control]\nsocket = "{socket_path(server)}"\n')
    request.addfinalizer(other.cleanup)
    with pytest.raises(RuntimeError, match="another xmppd answers on the control socket"):
        other.start()
    assert xmppctl(server, "status").returncode == 0
    server.stop()
    assert not os.path.exists(socket_path(server))


def test_kick_ends_live_and_hibernated_sessions_and_keeps_their_messages(xmppd):
    alice, bob, second = account(xmppd, "alice"), account(xmppd, "bob"), account(xmppd, "dave")
    bob.auto_ack = True

    async def scenario():
        await alice.login(sm=True, resource="phone")
        await bob.login(sm=True)
        sent = bob.send_message(alice.jid, "not acknowledged")
        await alice.wait_until(lambda: any(m.id == sent for m in alice.received))
        result = xmppctl(xmppd, "kick", alice.jid)
        assert result.returncode == 0 and f"1 session(s) of {alice.jid} ended" in result.stdout
        await alice.wait_until(lambda: not alice.connected)
        assert alice.stream_error == "policy-violation"
        await alice.connect()
        assert (await alice.resume()).condition == "item-not-found"

        # A hibernated session is ended too: it cannot be resumed later.
        await second.login(sm=True)
        second.abort()
        await asyncio.sleep(0.3)
        assert "1 session(s)" in xmppctl(xmppd, "kick", f"{second.username}@localhost").stdout
        await second.connect()
        assert (await second.resume()).condition == "item-not-found"
        assert "has no sessions" in xmppctl(xmppd, "kick", f"{second.username}@localhost").stdout

        # What alice had not acknowledged is an offline message now, delivered once.
        fresh = LeanClient(f"{alice.username}@localhost", alice.password, port=xmppd.port)
        await fresh.login()
        await fresh.wait_until(lambda: any(m.id == sent for m in fresh.received))
        await fresh.wait_quiet(0.5)
        assert [m.id for m in fresh.received] == [sent]
        await fresh.close()
        await bob.close()

    run(scenario())
    assert "control: 1 sessions of" in xmppd.log()


def test_kick_one_resource_and_bad_arguments(xmppd):
    first = account(xmppd, "erin")
    second = LeanClient(f"{first.username}@localhost", first.password, port=xmppd.port)

    async def scenario():
        await first.login(resource="desk")
        await second.login(resource="phone")
        assert "1 session(s)" in xmppctl(xmppd, "kick", f"{first.username}@localhost/phone").stdout
        await second.wait_until(lambda: not second.connected)
        await first.ping()                               # the other resource stays
        await first.close()

    run(scenario())
    foreign = xmppctl(xmppd, "kick", "someone@elsewhere.example")
    assert foreign.returncode == 1 and "not an account of localhost" in foreign.stderr


def test_deluser_ends_the_sessions_of_a_running_server(xmppd):
    frank = account(xmppd, "frank")

    async def scenario():
        await frank.login()
        deleted = xmppctl(xmppd, "deluser", f"{frank.username}@localhost")
        assert deleted.returncode == 0, deleted.stderr
        await frank.wait_until(lambda: not frank.connected)
        assert frank.stream_error == "not-authorized"

    run(scenario())


def ask(server: XmppdProcess, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(socket_path(server))
        sock.sendall(data)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


@pytest.mark.parametrize("request_line, error", [
    (b"not json\n", "Expecting value"),
    (b"[1, 2]\n", 'a request is a JSON object with a "command"'),
    (b'{"command": "reboot"}\n', "unknown command 'reboot'"),
    (b'{"command": "kick", "jid": 5}\n', '"jid" must be a string'),
    (b'{"command": "kick", "jid": "a@@b"}\n', "is not a valid JID"),
    (b'{"command": "push-removed", "jid": "x@localhost", "registrations": [1]}\n', "must be a list of"),
])
def test_bad_requests_get_an_error_and_a_log_line(xmppd, request_line, error):
    answer = json.loads(ask(xmppd, request_line))
    assert answer["ok"] is False and error in answer["error"]
    assert "control: refused request" in xmppd.log()
    assert json.loads(ask(xmppd, b'{"command": "status"}\n'))["ok"] is True


def test_an_oversized_request_closes_the_connection(xmppd):
    answer = json.loads(ask(xmppd, b"x" * 70000 + b"\n").splitlines()[0])
    assert answer == {"ok": False, "error": "request longer than 65536 bytes"}
