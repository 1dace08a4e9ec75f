"""The push app server component (xmppd/appserver): driven directly, with a fake provider, on both backends.

The component gets stanzas with handle() and its send() appends to a list; a
FakeProvider records each Notification and answers from a script. The rate
limit runs on a fake clock whose sleep() only returns when the test says so,
so nothing here depends on how fast the machine is. The XEP-0114 tests run
the real connection against a minimal component server written below.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import os
import textwrap
from datetime import datetime, timedelta, timezone

import pytest
from lxml import etree

from xmppd.appserver import component as component_module
from xmppd.appserver.__main__ import load_config, serve
from xmppd.appserver.component import NS_CLIENT, NS_COMPONENT, AppServer, p2_account_hash
from xmppd.appserver.external import ComponentConnection, handshake_digest
from xmppd.appserver.providers import Notification, Result
from xmppd.config import ConfigError

from .storage_fixtures import run, storage  # noqa: F401  (the storage fixture, on both backends)

DOMAIN = "push.example.org"
ALICE = "alice@example.org"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_DATA = "jabber:x:data"
NS_COMMANDS = "http://jabber.org/protocol/commands"
WAIT = 10.0   # seconds before a test that waits for something gives up (a hang guard, not a measurement)


# ------------------------------------------------------------------------------------ doubles


class FakeProvider:
    """Records notifications; answers from `script` (oldest first), else `default`; may be held at a gate."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[Notification] = []
        self.script: collections.deque = collections.deque()
        self.default = Result("delivered")
        self.gate: asyncio.Event | None = None
        self.closed = False

    async def send(self, notification: Notification) -> Result:
        self.sent.append(notification)
        if self.gate is not None:
            await self.gate.wait()
        answer = self.script.popleft() if self.script else self.default
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def close(self) -> None:
        self.closed = True


