"""SIGHUP reloads the configuration: certificates, log level and module options change for new work,
no session is dropped, options bound at start wait for a restart (and say so), and a broken file
changes nothing (the log says why, as check-config would)."""

from __future__ import annotations

import dataclasses
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import start_xmppd
from tests.harness import XmppdProcess, run
from tests.lean_client import LeanClient
from tests.storage_fixtures import BACKENDS
from xmppd.certs import generate_self_signed
from xmppd.config import default_config
from xmppd.reload import merge

CONFIG = """require_encryption = false

[stream_mgmt]
resume_timeout = 300
"""


# ---------------------------------------------------------------- merge(), without a server
def changed(config, **sections):
    return dataclasses.replace(config, **{name: dataclasses.replace(getattr(config, name), **values)
                                          for name, values in sections.items()})


def test_merge_applies_what_can_change_and_keeps_what_needs_a_restart():
    running = default_config("/etc/xmppd")
    loaded = changed(running, c2s={"port": 5300, "ping_interval": 10.0}, storage={"backend": "postgresql"},
                     stream_mgmt={"max_queue": 50}, logging={"level": "debug"},
                     modules={"enabled": ("offline",)}, appserver={"rate_limit": 5.0})
    merged, kept = merge(running, loaded)
    assert kept == ["[storage] backend", "[c2s] port", "[modules] enabled", "[appserver] rate_limit"]
    assert merged.c2s.port == 5222 and merged.storage.backend == "sqlite"
    assert merged.modules == running.modules and merged.appserver == running.appserver
    assert merged.c2s.ping_interval == 10.0 and merged.stream_mgmt.max_queue == 50
    assert merged.logging.level == "debug"


def test_merge_keeps_tls_on_or_off():
    running = default_config("/etc/xmppd")
    with_tls = changed(running, tls={"certificate": "/etc/xmppd/cert.pem", "private_key": "/etc/xmppd/key.pem"})
    merged, kept = merge(running, with_tls)
    assert kept == ["[tls] certificate", "[tls] private_key"] and merged.tls == running.tls
    moved = changed(with_tls, tls={"certificate": "/etc/xmppd/new.pem", "private_key": "/etc/xmppd/new.key"})
    merged, kept = merge(with_tls, moved)
    assert kept == [] and merged.tls == moved.tls


def test_an_unchanged_file_changes_nothing():
    running = default_config("/etc/xmppd")
    assert merge(running, running) == (running, [])


# ---------------------------------------------------------------- a real server
def reload_and_wait(server: XmppdProcess, marker: str, timeout: float = 15.0) -> str:
    """SIGHUP, then the log from that moment once it holds `marker`."""
    start = len(server.log())
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tail = server.log()[start:]
        if marker in tail:
            return tail
        time.sleep(0.05)
    raise AssertionError(f"{marker!r} not logged after SIGHUP:\n{server.log()[start:]}")


def peer_certificate(server: XmppdProcess) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", server.tls_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True)


def der(path: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(Path(path).read_text())


@pytest.mark.parametrize("backend", BACKENDS)
def test_reload_applies_the_file_without_dropping_a_session(request, tmp_path_factory, certificate, backend):
    server = start_xmppd(request, tmp_path_factory, certificate, backend, CONFIG)
    password = secrets.token_urlsafe(12)
    jid = server.add_user(f"alice-{secrets.token_hex(3)}", password)
    original = server.config_path.read_text()
    assert peer_certificate(server) == der(server.cert)
    new_cert, new_key = str(server.workdir / "new.crt"), str(server.workdir / "new.key")
    generate_self_signed("localhost", new_cert, new_key)

    async def scenario():
        alice = await LeanClient(jid, password, port=server.port).login(sm=True, resource="phone")
        assert alice.sm_max == 300
        assert f"stream management enabled for {alice.jid}" in server.log()   # debug, the level at start

        server.config_path.write_text(
            original.replace(server.cert, new_cert).replace(server.key, new_key)
            .replace('level = "debug"', 'level = "info"')
            .replace(f"port = {server.port}", f"port = {server.port + 1}")
            .replace("resume_timeout = 300", "resume_timeout = 60"))
        tail = reload_and_wait(server, "configuration reloaded")
        assert f"reload: needs a restart: [c2s] port (the file says {server.port + 1}; {server.port} stays " \
               "in use until then)" in tail
        assert "1 changes wait for a restart" in tail

        await alice.ping()                                # the session survived
        assert peer_certificate(server) == der(new_cert)  # new connections get the new certificate
        later = await LeanClient(jid, password, port=server.port).login(sm=True, resource="laptop")
        assert later.sm_max == 60                         # stream_mgmt re-read its options
        await later.ping()
        assert f"stream management enabled for {later.jid}" not in server.log()   # info since the reload
        await later.close()
        await alice.ping()
        await alice.close()

    run(scenario())


def test_a_broken_file_keeps_the_running_configuration(request, tmp_path_factory, certificate):
    server = start_xmppd(request, tmp_path_factory, certificate, "sqlite", CONFIG)
    password = secrets.token_urlsafe(12)
    jid = server.add_user(f"bob-{secrets.token_hex(3)}", password)
    original = server.config_path.read_text()

    async def scenario():
        bob = await LeanClient(jid, password, port=server.port).login(sm=True)
        server.config_path.write_text(original.replace("resume_timeout = 300", "resume_timeout = 0")
                                      + "\n[bogus]\nx = 1\n")
        check = subprocess.run([sys.executable, "-m", "xmppd.ctl", "--config", str(server.config_path),
                                "check-config"], capture_output=True, text=True, timeout=60)
        assert check.returncode == 2
        problems = check.stderr.splitlines()[1:]
        assert len(problems) == 2
        assert any("[stream_mgmt] resume_timeout = 0: must be a number" in line for line in problems)
        assert any("[bogus]: unknown section" in line for line in problems)
        tail = reload_and_wait(server, "the running configuration stays in use")
        for problem in problems:
            assert problem in tail
        await bob.ping()
        again = await LeanClient(jid, password, port=server.port).login(sm=True, resource="other")
        assert again.sm_max == 300                       # the old options still hold
        await again.close()

        # An unreadable certificate is refused too, before anything changes.
        Path(server.workdir / "broken.crt").write_text("not a certificate\n")
        server.config_path.write_text(original.replace(server.cert, str(server.workdir / "broken.crt"))
                                      .replace("resume_timeout = 300", "resume_timeout = 60"))
        tail = reload_and_wait(server, "the running configuration stays in use")
        assert "holds no usable PEM certificate" in tail
        third = await LeanClient(jid, password, port=server.port).login(sm=True, resource="third")
        assert third.sm_max == 300
        await third.close()

        server.config_path.write_text(original.replace("resume_timeout = 300", "resume_timeout = 60"))
        reload_and_wait(server, "configuration reloaded")
        fourth = await LeanClient(jid, password, port=server.port).login(sm=True, resource="fourth")
        assert fourth.sm_max == 60
        await fourth.close()
        await bob.ping()
        await bob.close()

    run(scenario())
