"""Logging in over real TCP+TLS with slixmpp: every SASL mechanism, both TLS modes, failures, conflicts."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import AuthFailed, Client, Disconnected, run


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
@pytest.mark.parametrize("direct_tls", [False, True], ids=["starttls", "direct-tls"])
def test_every_mechanism_logs_in(xmppd, account, mechanism, direct_tls):
    jid, password = account()

    async def scenario():
        client = await Client(xmppd, jid, password, mechanism=mechanism, direct_tls=direct_tls).login()
        assert client.boundjid.bare == jid
        assert client.boundjid.resource  # the server chose one
        await client.close()

    run(scenario())
    assert f"authenticated as {jid} ({mechanism})" in xmppd.log()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
def test_wrong_password_and_unknown_user_fail_alike(xmppd, account, mechanism):
    jid, password = account()

    async def attempt(who: str, secret: str):
        with pytest.raises(AuthFailed):
            await Client(xmppd, who, secret, mechanism=mechanism).login()

    run(attempt(jid, password + "x"))
    run(attempt("nobody-here@localhost", password))
    log = xmppd.log()
    user = jid.split("@")[0]
    assert f"authentication failed for '{user}' ({mechanism}): not-authorized" in log
    assert f"authentication failed for 'nobody-here' ({mechanism}): not-authorized" in log
    assert password not in log


def test_requested_resource_and_conflict(xmppd, account):
    jid, password = account()

    async def scenario():
        first = await Client(xmppd, f"{jid}/phone", password).login()
        assert str(first.boundjid) == f"{jid}/phone"
        gone = asyncio.get_running_loop().create_future()
        first.add_event_handler("disconnected", lambda *_: gone.done() or gone.set_result(True))
        second = await Client(xmppd, f"{jid}/phone", password).login()
        assert str(second.boundjid) == f"{jid}/phone"
        await asyncio.wait_for(gone, 5)
        assert [e["condition"] for e in first.stream_errors] == ["conflict"]
        # The new session is the one that gets the stanzas now.
        reply = await second["xep_0199"].ping(jid=None, timeout=5)
        await second.close()
        return reply

    run(scenario())
    assert "replaced by a new connection" in xmppd.log()


def test_server_chosen_resources_differ(xmppd, account):
    jid, password = account()

    async def scenario():
        a = await Client(xmppd, jid, password).login()
        b = await Client(xmppd, jid, password).login()
        assert a.boundjid.resource != b.boundjid.resource
        await a.close()
        await b.close()

    run(scenario())
