"""The APNs and FCM providers, with the real aioapns and pyfcm, against the fakes over loopback.

Each scenario runs in its own asyncio loop (the providers are built inside it, as they
must be); the fakes run in threads of their own and live for the whole module.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email.utils
import json
import secrets
import time
import uuid

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.push_fakes import FakeAPNs, FakeFCM, make_apns_key, make_service_account
from xmppd.appserver.apns import ApnsProvider
from xmppd.appserver.component import providers_from_config
from xmppd.appserver.encryption import decrypt_payload, encrypt_payload, key_from_fields, parse_key
from xmppd.appserver.fcm import FcmProvider
from xmppd.appserver.providers import (
    DEFAULT_TTL, MAX_BODY_BYTES, Notification, Result, collapse_key, encrypted_fields,
)
from xmppd.config import PushApp

TOPIC = "org.example.xmppd"


def run(coro, timeout: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def apns_token() -> str:
    return secrets.token_hex(32)


# -- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def apns_server():
    with FakeAPNs(TOPIC) as fake:
        yield fake


@pytest.fixture
def apns(apns_server):
    apns_server.up()
    apns_server.clear_script()
    apns_server.clear()
    yield apns_server
    apns_server.up()
    apns_server.clear_script()


@pytest.fixture(scope="module")
def fcm_server():
    with FakeFCM("xmppd-test") as fake:
        yield fake


@pytest.fixture
def fcm(fcm_server):
    fcm_server.up()
    fcm_server.clear_script()
    fcm_server.clear()
    fcm_server.max_concurrent = 0
    yield fcm_server
    fcm_server.up()
    fcm_server.clear_script()
    fcm_server.release()


def apns_provider(fake: FakeAPNs, *, key=None, timeout: float = 5.0, max_connections: int = 4) -> ApnsProvider:
    key = key or fake.key
    return ApnsProvider("test", key.pem, key.key_id, key.team_id, TOPIC, True,
                        host=fake.host, port=fake.port, ssl_context=fake.client_ssl_context(), timeout=timeout,
                        max_connections=max_connections)


def fcm_provider(fake: FakeFCM, *, account=None, max_workers: int = 4, timeout: float = 5.0,
                 max_retry_after: float = 600.0) -> FcmProvider:
    return FcmProvider("test", account or fake.service_account(), "xmppd-test", endpoint=fake.endpoint,
                       max_workers=max_workers, timeout=timeout, max_retry_after=max_retry_after)


async def send_one(provider, notification: Notification) -> Result:
    try:
        return await provider.send(notification)
    finally:
        await provider.close()


# -- APNs: what goes out ---------------------------------------------------------------------

def test_apns_message_headers_and_neutral_payload(apns):
    token = apns_token()
    result = run(send_one(apns_provider(apns), Notification(
        token, "message", "node-1", message_count=3, pending_subscriptions=0)))
    assert result == Result("delivered")
    [request] = apns.requests
    assert apns.violations == []   # the provider token verified, every header well-formed
    assert request.headers[":path"] == f"/3/device/{token}"
    assert request.topic == TOPIC
    assert request.push_type == "alert"
    assert request.headers["apns-priority"] == "10"
    assert request.headers["apns-collapse-id"] == "node-1"
    assert uuid.UUID(request.headers["apns-id"])
    # a day from now: never already expired (fpush and mod_push_appserver send past dates)
    assert request.received_at + DEFAULT_TTL["message"] - 5 <= request.expiration <= request.received_at + 86400 + 5
    assert request.payload == {
        "aps": {"alert": {"title": "New message"}, "sound": "default", "mutable-content": 1},
        "kind": "message", "account": "node-1", "message-count": 3, "pending-subscription-count": 0,
    }


def test_apns_message_shows_sender_and_body_when_given(apns):
    result = run(send_one(apns_provider(apns), Notification(
        apns_token(), "message", "node-1", message_count=1, sender="juliet@capulet.example/balcony",
        body="Wherefore art thou, Romeo?")))
    assert result.outcome == "delivered"
    payload = apns.requests[0].payload
    assert payload["aps"]["alert"] == {"title": "juliet@capulet.example", "body": "Wherefore art thou, Romeo?"}
    assert payload["sender"] == "juliet@capulet.example/balcony"
    assert payload["body"] == "Wherefore art thou, Romeo?"


def test_apns_subscription_request_alone(apns):
    run(send_one(apns_provider(apns), Notification(apns_token(), "message", "n", message_count=0,
                                                   pending_subscriptions=1)))
    assert apns.requests[0].payload["aps"]["alert"] == {"title": "New contact request"}


@pytest.mark.parametrize("kind", ["call", "call-ended"])
def test_apns_calls_are_voip_pushes(apns, kind):
    result = run(send_one(apns_provider(apns), Notification(
        apns_token(), kind, "node-1", call_id="jmi-42", caller="romeo@montague.example")))
    assert result.outcome == "delivered"
    [request] = apns.requests
    assert apns.violations == []
    assert request.push_type == "voip"
    assert request.topic == f"{TOPIC}.voip"
    assert request.headers["apns-priority"] == "10"
    assert request.headers["apns-collapse-id"] == "node-1-call"
    assert request.received_at < request.expiration <= request.received_at + DEFAULT_TTL[kind] + 2
    assert request.payload == {"kind": kind, "account": "node-1", "call-id": "jmi-42",
                               "caller": "romeo@montague.example"}


def test_apns_expiration_from_the_notification(apns):
    run(send_one(apns_provider(apns), Notification(apns_token(), "message", "n", expiration=120)))
    request = apns.requests[0]
    assert request.received_at + 110 <= request.expiration <= request.received_at + 122


def test_apns_long_collapse_id_and_body_still_fit(apns):
    node = "n" * 100
    result = run(send_one(apns_provider(apns), Notification(apns_token(), "message", node, body="ü" * 5000)))
    assert result.outcome == "delivered", result
    request = apns.requests[0]
    assert apns.violations == []
    assert request.headers["apns-collapse-id"] == collapse_key(node)
    assert len(request.headers["apns-collapse-id"]) == 64
    assert len(request.payload["body"].encode()) <= MAX_BODY_BYTES


def test_apns_reuses_one_connection_and_one_provider_token(apns):
    async def scenario():
        provider = apns_provider(apns)
        try:
            results = await asyncio.gather(*(provider.send(Notification(apns_token(), "message", f"n{i}"))
                                             for i in range(30)))
            results.append(await provider.send(Notification(apns_token(), "message", "late")))
            return results
        finally:
            await provider.close()

    before = apns.connections
    results = run(scenario())
    assert {r.outcome for r in results} == {"delivered"}
    assert apns.connections - before == 1
    assert len({request.jwt_iat for request in apns.requests}) == 1


def test_apns_malformed_token_is_dead_without_asking_apple(apns):
    result = run(send_one(apns_provider(apns), Notification("not-a-token!", "message", "n")))
    assert result.outcome == "unregistered"
    assert apns.requests == []


# -- APNs: answers -----------------------------------------------------------------------------

def test_apns_410_unregistered_with_apples_timestamp(apns):
    token = apns_token()
    apns.respond(410, "Unregistered", token=token, timestamp=1_700_000_000_123)
    result = run(send_one(apns_provider(apns), Notification(token, "message", "n")))
    assert result.outcome == "unregistered"
    assert result.unregistered_at == pytest.approx(1_700_000_000.123)
    assert "Unregistered" in result.reason


@pytest.mark.parametrize("status, reason, outcome", [
    (400, "BadDeviceToken", "unregistered"),
    (400, "DeviceTokenNotForTopic", "unregistered"),
    (400, "BadCollapseId", "rejected"),
    (403, "InvalidProviderToken", "rejected"),
    (413, "PayloadTooLarge", "rejected"),
    (429, "TooManyRequests", "retry"),
    (500, "InternalServerError", "retry"),
    (503, "ServiceUnavailable", "retry"),
])
def test_apns_error_answers(apns, status, reason, outcome):
    token = apns_token()
    apns.respond(status, reason, token=token)
    result = run(send_one(apns_provider(apns), Notification(token, "message", "n")))
    assert result.outcome == outcome
    assert reason in result.reason
    assert result.unregistered_at is None


def test_apns_scripted_answer_for_one_token_only(apns):
    dead, alive = apns_token(), apns_token()
    apns.respond(410, "Unregistered", token=dead)

    async def scenario():
        provider = apns_provider(apns)
        try:
            return [await provider.send(Notification(t, "message", "n")) for t in (dead, alive, dead)]
        finally:
            await provider.close()

    assert [r.outcome for r in run(scenario())] == ["unregistered", "delivered", "unregistered"]


def test_apns_checks_the_signature_of_the_provider_token(apns):
    impostor = make_apns_key(apns.key_id, apns.team_id)   # same ids, another key
    result = run(send_one(apns_provider(apns, key=impostor), Notification(apns_token(), "message", "n")))
    assert result.outcome == "rejected"
    assert "InvalidProviderToken" in result.reason
    assert any("does not verify" in v for v in apns.violations)


def test_apns_many_error_bodies_on_one_connection(apns):
    """Error bodies use HTTP/2 flow-control credit; without returning it a connection stalls at 64 KiB."""
    reason = "X" * 500
    apns.respond(400, reason)

    async def scenario():
        provider = apns_provider(apns, timeout=20, max_connections=1)
        try:
            return await asyncio.gather(*(provider.send(Notification(apns_token(), "message", "n"))
                                          for _ in range(200)))
        finally:
            await provider.close()

    before = apns.connections
    results = run(scenario())
    assert [r.outcome for r in results] == ["rejected"] * 200
    assert all(reason in r.reason for r in results)
    assert apns.connections - before == 1


def test_apns_many_large_pushes_at_once(apns):
    """Request bodies beyond the peer's 64 KiB window must wait for WINDOW_UPDATE, not fail."""
    async def scenario():
        provider = apns_provider(apns, timeout=20)
        try:
            return await asyncio.gather(*(provider.send(Notification(
                apns_token(), "message", f"n{i}", sender="juliet@capulet.example", body="ü" * 2000))
                for i in range(200)))
        finally:
            await provider.close()

    results = run(scenario())
    assert [r.outcome for r in results] == ["delivered"] * 200
    assert sum(len(r.body) for r in apns.requests) > 3 * 65535
    assert apns.violations == []


