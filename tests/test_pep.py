"""XEP-0163 PEP over real sockets with slixmpp (XEP-0060 publish, items, retract, configure, delete; XEP-0115
filtered notifications; last item at presence), XEP-0402/XEP-0049 bookmarks, on both backends."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import xml.etree.ElementTree as ET

import pytest
from slixmpp.exceptions import IqError

from tests.conftest import start_xmppd
from tests.harness import Client, iq_error_condition, run
from tests.lean_client import LeanClient, random_password
from tests.storage_fixtures import BACKENDS
from tests.test_im import next_of_type, wait_for_own_presence
from tests.test_push import enable_push, fakes  # noqa: F401  (the fake APNs and FCM fixture)

# A small node limit, so that the test of it need not create hundreds (the other tests stay far below it).
XMPPD_EXTRA_CONFIG = "\n[pep]\nmax_nodes = 8\n"

TUNE = "http://jabber.org/protocol/tune"
BOOKMARKS = "urn:xmpp:bookmarks:1"
ERRORS = "{http://jabber.org/protocol/pubsub#errors}"


class PepClient(Client):
    """A client with pubsub, entity caps and PEP interests (NODE+notify in its caps)."""

    def __init__(self, server, jid, password, interests=()) -> None:
        super().__init__(server, jid, password)
        for plugin in ("xep_0004", "xep_0060", "xep_0115", "xep_0163"):
            self.register_plugin(plugin)
        self.interests = list(interests)
        self.events: asyncio.Queue = asyncio.Queue()
        for kind in ("publish", "retract", "purge", "delete"):
            self.add_event_handler(f"pubsub_{kind}", lambda msg, kind=kind: self.events.put_nowait((kind, msg)))

    async def online(self) -> "PepClient":
        await self.login()
        if self.interests:
            self.plugin["xep_0163"].add_interest(self.interests)
        await self.plugin["xep_0115"].update_caps(broadcast=False)   # caps go out with presence from now on
        await self.get_roster(timeout=5)
        self.send_presence()
        await wait_for_own_presence(self)
        return self

    async def next_event(self, kind: str, node: str, timeout: float = 10.0):
        while True:
            got, message = await asyncio.wait_for(self.events.get(), timeout)
            element = kind if kind in ("purge", "delete") else "items"
            if got == kind and message["pubsub_event"][element]["node"] == node:
                return message

    async def no_event(self, seconds: float = 1.0) -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(self.events.get(), seconds)


def tune(title: str) -> ET.Element:
    element = ET.Element(f"{{{TUNE}}}tune")
    ET.SubElement(element, f"{{{TUNE}}}title").text = title
    return element


def options(**values: str):
    """A publish-options or node_config form (type submit)."""
    from slixmpp.plugins.xep_0004 import Form
    form = Form()
    form["type"] = "submit"
    form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options")
    for var, value in values.items():
        form.add_field(var=f"pubsub#{var}", value=value)
    return form


def error_of(error: IqError) -> tuple[str, str | None]:
    """(defined condition, pubsub#errors condition or None)."""
    app = [child.tag for child in error.iq["error"].xml if child.tag.startswith(ERRORS)]
    return error.iq["error"]["condition"], app[0][len(ERRORS):] if app else None


async def befriend(a: Client, b: Client) -> None:
    """Mutual presence subscription between two online clients."""
    for one, other in ((a, b), (b, a)):
        one.send_presence(pto=other.boundjid.bare, ptype="subscribe")
        await next_of_type(other.presences, "subscribe")
        other.send_presence(pto=one.boundjid.bare, ptype="subscribed")
        await next_of_type(one.presences, "subscribed")


async def private(client: Client, iq_type: str, element: ET.Element | None = None, to: str | None = None):
    """A XEP-0049 get or set with one element (or none); the element that came back, for a get."""
    iq = client.Iq(stype=iq_type, sto=to)
    query = ET.SubElement(iq.xml, "{jabber:iq:private}query")
    if element is not None:
        query.append(element)
    result = await iq.send(timeout=5)
    answer = result.xml.find("{jabber:iq:private}query")
    return answer[0] if answer is not None and len(answer) else None


def item_titles(result) -> list[str]:
    return [item["payload"].find(f"{{{TUNE}}}title").text for item in result["pubsub"]["items"]]


def test_publish_reaches_subscribed_resources_with_interest(xmppd, account):
    (alice, pa), (bob, pb), (carol, pc) = account("alice"), account("bob"), account("carol")

    async def scenario():
        a = await PepClient(xmppd, alice, pa, [TUNE]).online()
        b = await PepClient(xmppd, bob, pb).online()
        await befriend(a, b)
        await a.plugin["xep_0060"].publish(alice, TUNE, id="t1", payload=tune("first"), timeout=5)
        own = await a.next_event("publish", TUNE)          # the owner's resource with +notify
        assert own["from"] == alice and own["type"] == "headline"
        # Bob's new resource says it wants tunes: it gets the last item at once, stamped with its time.
        b2 = await PepClient(xmppd, bob, pb, [TUNE]).online()
        last = await b2.next_event("publish", TUNE)
        assert last["pubsub_event"]["items"]["item"]["id"] == "t1"
        assert last.xml.find("{urn:xmpp:delay}delay").get("stamp")
        # Live notifications: b2 gets the next one, b (no +notify) and carol (no subscription) get nothing.
        c = await PepClient(xmppd, carol, pc, [TUNE]).online()
        await a.plugin["xep_0060"].publish(alice, TUNE, id="t2", payload=tune("second"), timeout=5)
        live = await b2.next_event("publish", TUNE)
        item = live["pubsub_event"]["items"]["item"]
        assert item["id"] == "t2" and item["payload"].find(f"{{{TUNE}}}title").text == "second"
        assert live.xml.find("{http://jabber.org/protocol/address}addresses") is not None   # replyto: publisher
        await b.no_event()
        await c.no_event(0.2)
        for client in (a, b, b2, c):
            await client.close()

    run(scenario())


def test_items_access_models_and_errors(xmppd, account):
    (alice, pa), (bob, pb), (carol, pc) = account("alice"), account("bob"), account("carol")

    async def scenario():
        a = await PepClient(xmppd, alice, pa).online()
        b = await PepClient(xmppd, bob, pb).online()
        c = await PepClient(xmppd, carol, pc).online()
        await befriend(a, b)
        pubsub = a.plugin["xep_0060"]
        await pubsub.publish(alice, "urn:example:presence", id="p", payload=tune("for contacts"), timeout=5)
        await pubsub.publish(alice, "urn:example:open", id="o", payload=tune("for all"),
                             options=options(access_model="open"), timeout=5)
        await pubsub.publish(alice, "urn:example:secret", id="s", payload=tune("for me"),
                             options=options(access_model="whitelist"), timeout=5)
        # The default access model is presence: Bob (subscribed) reads, Carol does not.
        got = await b.plugin["xep_0060"].get_items(alice, "urn:example:presence", timeout=5)
        assert item_titles(got) == ["for contacts"]
        with pytest.raises(IqError) as caught:
            await c.plugin["xep_0060"].get_items(alice, "urn:example:presence", timeout=5)
        assert error_of(caught.value) == ("not-authorized", "presence-subscription-required")
        assert item_titles(await c.plugin["xep_0060"].get_items(alice, "urn:example:open", timeout=5)) == ["for all"]
        with pytest.raises(IqError) as caught:
            await b.plugin["xep_0060"].get_items(alice, "urn:example:secret", timeout=5)
        assert error_of(caught.value) == ("not-allowed", "closed-node")
        assert item_titles(await pubsub.get_items(alice, "urn:example:secret", timeout=5)) == ["for me"]
        # No such node; someone else publishing; a publish without an item.
        with pytest.raises(IqError) as caught:
            await b.plugin["xep_0060"].get_items(alice, "urn:example:none", timeout=5)
        assert error_of(caught.value)[0] == "item-not-found"
        with pytest.raises(IqError) as caught:
            await b.plugin["xep_0060"].publish(alice, "urn:example:open", payload=tune("mine"), timeout=5)
        assert error_of(caught.value)[0] == "forbidden"
        with pytest.raises(IqError) as caught:
            await pubsub.publish(alice, "urn:example:open", timeout=5)
        assert error_of(caught.value) == ("bad-request", "item-required")
        # Explicit subscriptions are not how PEP works here: said so, with the feature named.
        with pytest.raises(IqError) as caught:
            await c.plugin["xep_0060"].subscribe(alice, "urn:example:open", timeout=5)
        assert error_of(caught.value) == ("feature-not-implemented", "unsupported")
        # A stranger learns nothing from disco#items; a contact sees what it may read; the owner everything.
        assert await iq_error_condition(c.plugin["xep_0030"].get_items(jid=alice, timeout=5)) == \
            "service-unavailable"
        seen = await b.plugin["xep_0030"].get_items(jid=alice, timeout=5)
        assert {node for _, node, _ in seen["disco_items"]["items"]} == {"urn:example:presence", "urn:example:open"}
        own = await a.plugin["xep_0030"].get_items(jid=alice, timeout=5)
        assert len(own["disco_items"]["items"]) == 3
        # disco#info likewise: a contact sees the PEP service, a stranger nothing.
        info = await b.plugin["xep_0030"].get_info(jid=alice, cached=False, timeout=5)
        assert ("pubsub", "pep", None, None) in info["disco_info"]["identities"]
        assert await iq_error_condition(c.plugin["xep_0030"].get_info(jid=alice, cached=False, timeout=5)) == \
            "service-unavailable"
        for client in (a, b, c):
            await client.close()

    run(scenario())


def test_publish_options_preconditions_and_configuration(xmppd, account):
    alice, pa = account("alice")

    async def scenario():
        a = await PepClient(xmppd, alice, pa).online()
        pubsub = a.plugin["xep_0060"]
        info = await a.plugin["xep_0030"].get_info(jid=alice, timeout=5)
        assert ("pubsub", "pep", None, None) in info["disco_info"]["identities"]
        assert "http://jabber.org/protocol/pubsub#publish-options" in info["disco_info"]["features"]
        await pubsub.publish(alice, "urn:example:n", id="1", payload=tune("one"),
                             options=options(access_model="open", max_items="max"), timeout=5)
        # The same options again are met; different ones are not (the client may reconfigure and retry).
        await pubsub.publish(alice, "urn:example:n", id="2", payload=tune("two"),
                             options=options(access_model="open"), timeout=5)
        with pytest.raises(IqError) as caught:
            await pubsub.publish(alice, "urn:example:n", id="3", payload=tune("three"),
                                 options=options(access_model="whitelist"), timeout=5)
        assert error_of(caught.value) == ("conflict", "precondition-not-met")
        with pytest.raises(IqError) as caught:
            await pubsub.publish(alice, "urn:example:n", id="3", payload=tune("three"),
                                 options=options(no_such_option="1"), timeout=5)
        assert error_of(caught.value) == ("conflict", "precondition-not-met")
        # The owner reads and changes the configuration.
        config = await pubsub.get_node_config(alice, "urn:example:n", timeout=5)
        form = config["pubsub_owner"]["configure"]["form"]
        assert form.get_values()["pubsub#access_model"] == "open"
        assert form.get_values()["pubsub#max_items"] == "256"          # 'max' is the server's limit
        new = options(access_model="whitelist", max_items="1")
        new.get_fields()["FORM_TYPE"]["value"] = "http://jabber.org/protocol/pubsub#node_config"
        await pubsub.set_node_config(alice, "urn:example:n", new, timeout=5)
        result = await pubsub.get_items(alice, "urn:example:n", timeout=5)
        assert item_titles(result) == ["two"]                           # trimmed to max_items
        await pubsub.publish(alice, "urn:example:n", id="3", payload=tune("three"),
                             options=options(access_model="whitelist"), timeout=5)
        bad = options(access_model="everyone")
        bad.get_fields()["FORM_TYPE"]["value"] = "http://jabber.org/protocol/pubsub#node_config"
        with pytest.raises(IqError) as caught:
            await pubsub.set_node_config(alice, "urn:example:n", bad, timeout=5)
        assert error_of(caught.value)[0] == "not-acceptable"
        # Explicit creation: a second one is a conflict.
        await pubsub.create_node(alice, "urn:example:made", timeout=5)
        with pytest.raises(IqError) as caught:
            await pubsub.create_node(alice, "urn:example:made", timeout=5)
        assert error_of(caught.value)[0] == "conflict"
        await a.close()

    run(scenario())


def test_history_retract_purge_delete_notify(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")
    node = "urn:example:history"

    async def scenario():
        a = await PepClient(xmppd, alice, pa).online()
        b = await PepClient(xmppd, bob, pb).online()
        await befriend(a, b)
        pubsub = a.plugin["xep_0060"]
        for n in range(5):
            await pubsub.publish(alice, node, id=str(n), payload=tune(f"song {n}"),
                                 options=options(max_items="3"), timeout=5)
        # Bob's resource with interest gets the last item, which proves the server knows its caps.
        b2 = await PepClient(xmppd, bob, pb, [node]).online()
        assert (await b2.next_event("publish", node))["pubsub_event"]["items"]["item"]["id"] == "4"
        reader = b.plugin["xep_0060"]
        assert item_titles(await reader.get_items(alice, node, timeout=5)) == ["song 2", "song 3", "song 4"]
        assert item_titles(await reader.get_items(alice, node, max_items=1, timeout=5)) == ["song 4"]
        assert item_titles(await reader.get_items(alice, node, item_ids=["2", "9"], timeout=5)) == ["song 2"]
        await pubsub.retract(alice, node, "3", notify=True, timeout=5)
        retracted = await b2.next_event("retract", node)
        assert retracted["pubsub_event"]["items"]["retract"]["id"] == "3"
        with pytest.raises(IqError) as caught:
            await pubsub.retract(alice, node, "3", timeout=5)
        assert error_of(caught.value)[0] == "item-not-found"
        await pubsub.purge(alice, node, timeout=5)
        await b2.next_event("purge", node)
        assert item_titles(await reader.get_items(alice, node, timeout=5)) == []
        await pubsub.delete_node(alice, node, timeout=5)
        await b2.next_event("delete", node)
        with pytest.raises(IqError) as caught:
            await reader.get_items(alice, node, timeout=5)
        assert error_of(caught.value)[0] == "item-not-found"
        for client in (a, b, b2):
            await client.close()

    run(scenario())


def test_items_outlive_a_restart_and_notes_without_persistence_do_not(xmppd, account):
    alice, pa = account("alice")

    async def scenario():
        a = await PepClient(xmppd, alice, pa, ["urn:example:kept", "urn:example:volatile"]).online()
        pubsub = a.plugin["xep_0060"]
        await pubsub.publish(alice, "urn:example:kept", id="k", payload=tune("kept"), timeout=5)
        await pubsub.publish(alice, "urn:example:volatile", id="v", payload=tune("fleeting"),
                             options=options(persist_items="false"), timeout=5)
        assert item_titles(await pubsub.get_items(alice, "urn:example:volatile", timeout=5)) == ["fleeting"]
        await a.close()

    run(scenario())
    xmppd.restart()

    async def after():
        a = await PepClient(xmppd, alice, pa, ["urn:example:kept"]).online()
        # The owner's own new resource gets the last item of the node it is interested in.
        assert (await a.next_event("publish", "urn:example:kept"))["pubsub_event"]["items"]["item"]["id"] == "k"
        assert item_titles(await a.plugin["xep_0060"].get_items(alice, "urn:example:volatile", timeout=5)) == []
        await a.close()

    run(after())


def test_bookmarks_pep_and_private_storage(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        a = await PepClient(xmppd, alice, pa).online()
        b = await PepClient(xmppd, bob, pb).online()
        await befriend(a, b)
        # XEP-0402: one item per room, whitelist, as many as the server keeps.
        conference = ET.Element(f"{{{BOOKMARKS}}}conference", autojoin="true", name="Coven")
        ET.SubElement(conference, f"{{{BOOKMARKS}}}nick").text = "alice"
        pubsub = a.plugin["xep_0060"]
        await pubsub.publish(alice, BOOKMARKS, id="coven@muc.example.org", payload=conference,
                             options=options(persist_items="true", access_model="whitelist", max_items="max",
                                             send_last_published_item="never"), timeout=5)
        second = ET.Element(f"{{{BOOKMARKS}}}conference", name="Other")
        await pubsub.publish(alice, BOOKMARKS, id="other@muc.example.org", payload=second,
                             options=options(access_model="whitelist"), timeout=5)
        items = (await pubsub.get_items(alice, BOOKMARKS, timeout=5))["pubsub"]["items"]
        assert [item["id"] for item in items] == ["coven@muc.example.org", "other@muc.example.org"]
        with pytest.raises(IqError) as caught:
            await b.plugin["xep_0060"].get_items(alice, BOOKMARKS, timeout=5)
        assert error_of(caught.value) == ("not-allowed", "closed-node")
        # XEP-0049: any other namespace is plain private storage (storage:bookmarks: see the next test).
        empty = await private(a, "get", ET.Element("{urn:example:prefs}prefs"))
        assert empty.tag == "{urn:example:prefs}prefs" and len(empty) == 0
        prefs = ET.Element("{urn:example:prefs}prefs")
        ET.SubElement(prefs, "{urn:example:prefs}theme", colour="dark")
        await private(a, "set", prefs)
        stored = await private(a, "get", ET.Element("{urn:example:prefs}prefs"))
        assert stored[0].get("colour") == "dark"
        await private(a, "set", ET.Element("{urn:example:prefs}prefs"))       # an empty element clears
        assert len(await private(a, "get", ET.Element("{urn:example:prefs}prefs"))) == 0
        # Bob cannot read it; a jabber: namespace is not private data; one element per query.
        assert await iq_error_condition(private(b, "get", ET.Element("{urn:example:prefs}prefs"), to=alice)) == \
            "service-unavailable"
        assert await iq_error_condition(private(a, "set", ET.Element("{jabber:iq:roster}query"))) == "not-acceptable"
        assert await iq_error_condition(private(a, "get")) == "bad-request"
        for client in (a, b):
            await client.close()

    run(scenario())


def test_avatar_published_through_pep_becomes_the_vcard_photo(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")
    image = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    avatar_id = "4d1e2b0e8a7b55f4b1c1e59c27b7b3c3b93f9c8e"
    other_image = base64.b64encode(b"\x89PNG\r\n\x1a\n another picture").decode()

    async def scenario():
        a = await PepClient(xmppd, alice, pa).online()
        b = await PepClient(xmppd, bob, pb).online()
        info = await a.plugin["xep_0030"].get_info(jid=alice, timeout=5)
        assert "urn:xmpp:pep-vcard-conversion:0" in info["disco_info"]["features"]
        vcard = a.plugin["xep_0054"].make_vcard()
        vcard["FN"] = "Alice Example"
        await a.plugin["xep_0054"].publish_vcard(vcard, timeout=5)
        data = ET.Element("{urn:xmpp:avatar:data}data")
        data.text = image
        pubsub = a.plugin["xep_0060"]
        await pubsub.publish(alice, "urn:xmpp:avatar:data", id=avatar_id, payload=data, timeout=5)
        metadata = ET.Element("{urn:xmpp:avatar:metadata}metadata")
        ET.SubElement(metadata, "{urn:xmpp:avatar:metadata}info", id=avatar_id, type="image/png", bytes="70",
                      width="1", height="1")
        await pubsub.publish(alice, "urn:xmpp:avatar:metadata", id=avatar_id, payload=metadata, timeout=5)
        card = (await b.plugin["xep_0054"].get_vcard(jid=alice, cached=False, timeout=5))["vcard_temp"]
        assert card["FN"] == "Alice Example"                     # the rest of the vCard is kept
        assert card["PHOTO"]["TYPE"] == "image/png"
        assert card["PHOTO"].xml.findtext("{vcard-temp}BINVAL") == image
        # Empty metadata: the avatar is gone, from the vCard too.
        await pubsub.publish(alice, "urn:xmpp:avatar:metadata", id="none",
                             payload=ET.Element("{urn:xmpp:avatar:metadata}metadata"), timeout=5)
        card = (await b.plugin["xep_0054"].get_vcard(jid=alice, cached=False, timeout=5))["vcard_temp"]
        assert card.xml.find("{vcard-temp}PHOTO") is None and card["FN"] == "Alice Example"
        # The other way: an older client sets a vCard PHOTO; PEP has it, and newer resources hear of it.
        watcher = await PepClient(xmppd, alice, pa, ["urn:xmpp:avatar:metadata"]).online()
        await watcher.next_event("publish", "urn:xmpp:avatar:metadata")      # the last (empty) metadata
        vcard = a.plugin["xep_0054"].make_vcard()
        vcard["FN"] = "Alice Example"
        vcard["PHOTO"]["TYPE"] = "image/png"
        vcard["PHOTO"]["BINVAL"] = base64.b64decode(other_image)
        await a.plugin["xep_0054"].publish_vcard(vcard, timeout=5)
        event = await watcher.next_event("publish", "urn:xmpp:avatar:metadata")
        expected_id = hashlib.sha1(base64.b64decode(other_image)).hexdigest()
        info = event["pubsub_event"]["items"]["item"]["payload"].find("{urn:xmpp:avatar:metadata}info")
        assert (info.get("id"), info.get("type")) == (expected_id, "image/png")
        data = await pubsub.get_items(alice, "urn:xmpp:avatar:data", item_ids=[expected_id], timeout=5)
        [item] = list(data["pubsub"]["items"])
        assert base64.b64decode(item["payload"].text) == base64.b64decode(other_image)
        # Setting the same vCard again publishes nothing new; a vCard without PHOTO empties the metadata.
        await a.plugin["xep_0054"].publish_vcard(vcard, timeout=5)
        await watcher.no_event(0.5)
        vcard = a.plugin["xep_0054"].make_vcard()
        vcard["FN"] = "Alice Example"
        await a.plugin["xep_0054"].publish_vcard(vcard, timeout=5)
        event = await watcher.next_event("publish", "urn:xmpp:avatar:metadata")
        assert len(event["pubsub_event"]["items"]["item"]["payload"]) == 0
        for client in (a, b, watcher):
            await client.close()

    run(scenario())


@pytest.fixture(scope="module", params=BACKENDS)
def xmppd_with_push(request, tmp_path_factory, certificate, fakes):
    apns, fcm, directory = fakes
    return start_xmppd(request, tmp_path_factory, certificate, request.param, f"""require_encryption = false

[modules]
enabled = ["offline", "stream_mgmt", "push", "appserver", "pep"]

[push]
coalesce_window = 0.5

[appserver]
default_apns_app = "ios"
default_fcm_app = "droid"

{apns.app_toml("ios", directory / "apns.p8", push_modules=["exampleProdiOS"])}
{fcm.app_toml("droid", directory / "fcm.json")}""")


def test_a_sleeping_phone_is_not_woken_for_a_notification_and_gets_it_on_resumption(xmppd_with_push, fakes):
    apns = fakes[0]
    xmppd = xmppd_with_push
    password = random_password()
    alice = xmppd.add_user(f"alice-{secrets.token_hex(4)}", password)
    bob_jid = xmppd.add_user(f"bob-{secrets.token_hex(4)}", password)
    node = "http://jabber.org/protocol/mood"

    def headlines(phone: LeanClient) -> list:
        return [m for m in phone.received if m.type == "headline" and m.from_ == alice]

    async def scenario():
        laptop = await PepClient(xmppd, alice, password).online()
        mood = ET.Element(f"{{{node}}}mood")
        ET.SubElement(mood, f"{{{node}}}happy")
        await laptop.plugin["xep_0060"].publish(alice, node, id="m1", payload=mood, timeout=5)
        # The phone wants moods (caps), gets the last one when it comes online, enables push and sleeps.
        phone = LeanClient(alice, password, port=xmppd.port, auto_ack=False)
        phone.disco_features = ["http://jabber.org/protocol/disco#info", f"{node}+notify"]
        await phone.login(sm=True)
        await enable_push(phone, "push.localhost", secrets.token_hex(32), pushModule="exampleProdiOS")
        phone.send_presence()
        await phone.wait_until(lambda: len(headlines(phone)) == 1)
        phone.abort()
        await asyncio.sleep(0.5)
        apns.clear()
        await laptop.plugin["xep_0060"].publish(alice, node, id="m2", payload=mood, timeout=5)
        await asyncio.sleep(1.5)
        assert apns.requests == []                     # a notification is nothing a person must see now
        bob = await Client(xmppd, bob_jid, password, plaintext=True).login()
        bob.send_message(mto=alice, mbody="a message does wake it", mtype="chat")
        await apns.requests_arrived(1, timeout=5)      # (so the phone was reachable by push all along)
        await bob.close()
        await phone.connect()
        phone.received.clear()
        assert (await phone.resume()).resumed
        phone.auto_ack = True
        await phone.wait_until(lambda: len(headlines(phone)) == 1)   # kept in the queue, given back once
        assert [m.body for m in phone.received if m.body] == ["a message does wake it"]
        await asyncio.sleep(0.3)
        assert len(headlines(phone)) == 1
        await phone.close()
        await laptop.close()

    run(scenario())


async def raw_pubsub(client: Client, iq_type: str, inner: str, ns: str = "http://jabber.org/protocol/pubsub"):
    """A pubsub request written by hand (to the client's own account), for what a library would not send."""
    iq = client.Iq(stype=iq_type, sto=client.boundjid.bare)
    iq.append(ET.fromstring(f"<pubsub xmlns='{ns}'>{inner}</pubsub>"))
    return await iq.send(timeout=5)


def test_bad_pubsub_requests_get_the_errors_xep_0060_names(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")
    payload = f"<tune xmlns='{TUNE}'/>"

    async def scenario():
        a = await PepClient(xmppd, alice, pa).online()
        cases = [
            ("set", f"<publish><item>{payload}</item></publish>", ("bad-request", "nodeid-required")),
            ("set", f"<publish node='n'><item>{payload}</item><item>{payload}</item></publish>",
             ("bad-request", "invalid-payload")),
            ("set", f"<publish node='n'><item>{payload}{payload}</item></publish>", ("bad-request", "invalid-payload")),
            ("set", "<publish node='n'><item/></publish>", ("bad-request", "payload-required")),
            ("set", f"<publish node='{'n' * 1025}'><item>{payload}</item></publish>", ("not-acceptable", None)),
            ("set", f"<publish node='n'><item>{payload}</item></publish><publish-options><x xmlns='jabber:x:data' "
                    "type='submit'><field var='FORM_TYPE'><value>urn:other</value></field></x></publish-options>",
             ("bad-request", "invalid-options")),
            ("set", "<create/>", ("not-acceptable", "nodeid-required")),
            ("get", "<items node='n' max_items='many'/>", ("bad-request", None)),
            ("get", "", ("bad-request", None)),
            ("set", "<retract node='n'><item/></retract>", ("bad-request", "item-required")),
        ]
        for iq_type, inner, expected in cases:
            with pytest.raises(IqError) as caught:
                await raw_pubsub(a, iq_type, inner)
            assert error_of(caught.value) == expected, inner
        # The node limit: the ninth node is refused, publishing to an existing one still works.
        for n in range(8):
            await raw_pubsub(a, "set", f"<publish node='urn:example:{n}'><item>{payload}</item></publish>")
        with pytest.raises(IqError) as caught:
            await raw_pubsub(a, "set", f"<publish node='urn:example:8'><item>{payload}</item></publish>")
        assert error_of(caught.value) == ("not-allowed", "max-nodes-exceeded")
        await raw_pubsub(a, "set", f"<publish node='urn:example:0'><item>{payload}</item></publish>")
        # Someone else's nodes cannot be managed.
        b = await PepClient(xmppd, bob, pb).online()
        iq = b.Iq(stype="set", sto=alice)
        iq.append(ET.fromstring("<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'>"
                                "<delete node='urn:example:0'/></pubsub>"))
        with pytest.raises(IqError) as caught:
            await iq.send(timeout=5)
        assert error_of(caught.value)[0] == "forbidden"
        for client in (a, b):
            await client.close()

    run(scenario())


def test_notifications_without_payloads(xmppd, account):
    alice, pa = account("alice")
    node = "urn:example:big"

    async def scenario():
        a = await PepClient(xmppd, alice, pa, [node]).online()
        await a.plugin["xep_0060"].publish(alice, node, id="x", payload=tune("large"),
                                           options=options(deliver_payloads="false", type=TUNE), timeout=5)
        event = await a.next_event("publish", node)
        item = event.xml.find("{http://jabber.org/protocol/pubsub#event}event/"
                              "{http://jabber.org/protocol/pubsub#event}items/"
                              "{http://jabber.org/protocol/pubsub#event}item")
        assert item.get("id") == "x" and len(item) == 0          # the id only: the client fetches the item
        assert item_titles(await a.plugin["xep_0060"].get_items(alice, node, timeout=5)) == ["large"]
        await a.close()

    run(scenario())


def test_bookmarks_of_older_clients_follow_the_pep_node(xmppd, account):
    alice, pa = account("alice")
    legacy = "{storage:bookmarks}"

    def conference(jid: str, name: str, nick: str | None = None) -> ET.Element:
        element = ET.Element(f"{legacy}conference", jid=jid, name=name, autojoin="true")
        if nick:
            ET.SubElement(element, f"{legacy}nick").text = nick
        return element

    async def scenario():
        new = await PepClient(xmppd, alice, pa, [BOOKMARKS]).online()
        old = await PepClient(xmppd, alice, pa).online()
        info = await new.plugin["xep_0030"].get_info(jid=alice, timeout=5)
        assert "urn:xmpp:bookmarks:1#compat" in info["disco_info"]["features"]
        # The older client writes two rooms and a web bookmark: the newer one sees the rooms as PEP items.
        storage = ET.Element(f"{legacy}storage")
        storage.append(conference("coven@muc.example.org", "Coven", "alice"))
        storage.append(conference("tea@muc.example.org", "Tea"))
        ET.SubElement(storage, f"{legacy}url", name="Home", url="https://example.org/")
        await private(old, "set", storage)
        assert {(await new.next_event("publish", BOOKMARKS))["pubsub_event"]["items"]["item"]["id"]
                for _ in range(2)} == {"coven@muc.example.org", "tea@muc.example.org"}
        items = {item["id"]: item["payload"] for item in
                 (await new.plugin["xep_0060"].get_items(alice, BOOKMARKS, timeout=5))["pubsub"]["items"]}
        assert items["coven@muc.example.org"].get("autojoin") == "true"
        assert items["coven@muc.example.org"].findtext(f"{{{BOOKMARKS}}}nick") == "alice"
        config = await new.plugin["xep_0060"].get_node_config(alice, BOOKMARKS, timeout=5)
        assert config["pubsub_owner"]["configure"]["form"].get_values()["pubsub#access_model"] == "whitelist"
        # The newer client adds one room and removes another: the older one reads that, its url kept.
        added = ET.Element(f"{{{BOOKMARKS}}}conference", name="Garden", autojoin="false")
        await new.plugin["xep_0060"].publish(alice, BOOKMARKS, id="garden@muc.example.org", payload=added,
                                             timeout=5)
        await new.plugin["xep_0060"].retract(alice, BOOKMARKS, "tea@muc.example.org", notify=True, timeout=5)
        read = await private(old, "get", ET.Element(f"{legacy}storage"))
        assert {c.get("jid"): c.get("autojoin") for c in read.iter(f"{legacy}conference")} == {
            "coven@muc.example.org": "true", "garden@muc.example.org": "false"}
        assert read.find(f"{legacy}url").get("url") == "https://example.org/"
        # The older client leaves Coven out: it is retracted for everyone.
        while not new.events.empty():
            new.events.get_nowait()
        storage = ET.Element(f"{legacy}storage")
        storage.append(ET.Element(f"{legacy}conference", jid="garden@muc.example.org", name="Garden",
                                  autojoin="false"))
        await private(old, "set", storage)
        retracted = await new.next_event("retract", BOOKMARKS)
        assert retracted["pubsub_event"]["items"]["retract"]["id"] == "coven@muc.example.org"
        remaining = (await new.plugin["xep_0060"].get_items(alice, BOOKMARKS, timeout=5))["pubsub"]["items"]
        assert [item["id"] for item in remaining] == ["garden@muc.example.org"]
        for client in (new, old):
            await client.close()

    run(scenario())
