"""Protection against clients that do not read, hold many sockets or many sessions; clean shutdown."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import start_xmppd
from tests.harness import Client, raw_connect, run

LIMITS = """max_unauthenticated_per_address = 3
max_resources_per_account = 2
max_bytes_per_second = 0
"""  # no read limit here: one test needs a sender far faster than the default allows


@pytest.fixture(scope="module")
def limited(request, tmp_path_factory, certificate):
    return start_xmppd(request, tmp_path_factory, certificate, "sqlite", LIMITS)


def wait_for_log(server, text: str, seconds: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text in server.log():
            return True
        time.sleep(0.05)
    return False


def test_a_client_that_does_not_read_is_dropped_not_buffered(limited):
    reader = limited.add_user("not-reading", "password-1")
    writer = limited.add_user("writer", "password-2")

    async def scenario():
        victim = await Client(limited, reader, "password-1").login()
        victim.send_presence()
        await asyncio.sleep(0.3)
        victim.transport.pause_reading()          # the phone froze with its socket open
        sender = await Client(limited, writer, "password-2").login()
        body = "x" * 200_000
        for _ in range(100):                      # 20 MB for someone who reads nothing
            sender.send_message(mto=victim.boundjid.full, mbody=body, mtype="chat")
            await asyncio.sleep(0)
        assert await asyncio.get_running_loop().run_in_executor(
            None, wait_for_log, limited, f"{victim.boundjid.full} dropped: stopped reading")
        await sender.plugin["xep_0199"].ping(jid="localhost", timeout=10)   # the sender is fine
        await sender.close()
        victim.abort()

    run(scenario(), timeout=90)


def test_too_many_connections_before_login_are_refused(limited):
    sockets = [raw_connect(limited) for _ in range(3)]
    try:
        with raw_connect(limited) as extra:
            extra.settimeout(5)
            try:
                assert extra.recv(1024) == b""    # closed at once
            except ConnectionResetError:
                pass
        assert wait_for_log(limited, "connections from this address have not logged in yet")
    finally:
        for sock in sockets:
            sock.close()


def test_sessions_per_account_are_limited(limited):
    jid = limited.add_user("many-devices", "password-3")

    async def scenario():
        first = await Client(limited, jid, "password-3").login()
        second = await Client(limited, jid, "password-3").login()
        third = Client(limited, jid, "password-3")
        with pytest.raises(Exception):
            await third.login(timeout=5)
        third.abort()
        # The same full JID may still replace one of them (that is not an extra session).
        replacement = await Client(limited, f"{jid}/{second.boundjid.resource}", "password-3").login()
        for client in (first, replacement):
            await client.close()

    run(scenario())
    assert "refused a bind for many-devices: 2 sessions already" in limited.log()


def test_stanzas_sent_just_before_closing_are_still_delivered(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        b = await Client(xmppd, bob, pb).login()
        a = await Client(xmppd, alice, pa).login()
        # Presence is handled asynchronously, so the message waits behind it; then the stream ends.
        a.send_raw(f"<presence/><message to='{b.boundjid.full}' type='chat'><body>last words</body></message>"
                   "</stream:stream>")
        message = await b.next_message()
        assert message["body"] == "last words"
        a.abort()
        await b.close()

    run(scenario())


def test_sigterm_tells_clients_and_stops_cleanly(request, tmp_path_factory, certificate):
    server = start_xmppd(request, tmp_path_factory, certificate, "sqlite")
    jid = server.add_user("stayer", "password-4")

    async def scenario():
        client = await Client(server, jid, "password-4").login()
        client.send_presence()
        await asyncio.sleep(0.3)
        gone = asyncio.get_running_loop().create_future()
        client.add_event_handler("disconnected", lambda *_: gone.done() or gone.set_result(True))
        server.process.terminate()
        await asyncio.wait_for(gone, 15)
        assert [e["condition"] for e in client.stream_errors] == ["system-shutdown"]

    run(scenario())
    assert server.process.wait(15) == 0
    log = server.log()
    assert "xmppd stopped" in log and "failed" not in log and "Traceback" not in log


def test_a_fast_sender_is_slowed_down_and_loses_nothing(request, tmp_path_factory, certificate):
    server = start_xmppd(request, tmp_path_factory, certificate, "sqlite",
                         "max_bytes_per_second = 250000\nmax_stanza_size = 10000\n")
    sender_jid = server.add_user("fast", "password-5")
    receiver_jid = server.add_user("patient", "password-6")

    async def scenario():
        receiver = await Client(server, receiver_jid, "password-6").login()
        receiver.send_presence()
        sender = await Client(server, sender_jid, "password-5").login()
        await asyncio.sleep(0.3)
        body = "y" * 9000
        for n in range(60):                # about 540 kB: twice the burst
            sender.send_message(mto=receiver.boundjid.full, mbody=f"{n} {body}", mtype="chat")
        got = [int((await receiver.next_message(timeout=30))["body"].split()[0]) for _ in range(60)]
        assert got == list(range(60))      # all of them, in order
        await sender.close()
        await receiver.close()

    run(scenario(), timeout=120)
    assert "sends faster than 250000 bytes/s: reading slowed down" in server.log()
