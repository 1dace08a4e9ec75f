"""XEP-0215 external service discovery: a slixmpp client asks its server for STUN/TURN servers and
credentials, on both backends. The credentials are checked against coturn's TURN REST API scheme
(what coturn with use-auth-secret computes) and their expiry."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

import pytest
from lxml import etree
from slixmpp.exceptions import IqError

from tests.harness import Client, run
from xmppd.stanza import StanzaError

NS = "urn:xmpp:extdisco:2"
SECRET = "coturn-static-auth-secret"
TTL = 600

XMPPD_EXTRA_CONFIG = f"""require_encryption = false

[modules]
enabled = ["extdisco"]

[[extdisco.services]]
type = "stun"
host = "stun.example.org"

[[extdisco.services]]
type = "turn"
host = "turn.example.org"
secret = "{SECRET}"
ttl = {TTL}
name = "Relay"

[[extdisco.services]]
type = "turn"
host = "turn.example.org"
port = 3479
transport = "tcp"
secret = "{SECRET}"
ttl = {TTL}

[[extdisco.services]]
type = "turns"
host = "turn.example.org"
secret = "{SECRET}"
ttl = {TTL}
"""


async def ask(client: Client, payload: str):
    iq = client.Iq(stype="get", sto="localhost")
    iq.xml.append(ET.fromstring(payload))
    return await iq.send(timeout=10)


def services(answer, tag: str = "services") -> list[dict[str, str]]:
    return [dict(service.attrib) for service in answer.xml.find(f"{{{NS}}}{tag}")]


def coturn_password(username: str) -> str:
    """What coturn computes for a username under use-auth-secret (turn_rest_api / hmac-sha1)."""
    return base64.b64encode(hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()).decode()


def check_credentials(service: dict[str, str], jid: str, asked_at: float) -> None:
    expires_at, _, user = service["username"].partition(":")
    assert user == jid
    assert asked_at + TTL - 2 <= int(expires_at) <= time.time() + TTL + 2
    assert service["password"] == coturn_password(service["username"])
    stamp = datetime.strptime(service["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert stamp.timestamp() == int(expires_at)   # XEP-0082, UTC
    assert service["restricted"] == "1"


def test_services_are_listed_with_fresh_credentials(xmppd, account):
    jid, password = account()

    async def scenario():
        client = await Client(xmppd, jid, password).login()
        info = await client.plugin["xep_0030"].get_info("localhost", timeout=10)
        assert NS in info["disco_info"]["features"]
        asked_at = time.time()
        listed = services(await ask(client, f"<services xmlns='{NS}'/>"))
        assert [(s["type"], s["host"], s["port"], s["transport"]) for s in listed] == [
            ("stun", "stun.example.org", "3478", "udp"), ("turn", "turn.example.org", "3478", "udp"),
            ("turn", "turn.example.org", "3479", "tcp"), ("turns", "turn.example.org", "5349", "tcp")]
        assert "username" not in listed[0] and "restricted" not in listed[0]
        assert listed[1]["name"] == "Relay"
        for service in listed[1:]:
            check_credentials(service, jid, asked_at)
        answer = await ask(client, f"<services xmlns='{NS}' type='turns'/>")
        assert answer.xml.find(f"{{{NS}}}services").get("type") == "turns"
        assert [s["type"] for s in services(answer)] == ["turns"]
        assert services(await ask(client, f"<services xmlns='{NS}' type='ftp'/>")) == []
        await client.close()

    run(scenario())


def test_credentials_for_one_service(xmppd, account):
    jid, password = account()

    async def scenario():
        client = await Client(xmppd, jid, password).login()
        asked_at = time.time()
        answer = await ask(client, f"<credentials xmlns='{NS}'><service host='turn.example.org' type='turn'/>"
                                   "</credentials>")
        found = services(answer, "credentials")
        assert [s["port"] for s in found] == ["3478", "3479"]
        for service in found:
            check_credentials(service, jid, asked_at)
        answer = await ask(client, f"<credentials xmlns='{NS}'><service host='turn.example.org' type='turn' "
                                   "port='3479'/></credentials>")
        assert [s["port"] for s in services(answer, "credentials")] == ["3479"]
        for payload, condition in (
                (f"<credentials xmlns='{NS}'><service host='stun.example.org' type='stun'/></credentials>",
                 "item-not-found"),
                (f"<credentials xmlns='{NS}'><service host='elsewhere.example' type='turn'/></credentials>",
                 "item-not-found"),
                (f"<credentials xmlns='{NS}'/>", "bad-request"),
                (f"<credentials xmlns='{NS}'><service type='turn'/></credentials>", "bad-request")):
            with pytest.raises(IqError) as caught:
                await ask(client, payload)
            assert caught.value.iq["error"]["condition"] == condition, payload
        await client.close()

    run(scenario())


# ---------------------------------------------------------------- without sockets

def test_only_logged_in_local_accounts_are_answered(tmp_path):
    import dataclasses

    from xmppd.config import ExternalService, default_config
    from xmppd.extdisco import ExternalServiceDiscovery
    from xmppd.server import Server

    config = default_config(str(tmp_path))
    config = dataclasses.replace(config, extdisco=dataclasses.replace(
        config.extdisco, services=(ExternalService("turn", "t.example", 3478, "udp", SECRET, TTL),)))
    module = ExternalServiceDiscovery(Server(config, storage=None))
    iq = etree.fromstring(f"<iq xmlns='jabber:client' type='get' id='1' from='push.localhost' to='localhost'>"
                         f"<services xmlns='{NS}'/></iq>")
    with pytest.raises(StanzaError) as caught:
        module.list_services(iq, None, None)
    assert caught.value.condition == "forbidden"


def test_turn_credentials_follow_the_rest_api_scheme():
    from xmppd.extdisco import turn_credentials

    # draft-uberti-behave-turn-rest-00 §2.2: username "<expiry>:<user>", password base64(HMAC-SHA1(secret, username)).
    username, password = turn_credentials(SECRET, "alice@example.org", 1700000000)
    assert username == "1700000000:alice@example.org"
    assert password == coturn_password(username)
    assert turn_credentials(SECRET, "alice@example.org", 1700000001)[1] != password

