"""Push end to end: a phone registers with the built-in app server, enables push (XEP-0357), loses its
connection, and the fake APNs / FCM (tests/push_fakes.py) receive what the real aioapns and pyfcm send.

The phone is a lean client (it must drop its socket and resume); the contact who writes to it is a
slixmpp client. One xmppd per backend, with the app server hosted in-process on push.localhost.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
from lxml import etree

from tests.conftest import start_xmppd
from tests.harness import Client, run
from tests.lean_client import LeanClient, random_password
from tests.push_fakes import FakeAPNs, FakeFCM
from tests.storage_fixtures import BACKENDS

TOPIC = "org.example.xmppd"
NS_DATA = "jabber:x:data"
NS_COMMANDS = "http://jabber.org/protocol/commands"
COALESCE_WINDOW = 1.0


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    apns, fcm = FakeAPNs(topic=TOPIC), FakeFCM()
    apns.start()
    fcm.start()
    directory = tmp_path_factory.mktemp("push")
    yield apns, fcm, directory
    apns.stop()
    fcm.stop()


PUSH_MODULES = ("offline", "csi", "stream_mgmt", "push", "appserver")


@pytest.fixture(scope="module", params=BACKENDS)
def xmppd(request, tmp_path_factory, certificate, fakes):
    return start_xmppd(request, tmp_path_factory, certificate, request.param, push_config(fakes, PUSH_MODULES))


def push_config(fakes, modules: tuple[str, ...]) -> str:
    """The [c2s] tail and the sections of an xmppd with the app server in-process, talking to the fakes."""
    apns, fcm, directory = fakes
    return f"""require_encryption = false

[modules]
enabled = {list(modules)!r}

[push]
coalesce_window = {COALESCE_WINDOW}

[appserver]
default_apns_app = "ios"
default_fcm_app = "droid"
rate_limit = 100.0
rate_burst = 100

{apns.app_toml("ios", directory / "apns.p8", push_modules=["exampleProdiOS"])}
{fcm.app_toml("droid", directory / "fcm.json")}"""


def accounts(xmppd, count: int) -> list[tuple[str, str]]:
    made = []
    for _ in range(count):
        password = random_password()
        made.append((xmppd.add_user(f"u-{secrets.token_hex(4)}", password), password))
    return made


def form(form_type: str, **fields: str) -> str:
    values = "".join(f"<field var='{var}'><value>{value}</value></field>" for var, value in fields.items())
    return (f"<x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE'><value>{form_type}</value></field>"
            f"{values}</x>")


async def register_p2(phone: LeanClient, token: str, device: str, kind: str = "fcm") -> dict[str, str]:
    """Conversations' (and Siskin's) way: the register-push-fcm / -apns ad-hoc command at the app server."""
    device_field = "android-id" if kind == "fcm" else "device-id"
    fields = "".join(f"<field var='{var}'><value>{value}</value></field>"
                     for var, value in (("token", token), (device_field, device)))
    answer = await phone.iq(f"<iq type='set' id='{{id}}' to='push.localhost'><command xmlns='{NS_COMMANDS}' "
                            f"node='register-push-{kind}' action='execute'><x xmlns='{NS_DATA}' type='submit'>"
                            f"{fields}</x></command></iq>")
    assert answer.get("type") == "result", etree.tostring(answer)
    result = answer.find(f"{{{NS_COMMANDS}}}command/{{{NS_DATA}}}x")
    return {field.get("var"): field.findtext(f"{{{NS_DATA}}}value") for field in result}


async def enable_push(phone: LeanClient, jid: str, node: str, extra: str = "", **options: str) -> None:
    publish_options = form("http://jabber.org/protocol/pubsub#publish-options", **options) if options else ""
    answer = await phone.iq(f"<iq type='set' id='{{id}}'><enable xmlns='urn:xmpp:push:0' jid='{jid}' "
                            f"node='{node}'>{publish_options}{extra}</enable></iq>")
    assert answer.get("type") == "result", etree.tostring(answer)


def send_chat(sender: Client, to: str, body: str) -> None:
    sender.send_message(mto=to, mbody=body, mtype="chat")


def send_raw_message(sender: Client, to: str, payload: str) -> None:
    sender.send_raw(f"<message xmlns='jabber:client' to='{to}' type='chat' id='{secrets.token_hex(4)}'>"
                    f"{payload}</message>")


def propose(call_id: str) -> str:
    return (f"<propose xmlns='urn:xmpp:jingle-message:0' id='{call_id}'>"
            "<description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/></propose>")


async def quiet(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def monal_phone_asleep(xmppd, phone: tuple[str, str], contact: tuple[str, str], token: str) -> Client:
    """A phone enabled Monal-style push for `token`, then lost its connection; its contact is online.
    Returns the contact's client."""
    client = LeanClient(*phone, port=xmppd.port, auto_ack=False)
    await client.login(sm=True)
    await enable_push(client, "push.localhost", token, pushModule="exampleProdiOS")
    writer = await Client(xmppd, *contact, plaintext=True).login()
    client.abort()
    await quiet(0.5)
    return writer