class FakeTime:
    """The rate limit's clock; sleep() advances it, but only once `hold` is set (when there is one)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.hold: asyncio.Event | None = None

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        if self.hold is not None:
            await self.hold.wait()
        self.now += delay
        await asyncio.sleep(0)


class Harness:
    """An AppServer with three apps: siskin (APNs, p2 default), conversations (FCM, p2 default), monal (APNs,
    pushModule monalProdiOS)."""

    def __init__(self, storage, *, ns: str = NS_CLIENT, **options) -> None:
        self.ns = ns
        self.out: list[etree._Element] = []
        self._changed = asyncio.Event()
        self.apns = FakeProvider("apns")
        self.fcm = FakeProvider("fcm")
        self.monal = FakeProvider("apns")
        self.time = FakeTime()
        settings = dict(default_apns_app="siskin", default_fcm_app="conversations",
                        push_modules={"monalProdiOS": "monal"}, rate_limit=1.0, rate_burst=5)
        settings.update(options)
        self.server = AppServer(DOMAIN, self._sent, storage,
                                {"siskin": self.apns, "conversations": self.fcm, "monal": self.monal},
                                stanza_ns=ns, clock=self.time.clock, sleep=self.time.sleep, **settings)
        self._ids = 0

    def _sent(self, element: etree._Element) -> None:
        self.out.append(element)
        self._changed.set()

    def handle(self, xml: str) -> str | None:
        """Hand the component a stanza given as XML (in the harness's namespace); returns its id."""
        element = etree.fromstring(xml.replace("{ns}", self.ns))
        self.server.handle(element)
        return element.get("id")

    def next_id(self) -> str:
        self._ids += 1
        return f"q{self._ids}"

    async def answer(self, stanza_id: str) -> etree._Element:
        """The component's answer to the stanza with this id (waits for it)."""
        async def find():
            while True:
                for element in self.out:
                    if element.get("id") == stanza_id:
                        return element
                self._changed.clear()
                await self._changed.wait()
        return await asyncio.wait_for(find(), WAIT)

    async def ask(self, xml: str) -> etree._Element:
        return await self.answer(self.handle(xml))

    def answered(self, stanza_id: str) -> bool:
        return any(element.get("id") == stanza_id for element in self.out)

    # ---- requests
    def command_xml(self, node: str, fields: dict[str, str] | None, *, sender: str = f"{ALICE}/phone",
                    action: str | None = "execute", stanza_id: str | None = None) -> str:
        form = ""
        if fields is not None:
            form = "<x xmlns='jabber:x:data' type='submit'>" + "".join(
                f"<field var='{var}'><value>{value}</value></field>" for var, value in fields.items()) + "</x>"
        act = f" action='{action}'" if action else ""
        return (f"<iq xmlns='{{ns}}' type='set' id='{stanza_id or self.next_id()}' from='{sender}' to='{DOMAIN}'>"
                f"<command xmlns='{NS_COMMANDS}' node='{node}'{act}>{form}</command></iq>")

    async def register(self, kind: str = "fcm", token: str = "tok-1", device: str = "dev-1", *,
                       sender: str = f"{ALICE}/phone", muc: str | None = None) -> tuple[str, str, str]:
        fields = {"token": token, ("android-id" if kind == "fcm" else "device-id"): device}
        if muc:
            fields["muc"] = muc
        reply = await self.ask(self.command_xml(f"register-push-{kind}", fields, sender=sender, action="complete"))
        assert reply.get("type") == "result", etree.tostring(reply)
        command = reply.find(f"{{{NS_COMMANDS}}}command")
        assert command.get("status") == "completed"
        values = {f.get("var"): f.findtext(f"{{{NS_DATA}}}value") for f in command.iter(f"{{{NS_DATA}}}field")}
        return values["jid"], values["node"], values["secret"]

    def publish_xml(self, node: str, *, secret: str | None = None, options: dict[str, str] | None = None,
                    summary: dict[str, str] | None = None, sender: str = ALICE,
                    stanza_id: str | None = None, with_form: bool = True) -> str:
        fields = {"FORM_TYPE": "urn:xmpp:push:summary", "message-count": "1"}
        fields.update(summary or {})
        form = ("<x xmlns='jabber:x:data' type='submit'>" + "".join(
            f"<field var='{var}'><value>{value}</value></field>" for var, value in fields.items()) + "</x>"
                if with_form else "")
        option_fields = dict(options or {})
        if secret is not None:
            option_fields["secret"] = secret
        publish_options = ""
        if option_fields:
            option_fields = {"FORM_TYPE": "http://jabber.org/protocol/pubsub#publish-options", **option_fields}
            publish_options = ("<publish-options><x xmlns='jabber:x:data' type='submit'>" + "".join(
                f"<field var='{var}'><value>{value}</value></field>" for var, value in option_fields.items())
                + "</x></publish-options>")
        return (f"<iq xmlns='{{ns}}' type='set' id='{stanza_id or self.next_id()}' from='{sender}' to='{DOMAIN}'>"
                "<pubsub xmlns='http://jabber.org/protocol/pubsub'>"
                f"<publish node='{node}'><item><notification xmlns='urn:xmpp:push:0'>{form}</notification></item>"
                f"</publish>{publish_options}</pubsub></iq>")

    async def publish(self, node: str, **kwargs) -> etree._Element:
        return await self.ask(self.publish_xml(node, **kwargs))


def condition(reply: etree._Element) -> tuple[str, str] | None:
    """(condition, error type) of an error reply; None for a result."""
    if reply.get("type") != "error":
        return None
    error = reply.find(f"{{{reply.nsmap[None]}}}error")
    names = [etree.QName(child).localname for child in error if etree.QName(child).localname != "text"]
    return names[0], error.get("type")


def drive(scenario):
    """Run an async test body on the storage fixture's loop."""
    return run(scenario())


async def eventually(check, what: str) -> None:
    """Wait until the async check() holds (a hang guard, not a timing assertion)."""
    async def poll():
        while not await check():
            await asyncio.sleep(0.001)
    try:
        await asyncio.wait_for(poll(), WAIT)
    except asyncio.TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


async def until(predicate, what: str) -> None:
    """Let the component's tasks run until predicate() holds (a hang guard, not a timing assertion)."""
    async def poll():
        while not predicate():
            await asyncio.sleep(0.001)
    try:
        await asyncio.wait_for(poll(), WAIT)
    except asyncio.TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


# ------------------------------------------------------------------------------------ discovery


def test_disco_info_and_commands(storage):
    async def scenario():
        h = Harness(storage)
        reply = await h.ask(f"<iq xmlns='{{ns}}' type='get' id='d1' from='{ALICE}/phone' to='{DOMAIN}'>"
                            "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        assert (reply.get("type"), reply.get("from"), reply.get("to")) == ("result", DOMAIN, f"{ALICE}/phone")
        query = reply[0]
        [identity] = query.findall("{http://jabber.org/protocol/disco#info}identity")
        assert (identity.get("category"), identity.get("type")) == ("pubsub", "push")
        features = {f.get("var") for f in query.findall("{http://jabber.org/protocol/disco#info}feature")}
        assert {NS_COMMANDS, "urn:xmpp:push:0", "http://jabber.org/protocol/disco#info"} <= features
        items = await h.ask(f"<iq xmlns='{{ns}}' type='get' id='d2' from='{ALICE}/phone' to='{DOMAIN}'>"
                            f"<query xmlns='http://jabber.org/protocol/disco#items' node='{NS_COMMANDS}'/></iq>")
        nodes = [i.get("node") for i in items[0]]
        assert nodes == ["register-push-apns", "register-push-fcm", "unregister-push-apns", "unregister-push-fcm"]
        assert {i.get("jid") for i in items[0]} == {DOMAIN}
        info = await h.ask(f"<iq xmlns='{{ns}}' type='get' id='d3' from='{ALICE}/phone' to='{DOMAIN}'>"
                           "<query xmlns='http://jabber.org/protocol/disco#info' node='register-push-fcm'/></iq>")
        assert info.get("type") == "result" and info[0].get("node") == "register-push-fcm"
        unknown = await h.ask(f"<iq xmlns='{{ns}}' type='get' id='d4' from='{ALICE}/phone' to='{DOMAIN}'>"
                              "<query xmlns='http://jabber.org/protocol/disco#info' node='nope'/></iq>")
        assert condition(unknown) == ("item-not-found", "cancel")
        ping = await h.ask(f"<iq xmlns='{{ns}}' type='get' id='p1' from='example.org' to='{DOMAIN}'>"
                           "<ping xmlns='urn:xmpp:ping'/></iq>")
        assert ping.get("type") == "result" and len(ping) == 0

    drive(scenario)


def test_only_commands_of_configured_apps_are_offered(storage):
    async def scenario():
        h = Harness(storage, default_fcm_app=None)
        items = await h.ask(f"<iq xmlns='{{ns}}' type='get' id='d1' from='{ALICE}/phone' to='{DOMAIN}'>"
                            f"<query xmlns='http://jabber.org/protocol/disco#items' node='{NS_COMMANDS}'/></iq>")
        assert [i.get("node") for i in items[0]] == ["register-push-apns", "unregister-push-apns"]
        reply = await h.ask(h.command_xml("register-push-fcm", {"token": "t", "android-id": "a"}))
        assert condition(reply) == ("item-not-found", "cancel")

    drive(scenario)


# ------------------------------------------------------------------------------------ p2 registration


def test_register_fcm_the_conversations_way(storage):
    async def scenario():
        h = Harness(storage)
        jid, node, secret = await h.register("fcm", "fcm-token-1", "android-1")
        assert jid == DOMAIN and len(node) >= 16 and len(secret) >= 32
        stored = await storage.appserver_registration(node)
        assert (stored.app, stored.token, stored.owner, stored.secret, stored.device_id, stored.muc) == (
            "conversations", "fcm-token-1", ALICE, secret, "android-1", None)
        # Again from the same device with a new token (another resource even): same node and secret.
        again = await h.register("fcm", "fcm-token-2", "android-1", sender=f"{ALICE}/other")
        assert again == (jid, node, secret)
        assert (await storage.appserver_registration(node)).token == "fcm-token-2"
        # Another device of the same account, and a room, are registrations of their own.
        _, node2, _ = await h.register("fcm", "fcm-token-3", "android-2")
        _, room_node, _ = await h.register("fcm", "fcm-token-1", "android-1", muc="room@muc.example.org")
        assert len({node, node2, room_node}) == 3
        assert (await storage.appserver_registration(room_node)).muc == "room@muc.example.org"
        assert h.server.metrics.registered == 4

    drive(scenario)


def test_register_apns_the_siskin_way(storage):
    async def scenario():
        h = Harness(storage)
        # action='execute' and device-id, as Siskin and older Conversations send it.
        reply = await h.ask(h.command_xml("register-push-apns", {"token": "ab" * 32, "device-id": "D-1"},
                                          action="execute"))
        command = reply.find(f"{{{NS_COMMANDS}}}command")
        assert (command.get("status"), command.get("node")) == ("completed", "register-push-apns")
        x = command.find(f"{{{NS_DATA}}}x")
        assert [f.get("var") for f in x] == ["jid", "node", "secret"]
        stored = await storage.appserver_registration(x[1].findtext(f"{{{NS_DATA}}}value"))
        assert (stored.app, stored.token, stored.device_id) == ("siskin", "ab" * 32, "D-1")

    drive(scenario)


def test_register_refuses_bad_requests(storage):
    async def scenario():
        h = Harness(storage)
        cases = [
            (h.command_xml("register-push-fcm", {"android-id": "a"}), ("bad-request", "modify")),
            (h.command_xml("register-push-fcm", {"token": "t"}), ("bad-request", "modify")),
            (h.command_xml("register-push-fcm", {"token": "t", "android-id": "a", "muc": "room@muc.example.org/nick"}),
             ("bad-request", "modify")),
            (h.command_xml("register-push-fcm", {"token": "t", "android-id": "a", "muc": "@@"}),
             ("jid-malformed", "modify")),
            (h.command_xml("register-push-fcm", {"token": "t" * 5000, "android-id": "a"}), ("not-acceptable", "modify")),
            (h.command_xml("register-push-gcm", {"token": "t", "android-id": "a"}), ("item-not-found", "cancel")),
            (h.command_xml("register-push-fcm", {"token": "t", "android-id": "a"}, action="prev"),
             ("bad-request", "modify")),
        ]
        for xml, expected in cases:
            assert condition(await h.ask(xml)) == expected, xml
        assert await storage.appserver_registrations() == []
        # A command run without a form gets the form to fill; cancel ends it.
        reply = await h.ask(h.command_xml("register-push-fcm", None))
        command = reply.find(f"{{{NS_COMMANDS}}}command")
        assert command.get("status") == "executing" and command.get("sessionid")
        assert [f.get("var") for f in command.iter(f"{{{NS_DATA}}}field")] == ["token", "device-id", "muc"]
        reply = await h.ask(h.command_xml("register-push-fcm", None, action="cancel"))
        assert reply.find(f"{{{NS_COMMANDS}}}command").get("status") == "canceled"

    drive(scenario)


@pytest.mark.parametrize("kind", ["fcm", "apns"])
def test_unregister(storage, kind):
    async def scenario():
        h = Harness(storage)
        id_field = "android-id" if kind == "fcm" else "device-id"
        _, node, _ = await h.register(kind, "tok", "dev-1")
        _, room, _ = await h.register(kind, "tok", "dev-1", muc="room@muc.example.org")
        _, other, _ = await h.register(kind, "tok2", "dev-2")
        # Only the room's.
        reply = await h.ask(h.command_xml(f"unregister-push-{kind}", {id_field: "dev-1", "muc": "room@muc.example.org"}))
        assert reply.find(f"{{{NS_COMMANDS}}}command").get("status") == "completed"
        assert await storage.appserver_registration(room) is None
        assert await storage.appserver_registration(node) is not None
        # Without a room: every registration of the device.
        reply = await h.ask(h.command_xml(f"unregister-push-{kind}", {id_field: "dev-1"}))
        assert reply.get("type") == "result"
        assert await storage.appserver_registration(node) is None
        assert await storage.appserver_registration(other) is not None
        again = await h.ask(h.command_xml(f"unregister-push-{kind}", {id_field: "dev-1"}))
        assert condition(again) == ("item-not-found", "cancel")
        # Someone else cannot unregister Alice's device.
        reply = await h.ask(h.command_xml(f"unregister-push-{kind}", {id_field: "dev-2"},
                                          sender="mallory@example.org/x"))
        assert condition(reply) == ("item-not-found", "cancel")
        assert await storage.appserver_registration(other) is not None
        # And a publish to the removed node finds nothing.
        assert condition(await h.publish(node, secret="whatever")) == ("item-not-found", "cancel")

    drive(scenario)


# ------------------------------------------------------------------------------------ publishing


def test_publish_p2_waits_for_the_provider(storage):
    async def scenario():
        h = Harness(storage)
        _, node, secret = await h.register("fcm", "fcm-token", "android-1")
        h.fcm.gate = asyncio.Event()
        stanza_id = h.handle(h.publish_xml(node, secret=secret, summary={
            "message-count": "3", "pending-subscription-count": "1",
            "last-message-sender": "juliet@capulet.example/balcony", "last-message-body": "Wherefore art thou?"}))
        await until(lambda: h.fcm.sent, "the push reaches the provider")
        await asyncio.sleep(0.01)
        assert not h.answered(stanza_id)   # never answered before the provider accepted
        h.fcm.gate.set()
        reply = await h.answer(stanza_id)
        assert (reply.get("type"), reply.get("from"), reply.get("to")) == ("result", DOMAIN, ALICE)
        [sent] = h.fcm.sent
        assert sent == Notification(token="fcm-token", kind="message",
                                    collapse_id=p2_account_hash(ALICE, "android-1"), message_count=3,
                                    pending_subscriptions=1, sender="juliet@capulet.example/balcony",
                                    body="Wherefore art thou?")
        assert sent.collapse_id == hashlib.sha1(b"alice@example.org\0android-1").hexdigest()
        assert h.apns.sent == [] and h.monal.sent == []
        await until(lambda: h.server.metrics.publishes["delivered"] == 1, "counted")
        assert h.server.metrics.pushes["fcm", "delivered"] == 1
        assert h.server.metrics.latency["fcm"].count == 1
        async def used():
            return (await storage.appserver_registration(node)).last_used_at is not None
        await eventually(used, "the last use is recorded")

    drive(scenario)


def test_publish_checks_the_secret_and_the_publisher(storage):
    async def scenario():
        h = Harness(storage)
        _, node, secret = await h.register("apns", "ab" * 32, "dev-1")
        _, room_node, room_secret = await h.register("apns", "ab" * 32, "dev-1", muc="room@muc.example.org")
        refused = [
            h.publish_xml(node, secret="wrong"),
            h.publish_xml(node, secret=secret[:-1]),
            h.publish_xml(node),                                   # no publish-options at all
            h.publish_xml(node, options={"pushModule": "monalProdiOS"}),   # no secret, a module does not help
            h.publish_xml(node, secret=secret, sender="mallory@example.org"),
            h.publish_xml(node, secret=secret, sender="example.net"),       # another server
            h.publish_xml(node, secret=secret, sender="example.org/x"),     # a server's full JID is no server
            h.publish_xml("no-such-node", secret=secret),
        ]
        answers = [await h.ask(xml) for xml in refused]
        assert [condition(a) for a in answers] == [("item-not-found", "cancel")] * len(refused)
        # All the same answer: nothing tells a wrong secret from an unknown node.
        assert len({etree.tostring(a.find(f"{{{NS_CLIENT}}}error")) for a in answers}) == 1
        assert h.apns.sent == [] and h.monal.sent == []
        ok = await h.publish(node, secret=secret, sender=f"{ALICE}/resource-ignored")
        assert ok.get("type") == "result"
        # The account's server itself: Prosody's mod_cloud_notify publishes from the host's JID.
        assert (await h.publish(node, secret=secret, sender="example.org")).get("type") == "result"
        # A room registration: the room publishes (the owner may too).
        assert (await h.publish(room_node, secret=room_secret, sender="room@muc.example.org")).get("type") == "result"
        assert (await h.publish(room_node, secret=room_secret)).get("type") == "result"
        assert condition(await h.publish(room_node, secret=secret, sender="room@muc.example.org")) == (
            "item-not-found", "cancel")
        assert len(h.apns.sent) == 4
        assert h.server.metrics.publishes["unknown-node"] == len(refused) + 1

    drive(scenario)


def test_publish_monal_style(storage):
    async def scenario():
        h = Harness(storage)
        token = "cd" * 32
        reply = await h.publish(token, options={"pushModule": "monalProdiOS"}, sender=ALICE)
        assert reply.get("type") == "result"
        [sent] = h.monal.sent
        assert sent.token == token and sent.kind == "message" and sent.message_count == 1
        assert h.apns.sent == [] and h.fcm.sent == []
        async def seen():
            return await storage.appserver_registration(token) is not None
        await eventually(seen, "the device is recorded")
        stored = await storage.appserver_registration(token)
        assert (stored.style, stored.app, stored.owner, stored.token) == ("module", "monal", ALICE, token)
        # Another account on the same phone: another collapse id (its own "account" on the device).
        await h.publish(token, options={"pushModule": "monalProdiOS"}, sender="bob@example.org")
        assert h.monal.sent[0].collapse_id != h.monal.sent[1].collapse_id
        # Unknown module, or none (no module named "default" here): nothing to push to.
        assert condition(await h.publish(token, options={"pushModule": "monalDevIOS"})) == ("item-not-found", "cancel")
        assert condition(await h.publish(token)) == ("item-not-found", "cancel")
        assert len(h.monal.sent) == 2

    drive(scenario)


def test_publishes_follow_registration_changes_despite_the_cache(storage):
    """Publishes read registrations from a cache: every change made here shows at once, one made by
    another process sharing the database after REGISTRATION_CACHE_SECONDS at most."""
    async def scenario():
        h = Harness(storage)
        _, node, secret = await h.register("fcm", "tok-a", "dev-1")
        assert (await h.publish(node, secret=secret)).get("type") == "result"
        # The same device registers again with a new token: the next push goes to the new one.
        _, again, secret_again = await h.register("fcm", "tok-b", "dev-1")
        assert (await h.publish(again, secret=secret_again)).get("type") == "result"
        assert [n.token for n in h.fcm.sent] == ["tok-a", "tok-b"]
        # Unregistered here: gone at once, although it was just read for a push.
        await h.ask(h.command_xml("unregister-push-fcm", {"android-id": "dev-1"}))
        assert condition(await h.publish(again, secret=secret_again)) == ("item-not-found", "cancel")
        # Registered, pushed, then deleted behind this process's back (another app server instance).
        _, node, secret = await h.register("fcm", "tok-c", "dev-2")
        assert (await h.publish(node, secret=secret)).get("type") == "result"
        assert await storage.appserver_remove(node, "tok-c")
        assert (await h.publish(node, secret=secret)).get("type") == "result"   # still cached
        h.time.now += component_module.REGISTRATION_CACHE_SECONDS
        assert condition(await h.publish(node, secret=secret)) == ("item-not-found", "cancel")
        assert [n.token for n in h.fcm.sent] == ["tok-a", "tok-b", "tok-c", "tok-c"]

    drive(scenario)


def test_publish_monal_default_module(storage):
    async def scenario():
        h = Harness(storage, push_modules={"default": "monal"})
        assert (await h.publish("ef" * 32)).get("type") == "result"
        assert [n.token for n in h.monal.sent] == ["ef" * 32]

    drive(scenario)


def test_provider_outcomes(storage):
    async def scenario():
        h = Harness(storage)
        _, node, secret = await h.register("apns", "ab" * 32, "dev-1")
        h.apns.script.extend([
            Result("retry", "TooManyRequests", retry_after=5),
            Result("rejected", "BadTopic"),
            RuntimeError("a provider bug"),
        ])
        retry = await h.publish(node, secret=secret)
        assert condition(retry) == ("resource-constraint", "wait")
        rejected = await h.publish(node, secret=secret)
        assert condition(rejected) == ("internal-server-error", "cancel")
        assert "BadTopic" in rejected.find(f"{{{NS_CLIENT}}}error").findtext(f"{{{NS_STANZAS}}}text")
        crashed = await h.publish(node, secret=secret)
        assert condition(crashed) == ("internal-server-error", "cancel")
        assert await storage.appserver_registration(node) is not None   # none of these removes it
        # An APNs 410 from before the token was registered is not believed.
        h.apns.script.append(Result("unregistered", "Unregistered", unregistered_at=1_000_000_000.0))
        assert condition(await h.publish(node, secret=secret)) == ("internal-server-error", "cancel")
        assert await storage.appserver_registration(node) is not None
        # A dead token: the registration goes, the XMPP server is told item-not-found.
        h.apns.script.append(Result("unregistered", "Unregistered",
                                    unregistered_at=datetime.now(timezone.utc).timestamp() + 3600))
        assert condition(await h.publish(node, secret=secret)) == ("item-not-found", "cancel")
        assert await storage.appserver_registration(node) is None
        assert condition(await h.publish(node, secret=secret)) == ("item-not-found", "cancel")
        assert len(h.apns.sent) == 5
        # FCM's UNREGISTERED has no timestamp.
        _, fcm_node, fcm_secret = await h.register("fcm", "fcm-token", "android-1")
        h.fcm.script.append(Result("unregistered", "UNREGISTERED"))
        assert condition(await h.publish(fcm_node, secret=fcm_secret)) == ("item-not-found", "cancel")
        assert await storage.appserver_registration(fcm_node) is None
        m = h.server.metrics
        assert (m.pushes["apns", "retry"], m.pushes["apns", "rejected"], m.pushes["apns", "unregistered"],
                m.pushes["fcm", "unregistered"]) == (1, 2, 2, 1)
        assert m.dead == 2
        snapshot = m.snapshot()
        assert snapshot["pushes"]["apns/retry"] == 1 and snapshot["latency"]["apns"]["count"] == 5

    drive(scenario)


def test_monal_dead_token_is_forgotten(storage):
    async def scenario():
        h = Harness(storage)
        token = "cd" * 32
        await h.publish(token, options={"pushModule": "monalProdiOS"})

        async def seen():
            return await storage.appserver_registration(token) is not None
        await eventually(seen, "the device is recorded")
        h.monal.script.append(Result("unregistered", "BadDeviceToken"))
        assert condition(await h.publish(token, options={"pushModule": "monalProdiOS"})) == ("item-not-found", "cancel")
        assert await storage.appserver_registration(token) is None

    drive(scenario)


def test_calls_and_their_end(storage):
    async def scenario():
        h = Harness(storage)
        _, node, secret = await h.register("apns", "ab" * 32, "dev-1")
        propose = {"call-action": "propose", "call-id": "call-1", "caller": "romeo@montague.example"}
        assert (await h.publish(node, secret=secret, summary=propose)).get("type") == "result"
        retract = dict(propose, **{"call-action": "retract"})
        assert (await h.publish(node, secret=secret, summary=retract)).get("type") == "result"
        [call, ended] = h.apns.sent
        assert (call.kind, call.call_id, call.caller) == ("call", "call-1", "romeo@montague.example")
        assert (ended.kind, ended.call_id, ended.caller) == ("call-ended", "call-1", "romeo@montague.example")
        # Call fields on a plain message are not passed on.
        await h.publish(node, secret=secret, summary={"call-id": "x", "caller": "y@z"})
        assert (h.apns.sent[2].kind, h.apns.sent[2].call_id, h.apns.sent[2].caller) == ("message", None, None)

    drive(scenario)


def test_encryption_key_from_publish_options(storage):
    async def scenario():
        h = Harness(storage)
        _, node, secret = await h.register("apns", "ab" * 32, "dev-1")
        key = os.urandom(16)
        options = {"encrypt-alg": "aes-128-gcm", "encrypt-key": base64.b64encode(key).decode()}
        assert (await h.publish(node, secret=secret, options=options)).get("type") == "result"
        assert h.apns.sent[-1].encryption_key == key
        # A key that cannot be used: refused, never pushed in clear.
        bad = {"encrypt-alg": "aes-128-gcm", "encrypt-key": base64.b64encode(b"short").decode()}
        assert condition(await h.publish(node, secret=secret, options=bad)) == ("bad-request", "modify")
        odd = {"encrypt-alg": "rot13", "encrypt-key": base64.b64encode(key).decode()}
        assert condition(await h.publish(node, secret=secret, options=odd)) == ("bad-request", "modify")
        assert len(h.apns.sent) == 1
        await h.publish(node, secret=secret)
        assert h.apns.sent[-1].encryption_key is None

    drive(scenario)


def test_odd_summaries(storage):
    async def scenario():
        h = Harness(storage)
        _, node, secret = await h.register("fcm", "t", "d")
        # XEP-0357: the summary form is optional: a neutral push.
        assert (await h.publish(node, secret=secret, with_form=False)).get("type") == "result"
        assert (h.fcm.sent[-1].kind, h.fcm.sent[-1].message_count) == ("message", None)
        # Counts that are not counts are dropped, a huge body is cut.
        await h.publish(node, secret=secret, summary={"message-count": "-3", "pending-subscription-count": "²",
                                                       "last-message-body": "x" * 100000})
        sent = h.fcm.sent[-1]
        assert (sent.message_count, sent.pending_subscriptions) == (None, None)
        assert len(sent.body) == component_module.MAX_BODY

    drive(scenario)


# ------------------------------------------------------------------------------------ rate limit


def test_rate_limit_delays_and_merges(storage):
    async def scenario():
        h = Harness(storage, rate_limit=1.0, rate_burst=2)
        _, node, secret = await h.register("fcm", "t", "d")
        h.time.hold = asyncio.Event()
        ids = [h.handle(h.publish_xml(node, secret=secret, summary={"message-count": str(n)})) for n in (1, 2)]
        await until(lambda: len(h.fcm.sent) == 2, "the burst goes out at once")
        for n in (3, 4):
            ids.append(h.handle(h.publish_xml(node, secret=secret, summary={"message-count": str(n)})))
            await until(lambda: h.server.metrics.delayed == n - 2, f"publish {n} waits for the rate limit")
        for stanza_id in ids[:2]:
            assert (await h.answer(stanza_id)).get("type") == "result"
        await asyncio.sleep(0.01)
        assert not h.answered(ids[2]) and not h.answered(ids[3]) and len(h.fcm.sent) == 2
        h.time.hold.set()
        for stanza_id in ids[2:]:
            assert (await h.answer(stanza_id)).get("type") == "result"
        # One push for the two waiting publishes, carrying the newer count, one token (1 s) later.
        counts = [n.message_count for n in h.fcm.sent]
        assert sorted(counts[:2]) == [1, 2] and counts[2:] == [4]
        assert h.time.sleeps == [1.0]
        assert h.server.metrics.merged == 1

    drive(scenario)


def test_rate_limit_keeps_accounts_on_one_device_apart(storage):
    async def scenario():
        h = Harness(storage, rate_limit=2.0, rate_burst=1)
        token = "cd" * 32
        ids = [h.handle(h.publish_xml(token, options={"pushModule": "monalProdiOS"}, sender=sender))
               for sender in (ALICE, "bob@example.org", "carol@example.org")]
        for stanza_id in ids:
            assert (await h.answer(stanza_id)).get("type") == "result"
        # Three accounts on one phone: three pushes (none replaces another's), spaced by the limit.
        assert len({n.collapse_id for n in h.monal.sent}) == 3
        assert h.time.sleeps == [0.5, 0.5]

    drive(scenario)


def test_a_call_skips_the_queue(storage):
    async def scenario():
        h = Harness(storage, rate_limit=1.0, rate_burst=1)
        _, node, secret = await h.register("apns", "ab" * 32, "dev-1")
        h.time.hold = asyncio.Event()
        assert (await h.publish(node, secret=secret)).get("type") == "result"
        second = h.handle(h.publish_xml(node, secret=secret, summary={"message-count": "2"}))
        await until(lambda: h.server.metrics.delayed == 1, "the second message waits")
        call = await h.publish(node, secret=secret, summary={"call-action": "propose", "call-id": "c1",
                                                              "caller": "romeo@montague.example"})
        assert call.get("type") == "result"
        assert [n.kind for n in h.apns.sent] == ["message", "call"]
        assert not h.answered(second)
        h.time.hold.set()
        assert (await h.answer(second)).get("type") == "result"
        assert [n.kind for n in h.apns.sent] == ["message", "call", "message"]

    drive(scenario)


def test_rate_limit_bounds_what_waits(storage):
    async def scenario():
        h = Harness(storage, rate_limit=1.0, rate_burst=1, max_waiting=2, max_delay=2.5)
        token = "cd" * 32
        h.time.hold = asyncio.Event()
        senders = [f"user{i}@example.org" for i in range(5)]
        ids = [h.handle(h.publish_xml(token, options={"pushModule": "monalProdiOS"}, sender=s)) for s in senders]
        await until(lambda: sum(h.answered(i) for i in ids) == 3, "the burst and the refusals are answered")
        early = sorted((condition(h_answer(h, i)) or ("result",)) for i in ids if h.answered(i))
        assert early == [("resource-constraint", "wait"), ("resource-constraint", "wait"), ("result",)]
        assert h.server.metrics.publishes["busy"] == 2
        h.time.hold.set()
        answers = [await h.answer(i) for i in ids]
        assert sorted(a.get("type") for a in answers) == ["error", "error", "result", "result", "result"]
        assert len(h.monal.sent) == 3

    drive(scenario)


def h_answer(h: Harness, stanza_id: str) -> etree._Element:
    return next(e for e in h.out if e.get("id") == stanza_id)


# ------------------------------------------------------------------------------------ bad input


def test_bad_input_gets_the_right_errors(storage):
    async def scenario():
        h = Harness(storage)
        ps = "http://jabber.org/protocol/pubsub"
        cases = {
            "no-node": (f"<iq xmlns='{{ns}}' type='set' id='no-node' from='{ALICE}' to='{DOMAIN}'><pubsub xmlns='{ps}'>"
                        "<publish><item><notification xmlns='urn:xmpp:push:0'/></item></publish></pubsub></iq>",
                        ("bad-request", "modify")),
            "no-item": (f"<iq xmlns='{{ns}}' type='set' id='no-item' from='{ALICE}' to='{DOMAIN}'><pubsub xmlns='{ps}'>"
                        "<publish node='n'/></pubsub></iq>", ("bad-request", "modify")),
            "not-push": (f"<iq xmlns='{{ns}}' type='set' id='not-push' from='{ALICE}' to='{DOMAIN}'><pubsub xmlns='{ps}'>"
                         "<publish node='n'><item><entry xmlns='urn:x'/></item></publish></pubsub></iq>",
                         ("bad-request", "modify")),
            "subscribe": (f"<iq xmlns='{{ns}}' type='set' id='subscribe' from='{ALICE}' to='{DOMAIN}'><pubsub xmlns='{ps}'>"
                          f"<subscribe node='n' jid='{ALICE}'/></pubsub></iq>", ("feature-not-implemented", "cancel")),
            "items": (f"<iq xmlns='{{ns}}' type='get' id='items' from='{ALICE}' to='{DOMAIN}'><pubsub xmlns='{ps}'>"
                      "<items node='n'/></pubsub></iq>", ("feature-not-implemented", "cancel")),
            "vcard": (f"<iq xmlns='{{ns}}' type='get' id='vcard' from='{ALICE}' to='{DOMAIN}'><vCard xmlns='vcard-temp'/></iq>",
                      ("service-unavailable", "cancel")),
            "two": (f"<iq xmlns='{{ns}}' type='get' id='two' from='{ALICE}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/>"
                    "<ping xmlns='urn:xmpp:ping'/></iq>", ("bad-request", "modify")),
            "empty": (f"<iq xmlns='{{ns}}' type='set' id='empty' from='{ALICE}' to='{DOMAIN}'/>", ("bad-request", "modify")),
            "odd-type": (f"<iq xmlns='{{ns}}' type='nonsense' id='odd-type' from='{ALICE}' to='{DOMAIN}'>"
                         "<ping xmlns='urn:xmpp:ping'/></iq>", ("bad-request", "modify")),
            "user-at-us": (f"<iq xmlns='{{ns}}' type='get' id='user-at-us' from='{ALICE}' to='someone@{DOMAIN}'>"
                           "<ping xmlns='urn:xmpp:ping'/></iq>", ("service-unavailable", "cancel")),
            "long-node": (h.publish_xml("n" * 5000, stanza_id="long-node"), ("item-not-found", "cancel")),
            "bad-from": (h.publish_xml("n", sender="@bad", stanza_id="bad-from"), ("jid-malformed", "modify")),
            "get-command": (h.command_xml("register-push-fcm", {"token": "t", "android-id": "a"},
                                          stanza_id="get-command").replace("type='set'", "type='get'"),
                            ("service-unavailable", "cancel")),
            "message": (f"<message xmlns='{{ns}}' id='message' from='{ALICE}/x' to='{DOMAIN}'><body>hi</body></message>",
                        ("service-unavailable", "cancel")),
        }
        for stanza_id, (xml, expected) in cases.items():
            reply = await h.ask(xml)
            assert condition(reply) == expected, stanza_id
            assert reply.get("to") in (ALICE, f"{ALICE}/x", f"{ALICE}/phone", "@bad"), stanza_id
        # Answers, errors, presence and stanzas without a sender are never answered.
        before = len(h.out)
        for xml in (
            f"<iq xmlns='{{ns}}' type='result' id='r1' from='{ALICE}' to='{DOMAIN}'/>",
            f"<iq xmlns='{{ns}}' type='error' id='r2' from='{ALICE}' to='{DOMAIN}'><error type='cancel'/></iq>",
            f"<message xmlns='{{ns}}' type='error' id='r3' from='{ALICE}' to='{DOMAIN}'/>",
            f"<presence xmlns='{{ns}}' id='r4' from='{ALICE}/x' to='{DOMAIN}'/>",
            f"<presence xmlns='{{ns}}' type='subscribe' id='r5' from='{ALICE}' to='{DOMAIN}'/>",
            f"<iq xmlns='{{ns}}' type='get' id='r6' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>",
            f"<other xmlns='{{ns}}' id='r7' from='{ALICE}'/>",
        ):
            h.handle(xml)
        await asyncio.sleep(0.01)
        assert len(h.out) == before
        assert h.apns.sent == h.fcm.sent == h.monal.sent == []

    drive(scenario)


def test_too_much_at_once_is_answered_wait(storage):
    async def scenario():
        h = Harness(storage, max_in_flight=2)
        _, node, secret = await h.register("fcm", "t", "d")
        h.fcm.gate = asyncio.Event()
        ids = [h.handle(h.publish_xml(node, secret=secret)) for _ in range(3)]
        assert condition(await h.answer(ids[2])) == ("resource-constraint", "wait")
        h.fcm.gate.set()
        assert [(await h.answer(i)).get("type") for i in ids[:2]] == ["result", "result"]

    drive(scenario)


def test_storage_failure_is_answered_wait(storage):
    async def scenario():
        h = Harness(storage)
        _, node, secret = await h.register("fcm", "t", "d")
        await storage.close()
        assert condition(await h.publish(node, secret=secret)) == ("resource-constraint", "wait")
        reply = await h.ask(h.command_xml("register-push-fcm", {"token": "t", "android-id": "a"}))
        assert condition(reply) == ("resource-constraint", "wait")
        assert h.fcm.sent == []

    drive(scenario)


def test_close_answers_what_waits_and_closes_providers(storage):
    async def scenario():
        h = Harness(storage, rate_limit=1.0, rate_burst=1)
        _, node, secret = await h.register("fcm", "t", "d")
        h.time.hold = asyncio.Event()
        first = await h.publish(node, secret=secret)
        assert first.get("type") == "result"
        waiting = h.handle(h.publish_xml(node, secret=secret))
        await until(lambda: h.server.metrics.delayed == 1, "a push waits")
        await h.server.close()
        assert condition(await h.answer(waiting)) == ("resource-constraint", "wait")
        assert h.fcm.closed and h.apns.closed and h.monal.closed
        late = await h.publish(node, secret=secret)
        assert condition(late) == ("resource-constraint", "wait")
        assert len(h.fcm.sent) == 1

    drive(scenario)


def test_expiry(storage):
    async def scenario():
        h = Harness(storage, registration_expiry=30)
        _, node, _ = await h.register("fcm", "t", "d")
        assert await h.server.expire(datetime.now(timezone.utc) + timedelta(days=29)) == 0
        assert await h.server.expire(datetime.now(timezone.utc) + timedelta(days=31)) == 1
        assert await storage.appserver_registration(node) is None
        assert h.server.metrics.expired == 1
        assert await h.server.registration_counts() == {}
        # An account deleted: its registrations go (both kinds), nobody else's.
        _, mine, _ = await h.register("fcm", "t", "d")
        await h.publish("cd" * 32, options={"pushModule": "monalProdiOS"})

        async def seen():
            return await storage.appserver_registration("cd" * 32) is not None
        await eventually(seen, "the Monal device is recorded")
        _, bobs, _ = await h.register("fcm", "t2", "d2", sender="bob@example.org/x")
        assert await h.server.forget(ALICE) == 2
        assert await h.server.registration_counts() == {"conversations": 1}
        assert await storage.appserver_registration(bobs) is not None

    drive(scenario)


def test_configuration_mistakes_are_refused(storage):
    providers = {"a": FakeProvider("apns"), "f": FakeProvider("fcm")}
    with pytest.raises(ValueError, match="not one of the apps"):
        AppServer(DOMAIN, print, storage, providers, default_apns_app="nope")
    with pytest.raises(ValueError, match="is an fcm app"):
        AppServer(DOMAIN, print, storage, providers, default_apns_app="f")
    with pytest.raises(ValueError, match="pushModule"):
        AppServer(DOMAIN, print, storage, providers, push_modules={"m": "nope"})


def test_component_namespace(storage):
    """On a XEP-0114 stream stanzas are jabber:component:accept, both ways."""
    async def scenario():
        h = Harness(storage, ns=NS_COMPONENT)
        _, node, secret = await h.register("fcm", "t", "d")
        reply = await h.publish(node, secret=secret)
        assert reply.tag == f"{{{NS_COMPONENT}}}iq" and reply.get("type") == "result"
        error = await h.publish(node, secret="wrong")
        assert error.find(f"{{{NS_COMPONENT}}}error") is not None
        # A jabber:client stanza is not one of ours on that stream.
        h.server.handle(etree.fromstring(f"<iq xmlns='{NS_CLIENT}' type='get' id='c1' from='{ALICE}' to='{DOMAIN}'>"
                                         "<ping xmlns='urn:xmpp:ping'/></iq>"))
        await asyncio.sleep(0.01)
        assert not h.answered("c1")

    drive(scenario)


# ------------------------------------------------------------------------------------ XEP-0114


class MiniComponentServer:
    """The XMPP-server end of XEP-0114: checks the handshake, then exchanges stanzas. Each connection is kept
    in `connections` as (reader, writer, stream id)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.accepted = asyncio.Queue()
        self.attempts = 0
        self.headers: list[str] = []
        self.handshakes: list[str] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.attempts += 1
        stream_id = f"id{self.attempts}"
        header = (await reader.readuntil(b">")).decode()
        if header.startswith("<?xml"):
            header = (await reader.readuntil(b">")).decode()
        self.headers.append(header)
        writer.write(f"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
                     f"xmlns:stream='http://etherx.jabber.org/streams' id='{stream_id}' from='{DOMAIN}'>".encode())
        handshake = (await reader.readuntil(b"</handshake>")).decode()
        self.handshakes.append(handshake)
        if handshake != f"<handshake>{handshake_digest(stream_id, self.secret)}</handshake>":
            writer.write(b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                         b"</stream:error></stream:stream>")
            writer.close()
            return
        writer.write(b"<handshake/>")
        await self.accepted.put((reader, writer))


async def read_stanza(reader: asyncio.StreamReader, end: bytes) -> etree._Element:
    data = await asyncio.wait_for(reader.readuntil(end), WAIT)
    wrapped = b"<s xmlns='jabber:component:accept'>" + data.strip() + b"</s>"
    return etree.fromstring(wrapped)[0]


def test_handshake_digest():
    # XEP-0114 §3 example: stream id 3BF96D32, secret "secret".
    assert handshake_digest("3BF96D32", "secret") == hashlib.sha1(b"3BF96D32secret").hexdigest()


def test_component_connection_end_to_end(storage):
    async def scenario():
        mini = MiniComponentServer("s3cr3t")
        port = await mini.start()
        connection = ComponentConnection("127.0.0.1", port, DOMAIN, "s3cr3t", min_backoff=0.01, max_backoff=0.05)
        fcm = FakeProvider("fcm")
        server = AppServer(DOMAIN, connection.send, storage, {"conversations": fcm}, default_fcm_app="conversations",
                           stanza_ns=NS_COMPONENT)
        connection.handler = server.handle
        connection.start()
        try:
            reader, writer = await asyncio.wait_for(mini.accepted.get(), WAIT)
            assert f"to='{DOMAIN}'" in mini.headers[0] and "jabber:component:accept" in mini.headers[0]
            await asyncio.wait_for(connection.connected.wait(), WAIT)
            # A registration and a publish, as the XMPP server would route them.
            writer.write(
                f"<iq type='set' id='r1' from='{ALICE}/phone' to='{DOMAIN}'><command xmlns='{NS_COMMANDS}' "
                "node='register-push-fcm' action='execute'><x xmlns='jabber:x:data' type='submit'>"
                "<field var='token'><value>fcm-token</value></field>"
                "<field var='android-id'><value>a1</value></field></x></command></iq>".encode())
            reply = await read_stanza(reader, b"</iq>")
            assert (reply.tag, reply.get("type"), reply.get("to"), reply.get("from")) == (
                f"{{{NS_COMPONENT}}}iq", "result", f"{ALICE}/phone", DOMAIN)
            fields = {f.get("var"): f.findtext(f"{{{NS_DATA}}}value") for f in reply.iter(f"{{{NS_DATA}}}field")}
            h = Harness.__new__(Harness)
            h.ns, h._ids = NS_COMPONENT, 0
            writer.write(h.publish_xml(fields["node"], secret=fields["secret"], stanza_id="p1")
                         .replace(" xmlns='{ns}'", "").encode())
            answer = await read_stanza(reader, b"/>")
            assert (answer.get("id"), answer.get("type")) == ("p1", "result")
            assert [n.token for n in fcm.sent] == ["fcm-token"]
            # The server drops the connection: the component comes back by itself.
            writer.close()
            reader2, writer2 = await asyncio.wait_for(mini.accepted.get(), WAIT)
            await until(lambda: connection.connections == 2, "reconnected")
            writer2.write(f"<iq type='get' id='d1' from='{ALICE}/phone' to='{DOMAIN}'>"
                          "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>".encode())
            info = await read_stanza(reader2, b"</iq>")
            assert info.get("id") == "d1" and info.get("type") == "result"
            writer2.write(b"</stream:stream>")
        finally:
            await connection.stop()
            await server.close()
            await mini.stop()
        assert not connection.connected.is_set()

    drive(scenario)


def test_component_connection_wrong_secret_keeps_trying(storage):
    async def scenario():
        mini = MiniComponentServer("right")
        port = await mini.start()
        connection = ComponentConnection("127.0.0.1", port, DOMAIN, "wrong", min_backoff=0.01, max_backoff=0.02)
        connection.start()
        try:
            await until(lambda: mini.attempts >= 3, "tries again after a refused handshake")
            assert connection.connections == 0 and not connection.connected.is_set()
            assert mini.handshakes[0] == f"<handshake>{handshake_digest('id1', 'wrong')}</handshake>"
        finally:
            await connection.stop()
            await mini.stop()

    drive(scenario)


def test_component_connection_drops_while_down():
    async def scenario():
        connection = ComponentConnection("127.0.0.1", 9, DOMAIN, "x")
        connection.send(etree.fromstring(f"<iq xmlns='{NS_COMPONENT}' type='result' id='x' to='{ALICE}'/>"))  # no error
        await connection.stop()

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------ standalone


CONFIG = """
[appserver]
domain = "push.example.org"
component_host = "127.0.0.1"
component_port = {port}
component_secret = "s3cr3t"
rate_limit = 2.5

[storage]
backend = "sqlite"
sqlite_path = "appserver.sqlite3"
"""


def test_standalone_config(tmp_path):
    path = tmp_path / "appserver.toml"
    path.write_text(CONFIG.format(port=5347))
    config = load_config(str(path))
    settings = config.appserver
    assert (settings.domain, settings.component_host, settings.component_port, settings.component_secret) == (
        "push.example.org", "127.0.0.1", 5347, "s3cr3t")
    assert (settings.rate_limit, settings.rate_burst, settings.registration_expiry, settings.apps) == (2.5, 5, 90.0, ())
    assert config.storage.sqlite_path == str(tmp_path / "appserver.sqlite3")
    key = tmp_path / "AuthKey.p8"
    key.write_text("not read here")
    path.write_text(textwrap.dedent(f"""
        [appserver]
        component_port = 70000
        rate_limit = "fast"
        default_fcm_app = "siskin"
        colour = "blue"

        [appserver.apps.siskin]
        type = "apns"
        key_file = "{key}"
        key_id = "K"
        team_id = "T"
        push_modules = ["m"]

        [appserver.apps.other]
        type = "fcm"
        service_account_file = "/no/such/file.json"

        [storage]
        backend = "postgresql"

        [extra]
        x = 1
        """))
    with pytest.raises(ConfigError) as failure:
        load_config(str(path))
    report = str(failure.value)
    for expected in ("[extra]: unknown section", "[appserver] colour",
                     '[appserver] domain = "": is missing; the standalone app server needs it',
                     '[appserver] component_secret = "": is missing', "[appserver] component_port = 70000",
                     "[appserver] rate_limit = \"fast\"",
                     '[storage] postgresql_dsn = "": required when [storage] backend = "postgresql"'):
        assert expected in report, expected
    # The apps table's own errors name the inner key (the first one found in the table).
    assert "[appserver.apps." in report
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.toml"))


def test_standalone_serve(tmp_path):
    """`python -m xmppd.appserver`'s serve(): own storage, a component connection, answers over it."""
    async def scenario():
        mini = MiniComponentServer("s3cr3t")
        port = await mini.start()
        path = tmp_path / "appserver.toml"
        path.write_text(CONFIG.format(port=port))
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(serve(load_config(str(path)), stop))
        try:
            reader, writer = await asyncio.wait_for(mini.accepted.get(), WAIT)
            writer.write(f"<iq type='get' id='d1' from='{ALICE}/phone' to='{DOMAIN}'>"
                         "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>".encode())
            info = await read_stanza(reader, b"</iq>")
            assert info.get("type") == "result" and info[0].find(
                "{http://jabber.org/protocol/disco#info}identity").get("type") == "push"
            # No app configured: registrations are refused, publishes find nothing.
            writer.write(f"<iq type='set' id='r1' from='{ALICE}/phone' to='{DOMAIN}'><command xmlns='{NS_COMMANDS}' "
                         "node='register-push-fcm' action='execute'/></iq>".encode())
            refused = await read_stanza(reader, b"</iq>")
            assert refused.get("type") == "error"
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT)
            await mini.stop()
        assert (tmp_path / "appserver.sqlite3").exists()

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------ with the real providers


def test_with_the_real_providers(storage, tmp_path):
    """The component with aioapns and pyfcm against the fake APNs and FCM (tests/push_fakes.py)."""
    from tests.push_fakes import FakeAPNs, FakeFCM

    from xmppd.appserver.component import providers_from_config, push_modules_of
    from xmppd.config import PushApp

    with FakeAPNs("org.example.monal") as apns, FakeFCM("xmppd-test") as fcm:
        key_file = tmp_path / "AuthKey.p8"
        key_file.write_text(apns.key.pem)
        account_file = tmp_path / "service-account.json"
        account_file.write_text(__import__("json").dumps(fcm.service_account()))
        apps = (PushApp("monal", "apns", ("monalProdiOS",), key_file=str(key_file), key_id=apns.key.key_id,
                        team_id=apns.key.team_id, topic="org.example.monal", sandbox=True),
                PushApp("conversations", "fcm", (), service_account_file=str(account_file)))

        async def scenario():
            providers = providers_from_config(
                apps, apns_options={"host": apns.host, "port": apns.port, "ssl_context": apns.client_ssl_context()},
                fcm_options={"endpoint": fcm.endpoint})
            h = Harness(storage, default_apns_app=None, default_fcm_app="conversations",
                        push_modules=push_modules_of(apps))
            h.server.providers = providers
            try:
                _, node, secret = await h.register("fcm", "fcm-token-1", "android-1")
                reply = await h.publish(node, secret=secret, summary={"message-count": "2"})
                assert reply.get("type") == "result"
                [request] = fcm.requests
                assert request.token == "fcm-token-1"
                assert request.data["account"] == p2_account_hash(ALICE, "android-1")
                assert request.data["message-count"] == "2"
                assert request.android["priority"] == "high"
                fcm.respond(404, "UNREGISTERED", token="fcm-token-1")
                assert condition(await h.publish(node, secret=secret)) == ("item-not-found", "cancel")
                assert await storage.appserver_registration(node) is None

                token = "ab" * 32
                reply = await h.publish(token, options={"pushModule": "monalProdiOS"},
                                        summary={"call-action": "propose", "call-id": "c1",
                                                 "caller": "romeo@montague.example"})
                assert reply.get("type") == "result"
                [push] = apns.requests
                assert (push.token, push.push_type, push.topic) == (token, "voip", "org.example.monal.voip")
                apns.respond(410, "Unregistered", token=token, timestamp=int(datetime.now(timezone.utc).timestamp() * 1000))
                assert condition(await h.publish(token, options={"pushModule": "monalProdiOS"})) == (
                    "item-not-found", "cancel")
                assert apns.violations == [] and fcm.violations == []
            finally:
                await h.server.close()

        drive(scenario)