# -- APNs: down, slow ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["refuse", "close"])
def test_apns_down_means_retry_within_the_timeout_then_delivered(apns, mode):
    async def scenario():
        provider = apns_provider(apns, timeout=5)
        try:
            assert (await provider.send(Notification(apns_token(), "message", "n"))).outcome == "delivered"
            apns.down(mode)
            started = time.monotonic()
            down = await provider.send(Notification(apns_token(), "message", "n"))
            elapsed = time.monotonic() - started
            apns.up()
            back = await provider.send(Notification(apns_token(), "message", "n"))
            return down, elapsed, back
        finally:
            await provider.close()

    down, elapsed, back = run(scenario())
    assert down.outcome == "retry"
    assert elapsed < 5 + 2   # the provider's timeout, with a generous margin
    assert back.outcome == "delivered"


def test_apns_down_for_a_while_nothing_lost(apns):
    """The app server's loop: retry after back-off until APNs is back; the push arrives once."""
    token = apns_token()

    async def scenario():
        provider = apns_provider(apns, timeout=3)
        try:
            apns.down("refuse", seconds=1.5)
            outcomes = []
            for _ in range(20):
                result = await provider.send(Notification(token, "message", "n", message_count=2))
                outcomes.append(result.outcome)
                if result.outcome != "retry":
                    break
                await asyncio.sleep(0.2)
            return outcomes
        finally:
            await provider.close()

    outcomes = run(scenario())
    assert outcomes[0] == "retry"
    assert outcomes[-1] == "delivered"
    assert set(outcomes[:-1]) == {"retry"}
    assert [r.payload["message-count"] for r in apns.requests if r.token == token] == [2]


