"""xmppctl against both storage backends, as an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.harness import Client, run
from tests.storage_fixtures import BACKENDS


def xmppctl(config_path, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xmppd.ctl", "--config", str(config_path), *args],
                          input=stdin, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module", params=BACKENDS)
def xmppd(request, tmp_path_factory, certificate):
    from tests.conftest import start_xmppd

    return start_xmppd(request, tmp_path_factory, certificate, request.param)


def test_adduser_passwd_deluser_listusers(xmppd):
    config = xmppd.config_path
    created = xmppctl(config, "adduser", "ctl-alice@localhost", stdin="first-password\n")
    assert created.returncode == 0, created.stderr
    assert "created ctl-alice@localhost" in created.stdout
    again = xmppctl(config, "adduser", "ctl-alice", stdin="other\n")
    assert again.returncode == 1 and "exists already" in again.stderr
    assert "ctl-alice@localhost" in xmppctl(config, "listusers").stdout.split()

    async def login(password: str):
        client = await Client(xmppd, "ctl-alice@localhost", password).login()
        await client.close()

    run(login("first-password"))
    changed = xmppctl(config, "passwd", "ctl-alice@localhost", stdin="second-password\n")
    assert changed.returncode == 0, changed.stderr
    run(login("second-password"))
    deleted = xmppctl(config, "deluser", "ctl-alice@localhost")
    assert deleted.returncode == 0 and "all its data" in deleted.stdout
    assert "ctl-alice@localhost" not in xmppctl(config, "listusers").stdout.split()
    missing = xmppctl(config, "deluser", "ctl-alice@localhost")
    assert missing.returncode == 1 and "no account ctl-alice@localhost" in missing.stderr


def test_bad_arguments_are_explained(xmppd):
    config = xmppd.config_path
    foreign = xmppctl(config, "adduser", "bob@elsewhere.example", stdin="pw\n")
    assert foreign.returncode == 1 and "not an account of localhost" in foreign.stderr
    empty = xmppctl(config, "adduser", "bob", stdin="\n")
    assert empty.returncode == 1 and "empty password" in empty.stderr
    invalid = xmppctl(config, "adduser", "bad user@localhost", stdin="pw\n")
    assert invalid.returncode == 1 and "not a valid JID" in invalid.stderr


def test_check_config_prints_effective_settings_and_fails_on_errors(xmppd, tmp_path):
    ok = xmppctl(xmppd.config_path, "check-config")
    assert ok.returncode == 0, ok.stderr
    assert "[c2s]" in ok.stdout and f"port = {xmppd.port}" in ok.stdout
    broken = tmp_path / "broken.toml"
    broken.write_text('[c2s]\nport = 70000\n')
    bad = xmppctl(broken, "check-config")
    assert bad.returncode == 2
    assert "[c2s] port = 70000: must be an integer from 0 to 65535" in bad.stderr


def test_cert_generate_makes_a_certificate_the_config_can_use(tmp_path):
    config = tmp_path / "xmppd.toml"
    config.write_text('[server]\ndomain = "chat.example.org"\n[tls]\ncertificate = "certs/cert.pem"\n'
                      'private_key = "certs/key.pem"\n[storage]\nsqlite_path = "x.sqlite3"\n')
    made = xmppctl(config, "cert", "generate")
    assert made.returncode == 0, made.stderr
    assert "chat.example.org" in made.stdout
    assert oct(os.stat(tmp_path / "certs" / "key.pem").st_mode & 0o777) == "0o600"
    assert xmppctl(config, "check-config").returncode == 0
    again = xmppctl(config, "cert", "generate")
    assert again.returncode == 1 and "--force" in again.stderr
    assert xmppctl(config, "cert", "generate", "--force").returncode == 0


def test_push_list_and_remove(xmppd):
    from datetime import datetime, timezone

    from xmppd.storage import open_storage

    config = xmppd.config_path
    assert xmppctl(config, "adduser", "ctl-push", stdin="a-password\n").returncode == 0

    async def enable():
        storage = await open_storage(xmppd.backend, **xmppd.storage_kwargs)
        try:
            now = datetime.now(timezone.utc)
            for node in ("node-1", "node-2"):
                await storage.push_enable("ctl-push", "push.localhost", node, None, now, 5)
            await storage.push_enable("ctl-push", "p2.example", "node-3", None, now, 5)
        finally:
            await storage.close()

    run(enable())
    listed = xmppctl(config, "push", "list", "ctl-push")
    assert listed.returncode == 0, listed.stderr
    assert sorted(line.split("\t")[:2] for line in listed.stdout.splitlines()) == [
        ["p2.example", "node=node-3"], ["push.localhost", "node=node-1"], ["push.localhost", "node=node-2"]]
    assert "last success=never" in listed.stdout
    one = xmppctl(config, "push", "remove", "ctl-push", "--service", "push.localhost", "--node", "node-2")
    assert one.returncode == 0 and "1 push registration(s)" in one.stdout
    alone = xmppctl(config, "push", "remove", "ctl-push", "--node", "node-1")
    assert alone.returncode == 1 and "--node needs --service" in alone.stderr
    rest = xmppctl(config, "push", "remove", "ctl-push")
    assert rest.returncode == 0 and "2 push registration(s)" in rest.stdout
    assert "has no push registrations" in xmppctl(config, "push", "list", "ctl-push").stdout
