"""Push across a graceful restart: a restored hibernated session still wakes its phone (its push
registration is linked to it again), and `xmppctl push remove` on the running server stops that at
once (the server drops what it kept in memory for the registration)."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys

import pytest

from tests.conftest import start_xmppd
from tests.harness import run
from tests.lean_client import LeanClient
from tests.push_fakes import FakeFCM
from tests.storage_fixtures import BACKENDS
from tests.test_push import enable_push, register_p2

COALESCE_WINDOW = 0.5


@pytest.fixture(scope="module")
def fcm():
    fake = FakeFCM()
    fake.start()
    yield fake
    fake.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_restored_session_wakes_its_phone_until_push_is_removed(request, tmp_path_factory, certificate,
                                                                    fcm, backend):
    directory = tmp_path_factory.mktemp("fcm")
    server = start_xmppd(request, tmp_path_factory, certificate, backend, f"""require_encryption = false

[modules]
enabled = ["offline", "stream_mgmt", "push", "appserver"]

[push]
coalesce_window = {COALESCE_WINDOW}

[appserver]
default_fcm_app = "droid"
rate_limit = 100.0
rate_burst = 100

{fcm.app_toml("droid", directory / "fcm.json")}""")
    phone_jid, contact_jid = (server.add_user(f"{name}-{secrets.token_hex(3)}", "secret-password")
                              for name in ("phone", "contact"))
    token = f"fcm-{secrets.token_hex(8)}"

    async def scenario():
        phone = LeanClient(phone_jid, "secret-password", port=server.port, auto_ack=False)
        await phone.login(sm=True, resource="phone")
        registration = await register_p2(phone, token, secrets.token_hex(8))
        await enable_push(phone, registration["jid"], registration["node"], secret=registration["secret"])
        server.stop()
        phone.abort()
        server.start()

        contact = await LeanClient(contact_jid, "secret-password", port=server.port).login()
        fcm.clear()
        contact.send_message(phone.jid, "are you there?")
        [push] = await fcm.requests_arrived(1, timeout=10)
        assert push.token == token and push.data["kind"] == "message"

        removed = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "xmppd.ctl", "--config", str(server.config_path), "push",
                             "remove", phone_jid], capture_output=True, text=True, timeout=60)
        assert removed.returncode == 0 and "1 push registration(s)" in removed.stdout, removed.stderr
        await asyncio.sleep(COALESCE_WINDOW * 2)
        fcm.clear()
        contact.send_message(phone.jid, "hello?")
        await contact.ping()
        await asyncio.sleep(COALESCE_WINDOW * 3)
        assert fcm.requests == []

        await phone.connect()
        assert (await phone.resume()).resumed
        phone.auto_ack = True
        await phone.wait_until(lambda: [m.body for m in phone.received if m.body] == ["are you there?", "hello?"])
        await phone.close()
        await contact.close()

    run(scenario())
    assert "removed by the administrator" in server.log()