def test_apns_no_answer_is_a_retry_and_the_connection_is_replaced(apns):
    apns.respond(200, hang=True, times=1)

    async def scenario():
        provider = apns_provider(apns, timeout=1)
        try:
            started = time.monotonic()
            stuck = await provider.send(Notification(apns_token(), "message", "n"))
            elapsed = time.monotonic() - started
            after = await provider.send(Notification(apns_token(), "message", "n"))
            return stuck, elapsed, after
        finally:
            await provider.close()

    before = apns.connections
    stuck, elapsed, after = run(scenario())
    assert stuck.outcome == "retry"
    assert elapsed < 1 + 2
    assert after.outcome == "delivered"
    assert apns.connections - before == 2   # the stuck connection was dropped


def test_apns_provider_is_created_outside_a_loop_and_used_inside(apns):
    provider = apns_provider(apns)   # no running loop here: aioapns is built at the first send
    assert run(send_one(provider, Notification(apns_token(), "message", "n"))).outcome == "delivered"


def test_apns_rejects_a_key_that_is_not_p256():
    with pytest.raises(ValueError):
        ApnsProvider("x", "not a key", "K", "T", TOPIC, False)


# -- FCM -------------------------------------------------------------------------------------

def test_fcm_message_is_a_high_priority_data_message(fcm):
    async def scenario():
        provider = fcm_provider(fcm)
        try:
            first = await provider.send(Notification("fcm-token-1", "message", "node-1", message_count=3,
                                                     pending_subscriptions=1))
            second = await provider.send(Notification("fcm-token-1", "message", "node-1", message_count=4))
            return first, second
        finally:
            await provider.close()

    tokens_before = len(fcm.token_requests)
    first, second = run(scenario())
    assert first.outcome == second.outcome == "delivered"
    assert first.reason.startswith("projects/xmppd-test/messages/")
    assert fcm.violations == []
    request = fcm.requests[0]
    assert request.token == "fcm-token-1"
    assert "notification" not in request.message
    assert request.data == {"kind": "message", "account": "node-1", "message-count": "3",
                            "pending-subscription-count": "1"}
    assert request.android == {"priority": "high", "ttl": "86400s", "collapse_key": "node-1"}
    assert request.headers["authorization"].startswith("Bearer ya29.")
    assert len(fcm.token_requests) - tokens_before == 1   # the access token is reused


