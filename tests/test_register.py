"""XEP-0077 in-band registration with slixmpp: create, duplicate, change password, cancel."""

from __future__ import annotations

import asyncio
import secrets

from slixmpp.exceptions import IqError

from tests.harness import AuthFailed, Client, Disconnected, run

XMPPD_EXTRA_CONFIG = """
[modules]
enabled = ["version", "vcard", "register"]

[register]
min_interval = 0.0
"""


class Registrant(Client):
    """Registers its JID in-band before logging in, the way a client's "create account" button does."""

    def __init__(self, xmppd, jid, password):
        super().__init__(xmppd, jid, password)
        self.plugin["xep_0077"].create_account = True
        self.outcome = asyncio.get_event_loop().create_future()
        self.add_event_handler("register", self._register)

    async def _register(self, form):
        fields = {child.tag.split("}")[1] for child in form.xml.find("{jabber:iq:register}query")}
        assert {"username", "password", "instructions"} <= fields
        iq = self.Iq(stype="set")
        iq["register"]["username"] = self.boundjid.user
        iq["register"]["password"] = self.password
        try:
            await iq.send(timeout=5)
            self.outcome.set_result("registered")
        except IqError as error:
            self.outcome.set_result(error.iq["error"]["condition"])
            self.abort()


def test_register_login_change_password_and_cancel(xmppd):
    jid = f"newbie-{secrets.token_hex(4)}@localhost"

    async def scenario():
        first = Registrant(xmppd, jid, "a-long-password")
        await first.login()
        assert first.outcome.result() == "registered"
        await first.plugin["xep_0077"].change_password("another-long-password", timeout=5)
        await first.close()
        with_new = await Client(xmppd, jid, "another-long-password").login()
        duplicate = Registrant(xmppd, jid, "whatever-password")
        try:
            await duplicate.login(timeout=5)
        except (AuthFailed, Disconnected):
            pass
        assert duplicate.outcome.result() == "conflict"
        gone = asyncio.get_running_loop().create_future()
        with_new.add_event_handler("disconnected", lambda *_: gone.done() or gone.set_result(True))
        await with_new.plugin["xep_0077"].cancel_registration(timeout=5)
        await asyncio.wait_for(gone, 5)
        try:
            await Client(xmppd, jid, "another-long-password").login(timeout=5)
        except AuthFailed:
            return
        raise AssertionError("the cancelled account still logs in")

    run(scenario())
    log = xmppd.log()
    assert f"created {jid}" in log and f"changed the password of {jid}" in log and f"removed {jid}" in log
    assert "a-long-password" not in log


def test_short_password_is_not_acceptable(xmppd):
    async def scenario():
        client = Registrant(xmppd, f"short-{secrets.token_hex(4)}@localhost", "short")
        try:
            await client.login(timeout=5)
        except (AuthFailed, Disconnected):
            pass
        return client.outcome.result()

    assert run(scenario()) == "not-acceptable"
