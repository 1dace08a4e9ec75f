"""Carbons reach a sleeping phone: queued in its hibernated stream-management session (XEP-0198),
handed back once on resumption, and waking it through push (XEP-0357) for what others sent, never for
what the user sent from another device. A blocked contact (XEP-0191) wakes nobody. Uses the push test
set-up (app server, fake APNs), both backends."""

from __future__ import annotations

import secrets

import pytest

from tests.conftest import start_xmppd
from tests.harness import Client, run
from tests.lean_client import LeanClient
from tests.storage_fixtures import BACKENDS
from tests.test_push import (COALESCE_WINDOW, PUSH_MODULES, accounts, enable_push, fakes,  # noqa: F401
                             push_config, quiet)

NS_CARBONS = "urn:xmpp:carbons:2"
FORWARDED = "{urn:xmpp:forward:0}forwarded/{jabber:client}message"


@pytest.fixture(scope="module", params=BACKENDS)
def xmppd(request, tmp_path_factory, certificate, fakes):
    return start_xmppd(request, tmp_path_factory, certificate, request.param,
                       push_config(fakes, PUSH_MODULES + ("carbons", "blocking")))


def carried(received, direction: str):
    """The message a carbon that a lean client received carries, else None."""
    if received.element is None or received.from_ != received.element.get("to", "").partition("/")[0]:
        return None
    return received.element.find(f"{{{NS_CARBONS}}}{direction}/{FORWARDED}")


def test_a_hibernated_phone_queues_carbons_and_is_woken_only_by_received_ones(xmppd, fakes):
    apns, _, _ = fakes
    (alice, alice_password), (bob, bob_password) = accounts(xmppd, 2)
    token = secrets.token_hex(32)

    async def scenario():
        phone = LeanClient(alice, alice_password, port=xmppd.port, auto_ack=False)
        await phone.login(sm=True)
        enabled = await phone.iq(f"<iq type='set' id='{{id}}'><enable xmlns='{NS_CARBONS}'/></iq>")
        assert enabled.get("type") == "result"
        phone.send_presence(priority=0)
        await enable_push(phone, "push.localhost", token, pushModule="exampleProdiOS")
        desktop = await Client(xmppd, alice, alice_password, plaintext=True).login()
        desktop.send_presence(ppriority=5)
        contact = await Client(xmppd, bob, bob_password, plaintext=True).login()
        contact.send_presence()
        phone.abort()                                   # the phone sleeps; its session hibernates
        await quiet(0.5)
        apns.clear()

        desktop.send_message(mto=bob, mbody="sent from the desktop", mtype="chat")
        await contact.next_message()
        await quiet(COALESCE_WINDOW * 1.5)
        assert apns.requests == []                      # the user's own message wakes nobody

        contact.send_message(mto=alice, mbody="for alice", mtype="chat")
        assert (await desktop.next_message())["body"] == "for alice"   # the highest priority: the desktop
        push = (await apns.requests_arrived(1, timeout=5))[0]
        assert push.token == token and push.push_type == "alert" and push.payload["message-count"] == 1

        await phone.connect()                           # woken, the app resumes
        phone.received.clear()
        assert (await phone.resume()).resumed
        phone.auto_ack = True
        await phone.wait_until(lambda: len(phone.received) >= 2)
        await quiet(0.5)
        sent, received = phone.received
        assert carried(sent, "sent").findtext("{jabber:client}body") == "sent from the desktop"
        assert carried(received, "received").findtext("{jabber:client}body") == "for alice"
        assert len(phone.received) == 2                 # each once
        await phone.close()
        await desktop.close()
        await contact.close()

    run(scenario())


def test_a_blocked_contact_wakes_no_phone(xmppd, fakes):
    apns, _, _ = fakes
    (alice, alice_password), (bob, bob_password) = accounts(xmppd, 2)
    token = secrets.token_hex(32)

    async def scenario():
        phone = LeanClient(alice, alice_password, port=xmppd.port, auto_ack=False)
        await phone.login(sm=True)
        phone.send_presence()
        blocked = await phone.iq(f"<iq type='set' id='{{id}}'><block xmlns='urn:xmpp:blocking'>"
                                 f"<item jid='{bob}'/></block></iq>")
        assert blocked.get("type") == "result"
        await enable_push(phone, "push.localhost", token, pushModule="exampleProdiOS")
        contact = await Client(xmppd, bob, bob_password, plaintext=True).login()
        errors = []
        contact.add_event_handler("message_error", errors.append)
        phone.abort()                                   # asleep, its session hibernated
        await quiet(0.5)
        apns.clear()
        contact.send_message(mto=alice, mbody="wake up", mtype="chat")
        contact.send_presence(pto=alice, ptype="subscribe")
        await quiet(COALESCE_WINDOW * 1.5)
        assert apns.requests == []
        assert [error["error"]["condition"] for error in errors] == ["service-unavailable"]
        await contact.close()

    run(scenario())