@pytest.mark.parametrize("kind", ["call", "call-ended"])
def test_fcm_calls(fcm, kind):
    result = run(send_one(fcm_provider(fcm), Notification("tok", kind, "node-1", call_id="jmi-7",
                                                          caller="romeo@montague.example")))
    assert result.outcome == "delivered"
    request = fcm.requests[0]
    assert fcm.violations == []
    assert request.data == {"kind": kind, "account": "node-1", "call-id": "jmi-7",
                            "caller": "romeo@montague.example"}
    assert request.android == {"priority": "high", "ttl": f"{DEFAULT_TTL[kind]}s", "collapse_key": "node-1-call"}


@pytest.mark.parametrize("status, error_code, outcome", [
    (404, "UNREGISTERED", "unregistered"),
    (400, "INVALID_ARGUMENT", "rejected"),
    (403, "SENDER_ID_MISMATCH", "rejected"),
    (429, "QUOTA_EXCEEDED", "retry"),
    (500, "INTERNAL", "retry"),
    (503, "UNAVAILABLE", "retry"),
])
def test_fcm_error_answers(fcm, status, error_code, outcome):
    fcm.respond(status, error_code, token="tok-x")
    result = run(send_one(fcm_provider(fcm), Notification("tok-x", "message", "n")))
    assert result.outcome == outcome
    assert error_code in result.reason
    assert len(fcm.requests) == 1   # no retries hidden inside the provider