def test_p2_registration_fcm_coalescing_calls_and_resumption(xmppd, fakes):
    _, fcm, _ = fakes
    (phone_jid, phone_password), (contact_jid, contact_password) = accounts(xmppd, 2)
    token = f"fcm-{secrets.token_hex(8)}"

    async def scenario():
        phone = LeanClient(phone_jid, phone_password, port=xmppd.port, auto_ack=False)
        await phone.login(sm=True)
        registration = await register_p2(phone, token, secrets.token_hex(8))
        assert set(registration) >= {"jid", "node", "secret"}
        await enable_push(phone, registration["jid"], registration["node"], secret=registration["secret"])
        contact = await Client(xmppd, contact_jid, contact_password, plaintext=True).login()
        phone.abort()                                  # the phone sleeps; its session hibernates
        await quiet(0.5)
        fcm.clear()

        started = time.monotonic()
        for n in range(3):                             # three messages within 100 ms
            send_chat(contact, phone_jid, f"hello {n}")
        first = (await fcm.requests_arrived(1, timeout=5))[0]
        assert first.token == token and first.data["kind"] == "message"
        assert first.message["android"]["priority"] == "high"
        print(f"first push after {first.monotonic - started:.3f} s")
        trailing = (await fcm.requests_arrived(2, timeout=5))[1]
        assert trailing.data["message-count"] == "3"   # the trailing push counts all three
        assert trailing.monotonic - first.monotonic >= COALESCE_WINDOW * 0.9
        await quiet(COALESCE_WINDOW * 1.5)
        assert len(fcm.requests) == 2                  # merged: not one push per message

        send_raw_message(contact, phone_jid, "<composing xmlns='http://jabber.org/protocol/chatstates'/>")
        await quiet(COALESCE_WINDOW * 1.5)
        assert len(fcm.requests) == 2                  # a chat state wakes nobody

        proposed = time.monotonic()
        send_raw_message(contact, phone_jid, propose("call-1"))
        call = (await fcm.requests_arrived(3, timeout=5))[2]
        assert call.data["kind"] == "call" and call.data["call-id"] == "call-1"
        assert call.data["caller"] == contact_jid
        print(f"call push after {call.monotonic - proposed:.3f} s")
        assert call.monotonic - proposed < 1.0        # issue: within 100 ms; generous for a loaded CI

        await phone.connect()                          # woken by the push, the app resumes
        phone.received.clear()
        assert (await phone.resume()).resumed
        phone.auto_ack = True
        await phone.wait_until(lambda: len([m for m in phone.received if m.body]) == 3)
        await quiet(0.5)
        assert [m.body for m in phone.received if m.body] == ["hello 0", "hello 1", "hello 2"]
        await phone.close()
        await contact.close()

    run(scenario())


