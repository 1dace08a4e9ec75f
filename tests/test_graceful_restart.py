"""A graceful stop (SIGTERM) keeps resumable XEP-0198 sessions: after the restart a client resumes with
its previd and gets exactly what it had not acknowledged, once, in order; a client that does not come
back gets those messages as offline messages once the window is over. A SIGKILL loses nothing
acknowledged either (it needs no resumption)."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from tests.conftest import start_xmppd
from tests.harness import XmppdProcess, run
from tests.lean_client import LeanClient
from tests.storage_fixtures import BACKENDS

CONFIG = """
require_encryption = false

[stream_mgmt]
resume_timeout = {window}
"""


def start(request, tmp_path_factory, certificate, backend: str, window: float = 300) -> XmppdProcess:
    return start_xmppd(request, tmp_path_factory, certificate, backend, CONFIG.format(window=window))


def accounts(server: XmppdProcess) -> tuple[LeanClient, LeanClient]:
    password = secrets.token_urlsafe(12)
    alice, bob = (server.add_user(f"{name}-{secrets.token_hex(3)}", password) for name in ("alice", "bob"))
    return (LeanClient(alice, password, port=server.port, auto_ack=False),
            LeanClient(bob, password, port=server.port))


async def unacked_messages_at_stop(server: XmppdProcess, alice: LeanClient, bob: LeanClient) -> list[str]:
    """alice (stream management with resumption) acknowledges two messages from bob; three more reach
    her socket while she reads nothing; bob's server acknowledged all five. Then SIGTERM: the returned
    ids are those alice never handled."""
    await alice.login(sm=True, resource="phone")
    await bob.login(sm=True)
    await alice.wait_until(lambda: alice.h_in >= 1)        # her own presence
    handled = [bob.send_message(alice.jid, f"early {n}") for n in range(2)]
    await alice.wait_until(lambda: {m.id for m in alice.received} >= set(handled))
    alice.send_message(bob.jid, "hello from alice")
    alice.send_ack()
    await alice.wait_all_acked()
    alice.stop_reading()
    pending = [bob.send_message(alice.jid, f"late {n}") for n in range(3)]
    await bob.wait_all_acked()
    await asyncio.sleep(0.5)   # the server has written them to alice's socket
    server.stop()
    await bob.wait_until(lambda: not bob.connected, 10)
    assert bob.stream_error == "system-shutdown"
    alice.abort()              # what she did not read is gone with the socket
    return pending


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_session_resumes_after_a_graceful_restart(request, tmp_path_factory, certificate, backend):
    server = start(request, tmp_path_factory, certificate, backend)
    alice, bob = accounts(server)

    async def scenario():
        pending = await unacked_messages_at_stop(server, alice, bob)
        before = len(alice.received)
        server.start()
        await alice.connect()
        result = await alice.resume()
        assert result.resumed and result.h == 2    # her presence and her message were handled
        assert not alice.unacked
        await alice.wait_until(lambda: len(alice.received) >= before + 3)
        await alice.wait_quiet(1.0)
        again = alice.received[before:]
        assert [m.id for m in again] == pending and all(m.delayed for m in again)
        await alice.ack()
        alice.send_ack()
        await alice.ping()
        await alice.close()
        # The resumed copies were the only ones: a fresh login finds no offline messages.
        fresh = LeanClient(f"{alice.username}@{alice.domain}", alice.password, port=server.port)
        await fresh.login()
        await fresh.ping()
        await fresh.wait_quiet(1.0)
        assert [m for m in fresh.received if m.id in pending] == []
        await fresh.close()

    run(scenario())
    assert "resumable sessions saved for the restart" in server.log()


@pytest.mark.parametrize("backend", BACKENDS)
def test_after_the_restart_the_window_ends_and_messages_are_offline(request, tmp_path_factory, certificate,
                                                                     backend):
    server = start(request, tmp_path_factory, certificate, backend, window=2)
    alice, bob = accounts(server)

    async def scenario():
        pending = await unacked_messages_at_stop(server, alice, bob)
        server.start()
        await asyncio.sleep(3.5)   # the restored session's window (2 s) is over
        await alice.connect()
        result = await alice.resume()
        assert not result.resumed and result.condition == "item-not-found"
        fresh = LeanClient(f"{alice.username}@{alice.domain}", alice.password, port=server.port)
        await fresh.login()
        await fresh.wait_until(lambda: {m.id for m in fresh.received} >= set(pending))
        await fresh.wait_quiet(1.0)
        ids = [m.id for m in fresh.received if m.type == "chat"]
        assert ids == pending and all(m.delayed for m in fresh.received)
        await fresh.close()

    run(scenario())
    assert "resumption window is over" in server.log()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sigkill_loses_nothing_acknowledged(request, tmp_path_factory, certificate, backend):
    server = start(request, tmp_path_factory, certificate, backend)
    alice, bob = accounts(server)

    async def scenario():
        await alice.login(sm=True, resource="phone")
        await bob.login(sm=True)
        alice.stop_reading()
        sent = [bob.send_message(alice.jid, f"message {n}") for n in range(5)]
        await bob.wait_all_acked()
        server.kill()
        alice.abort()
        server.start()
        fresh = LeanClient(f"{alice.username}@{alice.domain}", alice.password, port=server.port)
        await fresh.login()
        await fresh.wait_until(lambda: {m.id for m in fresh.received} >= set(sent))
        await fresh.close()

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_contacts_see_the_user_offline_until_the_session_is_resumed(request, tmp_path_factory, certificate,
                                                                      backend):
    from tests.harness import Client
    from xmppd.storage import RosterItem, open_storage

    server = start(request, tmp_path_factory, certificate, backend)
    alice, bob = accounts(server)
    alice_bare, bob_bare = (f"{c.username}@localhost" for c in (alice, bob))

    async def befriend() -> None:
        storage = await open_storage(server.backend, **server.storage_kwargs)
        try:
            await storage.set_roster_item(alice.username, RosterItem(bob_bare, subscription="both"))
            await storage.set_roster_item(bob.username, RosterItem(alice_bare, subscription="both"))
        finally:
            await storage.close()

    asyncio.run(befriend())

    async def available_from(contact: Client, jid: str, timeout: float):
        while True:
            presence = await contact.next_presence(timeout)
            if presence["from"].bare == jid:
                return presence

    async def scenario():
        await alice.login(sm=True, resource="phone")
        server.stop()
        alice.abort()
        server.start()
        contact = await Client(server, bob_bare, bob.password, plaintext=True).login()
        contact.send_presence()
        with pytest.raises(asyncio.TimeoutError):      # alice's session is restored, but not online
            await available_from(contact, alice_bare, 1.5)
        await alice.connect()
        assert (await alice.resume()).resumed
        presence = await available_from(contact, alice_bare, 10)
        assert presence["type"] == "available" and str(presence["from"]) == alice.jid
        await alice.close()
        unavailable = await available_from(contact, alice_bare, 10)
        assert unavailable["type"] == "unavailable"
        await contact.close()

    run(scenario())