def test_fcm_retry_after_is_returned_not_slept_and_bounded(fcm):
    fcm.respond(429, retry_after=100000, times=1)
    fcm.respond(503, retry_after=7, times=1)
    http_date = email.utils.formatdate(time.time() + 30, usegmt=True)
    fcm.respond(503, retry_after=http_date, times=1)

    async def scenario():
        provider = fcm_provider(fcm, max_retry_after=600)
        try:
            started = time.monotonic()
            results = [await provider.send(Notification("tok", "message", "n")) for _ in range(3)]
            return results, time.monotonic() - started
        finally:
            await provider.close()

    (huge, seven, dated), elapsed = run(scenario())
    assert [r.outcome for r in (huge, seven, dated)] == ["retry"] * 3
    assert huge.retry_after == 600
    assert seven.retry_after == 7
    assert 20 <= dated.retry_after <= 31
    assert elapsed < 5   # pyfcm itself would sleep 100000 s here
    assert len(fcm.requests) == 3


def test_fcm_expired_access_token_is_renewed_once(fcm):
    async def scenario():
        provider = fcm_provider(fcm)
        try:
            first = await provider.send(Notification("tok", "message", "n"))
            fcm.revoke_tokens()
            second = await provider.send(Notification("tok", "message", "n"))
            fcm.revoke_tokens()
            fcm.respond_token(400, "invalid_grant", times=1)
            third = await provider.send(Notification("tok", "message", "n"))
            return first, second, third
        finally:
            await provider.close()

    before = len(fcm.token_requests)
    first, second, third = run(scenario())
    assert first.outcome == second.outcome == "delivered"
    assert third.outcome == "rejected"   # the token endpoint refused: no endless loop
    assert len(fcm.token_requests) - before == 3


def test_fcm_unknown_service_account_is_rejected(fcm):
    stranger, _ = make_service_account(fcm.token_uri)
    result = run(send_one(fcm_provider(fcm, account=stranger), Notification("tok", "message", "n")))
    assert result.outcome == "rejected"
    assert "invalid_grant" in result.reason
    assert fcm.requests == []


@pytest.mark.parametrize("mode", ["refuse", "close"])
def test_fcm_down_means_retry_then_delivered(fcm, mode):
    async def scenario():
        provider = fcm_provider(fcm)
        try:
            assert (await provider.send(Notification("tok", "message", "n"))).outcome == "delivered"
            fcm.down(mode)
            started = time.monotonic()
            down = await provider.send(Notification("tok", "message", "n"))
            elapsed = time.monotonic() - started
            fcm.up()
            back = await provider.send(Notification("tok", "message", "n"))
            return down, elapsed, back
        finally:
            await provider.close()

    down, elapsed, back = run(scenario())
    assert down.outcome == "retry"
    assert elapsed < 5 + 2
    assert back.outcome == "delivered"


def test_fcm_token_endpoint_unreachable_is_a_retry(fcm):
    account = fcm.service_account()
    fcm.down("refuse")
    try:
        result = run(send_one(fcm_provider(fcm, account=account), Notification("tok", "message", "n")))
    finally:
        fcm.up()
    assert result.outcome == "retry"
    assert "token endpoint" in result.reason


def test_fcm_no_answer_is_a_retry(fcm):
    fcm.respond(200, hang=True, times=1)

    async def scenario():
        provider = fcm_provider(fcm, timeout=1)
        try:
            started = time.monotonic()
            stuck = await provider.send(Notification("tok", "message", "n"))
            elapsed = time.monotonic() - started
            after = await provider.send(Notification("tok", "message", "n"))
            return stuck, elapsed, after
        finally:
            await provider.close()

    stuck, elapsed, after = run(scenario())
    fcm.release()
    assert stuck.outcome == "retry"
    assert elapsed < 1 + 5 + 2   # read timeout (plus connect), generous margin
    assert after.outcome == "delivered"