def test_monal_style_apns_alert_voip_and_a_dead_token(xmppd, fakes):
    apns, _, _ = fakes
    (phone_jid, phone_password), (contact_jid, contact_password) = accounts(xmppd, 2)
    token = secrets.token_hex(32)

    async def scenario():
        contact = await monal_phone_asleep(xmppd, (phone_jid, phone_password), (contact_jid, contact_password),
                                           token)
        apns.clear()

        send_chat(contact, phone_jid, "are you there?")
        alert = (await apns.requests_arrived(1, timeout=5))[0]
        assert alert.token == token and alert.push_type == "alert" and alert.topic == TOPIC
        assert alert.headers["apns-priority"] == "10"
        assert alert.payload["aps"]["mutable-content"] == 1
        assert alert.payload["message-count"] == 1
        assert "body" not in alert.payload and "sender" not in alert.payload   # private by default

        send_raw_message(contact, phone_jid, propose("call-2"))
        voip = (await apns.requests_arrived(2, timeout=5))[1]
        assert voip.push_type == "voip" and voip.topic == f"{TOPIC}.voip"
        assert voip.payload["call-id"] == "call-2" and voip.payload["caller"] == contact_jid

        await quiet(COALESCE_WINDOW * 1.5)
        apns.respond(410, "Unregistered", token=token)  # the app was deleted from the phone
        send_chat(contact, phone_jid, "hello?")
        await apns.requests_arrived(3, timeout=5)
        await quiet(1.0)
        assert "no longer knows the device" in xmppd.log()
        await quiet(COALESCE_WINDOW * 1.5)
        send_chat(contact, phone_jid, "anyone?")
        await quiet(COALESCE_WINDOW * 2)
        assert len(apns.requests) == 3                 # disabled: no more pushes to a dead token
        await contact.close()

    run(scenario())


def test_a_provider_that_is_down_gets_the_push_when_it_is_back(xmppd, fakes):
    apns, _, _ = fakes
    (phone_jid, phone_password), (contact_jid, contact_password) = accounts(xmppd, 2)
    token = secrets.token_hex(32)

    async def scenario():
        contact = await monal_phone_asleep(xmppd, (phone_jid, phone_password), (contact_jid, contact_password),
                                           token)
        apns.clear()
        apns.down()
        try:
            send_chat(contact, phone_jid, "wake up")
            await quiet(3.0)
            assert apns.requests == []
        finally:
            apns.up()
        pushes = await apns.requests_arrived(1, timeout=30)
        assert pushes[0].token == token and pushes[0].payload["message-count"] == 1
        assert "asks to wait" in xmppd.log()           # the server retried; nothing was lost
        await contact.close()

    run(scenario())


def test_siskin_style_encrypted_payload(xmppd, fakes):
    """Tigase's <encrypt/> in <enable/>: Apple sees only ciphertext, the app opens it with its key."""
    import base64

    from xmppd.appserver.encryption import decrypt_payload

    apns, _, _ = fakes
    (phone_jid, phone_password), (contact_jid, contact_password) = accounts(xmppd, 2)
    token = secrets.token_hex(32)
    key = secrets.token_bytes(16)

    async def scenario():
        phone = LeanClient(phone_jid, phone_password, port=xmppd.port, auto_ack=False)
        await phone.login(sm=True)
        registration = await register_p2(phone, token, secrets.token_hex(8), kind="apns")
        encrypt = (f"<encrypt xmlns='tigase:push:encrypt:0' alg='aes-128-gcm'>"
                   f"{base64.b64encode(key).decode()}</encrypt>")
        await enable_push(phone, registration["jid"], registration["node"], encrypt, secret=registration["secret"])
        contact = await Client(xmppd, contact_jid, contact_password, plaintext=True).login()
        phone.abort()
        await quiet(0.5)
        apns.clear()
        send_chat(contact, phone_jid, "secret words")
        push = (await apns.requests_arrived(1, timeout=5))[0]
        assert push.token == token
        assert "message-count" not in push.payload and "encrypted" in push.payload
        assert b"secret" not in push.body
        opened = decrypt_payload(key, push.payload)
        assert opened["message-count"] == 1 and opened["kind"] == "message"
        await contact.close()

    run(scenario())


def test_a_subscription_request_wakes_the_phone_with_its_count(xmppd, fakes):
    apns, _, _ = fakes
    (phone_jid, phone_password), (contact_jid, contact_password) = accounts(xmppd, 2)
    token = secrets.token_hex(32)

    async def scenario():
        contact = await monal_phone_asleep(xmppd, (phone_jid, phone_password), (contact_jid, contact_password),
                                           token)
        apns.clear()
        contact.send_presence(pto=phone_jid, ptype="subscribe")
        push = (await apns.requests_arrived(1, timeout=5))[0]
        assert push.token == token
        assert push.payload["pending-subscription-count"] == 1 and push.payload["message-count"] == 0
        await quiet(COALESCE_WINDOW * 1.5)
        send_chat(contact, phone_jid, "it's me")           # the count is remembered, not read again
        later = (await apns.requests_arrived(2, timeout=5))[1]
        assert later.payload["pending-subscription-count"] == 1 and later.payload["message-count"] == 1
        await contact.close()

    run(scenario())