def test_fcm_thread_pool_bounds_parallel_requests(fcm):
    fcm.respond(200, delay=0.3)

    async def scenario():
        provider = fcm_provider(fcm, max_workers=2)
        try:
            return await asyncio.gather(*(provider.send(Notification(f"tok-{i}", "message", "n"))
                                          for i in range(6)))
        finally:
            await provider.close()

    results = run(scenario())
    assert [r.outcome for r in results] == ["delivered"] * 6
    assert fcm.max_concurrent == 2


def test_fcm_service_account_file_and_project_from_it(fcm, tmp_path):
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps(fcm.service_account()))
    provider = FcmProvider("file", str(path), None, endpoint=fcm.endpoint)
    assert provider.endpoint == f"{fcm.endpoint}/xmppd-test/messages:send"
    assert run(send_one(provider, Notification("tok", "message", "n"))).outcome == "delivered"


def test_fcm_token_uri_override(fcm):
    account, _ = make_service_account("https://oauth2.googleapis.com/token")
    with pytest.raises(ValueError):
        FcmProvider("x", {"type": "service_account"}, "p")
    provider = FcmProvider("x", fcm.service_account() | {"token_uri": "http://127.0.0.1:9/nowhere"}, "xmppd-test",
                           endpoint=fcm.endpoint, token_uri=fcm.token_uri)
    assert run(send_one(provider, Notification("tok", "message", "n"))).outcome == "delivered"
    assert account["token_uri"] != fcm.token_uri


# -- encryption ------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [16, 32])
def test_encryption_round_trip_with_the_real_tag(size):
    key = AESGCM.generate_key(bit_length=size * 8)
    payload = {"unread": 2, "sender": "juliet@capulet.example", "message": "Wherefore art thou, Romeo? ✓"}
    fields = encrypt_payload(key, payload)
    assert set(fields) == {"encrypted", "iv"}
    iv = base64.b64decode(fields["iv"])
    sealed = base64.b64decode(fields["encrypted"])
    assert len(iv) == 12
    ciphertext, tag = sealed[:-16], sealed[-16:]
    assert tag != bytes(16)   # Prosody's module sends 16 zero bytes here
    assert json.loads(AESGCM(key).decrypt(iv, ciphertext + tag, None)) == payload
    assert decrypt_payload(key, fields) == payload
    with pytest.raises(InvalidTag):   # a zeroed tag, as Prosody would send, does not open
        AESGCM(key).decrypt(iv, ciphertext + bytes(16), None)


@pytest.mark.parametrize("part", ["ciphertext", "tag", "iv"])
def test_encryption_detects_a_flipped_bit(part):
    key = AESGCM.generate_key(bit_length=128)
    fields = encrypt_payload(key, {"unread": 1})
    sealed = bytearray(base64.b64decode(fields["encrypted"]))
    iv = bytearray(base64.b64decode(fields["iv"]))
    if part == "ciphertext":
        sealed[0] ^= 0x01
    elif part == "tag":
        sealed[-1] ^= 0x80
    else:
        iv[5] ^= 0x10
    altered = {"encrypted": base64.b64encode(bytes(sealed)).decode(), "iv": base64.b64encode(bytes(iv)).decode()}
    with pytest.raises(InvalidTag):
        decrypt_payload(key, altered)


def test_encryption_uses_a_new_iv_every_time():
    key = AESGCM.generate_key(bit_length=128)
    first, second = encrypt_payload(key, {"a": 1}), encrypt_payload(key, {"a": 1})
    assert first["iv"] != second["iv"]
    assert first["encrypted"] != second["encrypted"]


def test_encryption_keys_from_publish_options():
    raw = bytes(range(16))
    b64 = base64.b64encode(raw).decode()
    assert key_from_fields({"encrypt-alg": "aes-128-gcm", "encrypt-key": b64}) == raw
    assert key_from_fields({"encrypt-key": b64}) == raw
    assert key_from_fields({"secret": "s"}) is None
    assert parse_key("aes-256-gcm", base64.b64encode(bytes(32)).decode()) == bytes(32)
    for alg, key in [("aes-128-gcm", base64.b64encode(bytes(32)).decode()), ("aes-128-cbc", b64),
                     ("aes-128-gcm", "%%%not base64")]:
        with pytest.raises(ValueError):
            parse_key(alg, key)
    with pytest.raises(ValueError):
        encrypt_payload(bytes(24), {})


def test_apns_encrypted_push_hides_everything_but_the_account(apns):
    key = AESGCM.generate_key(bit_length=128)
    notification = Notification(apns_token(), "message", "node-1", message_count=2, sender="juliet@capulet.example",
                                body="secret words", encryption_key=key)
    assert run(send_one(apns_provider(apns), notification)).outcome == "delivered"
    payload = apns.requests[0].payload
    assert set(payload) == {"aps", "account", "encrypted", "iv"}
    assert payload["aps"]["alert"] == {"title": "New message"}
    assert "secret" not in json.dumps(payload) and "juliet" not in json.dumps(payload)
    inner = decrypt_payload(key, payload)
    assert inner == encrypted_fields(notification)
    assert inner["body"] == inner["message"] == "secret words"
    assert inner["type"] == "chat" and inner["unread"] == 2 and inner["sender"] == "juliet@capulet.example"


def test_apns_encrypted_call(apns):
    key = AESGCM.generate_key(bit_length=256)
    notification = Notification(apns_token(), "call", "node-1", call_id="jmi-9", caller="romeo@montague.example",
                                encryption_key=key)
    assert run(send_one(apns_provider(apns), notification)).outcome == "delivered"
    request = apns.requests[0]
    assert request.push_type == "voip"
    assert set(request.payload) == {"account", "encrypted", "iv"}
    inner = decrypt_payload(key, request.payload)
    assert (inner["kind"], inner["type"], inner["sid"], inner["call-id"], inner["caller"]) == \
        ("call", "call", "jmi-9", "jmi-9", "romeo@montague.example")


def test_fcm_encrypted_push(fcm):
    key = AESGCM.generate_key(bit_length=128)
    notification = Notification("tok", "message", "node-1", message_count=1, body="secret words", encryption_key=key)
    assert run(send_one(fcm_provider(fcm), notification)).outcome == "delivered"
    data = fcm.requests[0].data
    assert set(data) == {"account", "encrypted", "iv"}
    assert fcm.violations == []
    assert decrypt_payload(key, data)["body"] == "secret words"


# -- the data types --------------------------------------------------------------------------

def test_notification_checks_its_kind_and_token():
    with pytest.raises(ValueError):
        Notification("tok", "presence", "n")
    with pytest.raises(ValueError):
        Notification("", "message", "n")
    assert collapse_key("short") == "short"
    assert collapse_key("x" * 70) != collapse_key("x" * 71)


def test_providers_from_config_tables(apns, fcm, tmp_path):
    """[appserver.apps.NAME] tables (config.PushApp) become providers that reach the endpoint they name."""
    apps = [PushApp(name="ios", push_modules=(), **apns.app_config(tmp_path / "AuthKey.p8")),
            PushApp(name="android", push_modules=(), **fcm.app_config(tmp_path / "service-account.json"))]
    providers = providers_from_config(apps)
    apns_provider_, fcm_provider_ = providers["ios"], providers["android"]
    assert (apns_provider_.name, fcm_provider_.name) == ("apns", "fcm")
    assert run(send_one(apns_provider_, Notification(apns_token(), "message", "n"))).outcome == "delivered"
    assert run(send_one(fcm_provider_, Notification("tok", "message", "n"))).outcome == "delivered"
    missing_key = dataclasses.replace(apps[0], key_file=str(tmp_path / "missing.p8"))
    with pytest.raises(OSError):
        providers_from_config([missing_key])
    with pytest.raises(ValueError):
        providers_from_config([dataclasses.replace(apps[0], type="webpush")])
