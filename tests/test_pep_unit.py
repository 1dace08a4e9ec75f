"""PEP's and entity caps' protocol logic without sockets: XEP-0115 hashes, node configuration, errors."""

from __future__ import annotations

import asyncio

import pytest
from lxml import etree

from xmppd import caps
from xmppd.bookmarks_compat import items_from_legacy, legacy_from_items
from xmppd.importance import is_important
from xmppd.pep import PubsubError, _event, _may_read, _notification
from xmppd.pep_config import BadOption, NodeConfig, apply, config_form, unmet_precondition
from xmppd.stanza import make, serialize
from xmppd.storage.models import RosterItem

INFO = "http://jabber.org/protocol/disco#info"


def disco(identities, features, form: str = "") -> etree._Element:
    xml = f"<query xmlns='{INFO}'>"
    for category, type_, lang, name in identities:
        lang_attr = f" xml:lang='{lang}'" if lang else ""
        xml += f"<identity category='{category}' type='{type_}' name='{name}'{lang_attr}/>"
    xml += "".join(f"<feature var='{var}'/>" for var in features)
    return etree.fromstring(xml + form + "</query>")


FEATURES = ["http://jabber.org/protocol/caps", INFO, "http://jabber.org/protocol/disco#items",
            "http://jabber.org/protocol/muc"]


def test_ver_of_the_simple_example():
    # XEP-0115 §5.2
    query = disco([("client", "pc", "", "Exodus 0.9.1")], FEATURES)
    assert caps.ver_of(query, "sha-1") == "QgayPKawpkPSDYmwT/WM94uAlu0="


SOFTWARE_INFO = """<x xmlns='jabber:x:data' type='result'>
  <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>
  <field var='ip_version' type='text-multi'><value>ipv4</value><value>ipv6</value></field>
  <field var='os'><value>Mac</value></field>
  <field var='os_version'><value>10.5.1</value></field>
  <field var='software'><value>Psi</value></field>
  <field var='software_version'><value>0.11</value></field>
</x>"""


def test_ver_of_the_complex_example():
    # XEP-0115 §5.3: languages, and an extended form
    query = disco([("client", "pc", "en", "Psi 0.11"), ("client", "pc", "el", "Ψ 0.11")],
                  list(reversed(FEATURES)), SOFTWARE_INFO)
    assert caps.ver_of(query, "sha-1") == "q07IKJEyjvHSyhy//CH0CxmKi8w="


def test_answers_that_must_not_be_hashed():
    with pytest.raises(caps.InvalidCaps):
        caps.verification_string(disco([], FEATURES + FEATURES[:1]))
    with pytest.raises(caps.InvalidCaps):
        caps.verification_string(disco([], FEATURES, SOFTWARE_INFO.replace(" type='hidden'", "")))
    with pytest.raises(caps.InvalidCaps):
        caps.verification_string(disco([], FEATURES, SOFTWARE_INFO + SOFTWARE_INFO))


class FakeSession:
    def __init__(self, full: str) -> None:
        self.full = full
        self.closed = False


class FakeServer:
    """Answers every disco#info query with `info`, and counts the queries."""

    domain = "localhost"

    def __init__(self, info: etree._Element) -> None:
        self.info = info
        self.queries = 0
        self.fired: list[tuple] = []

    def on(self, event, callback) -> None:
        pass

    async def request(self, iq, timeout):
        self.queries += 1
        await asyncio.sleep(0)
        answer = make("iq", {"type": "result", "id": iq.get("id")})
        answer.append(self.info)
        return answer

    def fire(self, event, *args):
        self.fired.append((event, *args))
        return []


def presence(ver: str) -> etree._Element:
    return etree.fromstring(f"<presence xmlns='jabber:client'><c xmlns='{caps.NS_CAPS}' hash='sha-1' "
                            f"node='https://client.example' ver='{ver}'/></presence>")


def test_caps_are_learnt_once_per_ver_and_verified():
    info = disco([("client", "phone", "", "Example")], ["urn:xmpp:avatar:metadata+notify", INFO])
    ver = caps.ver_of(info, "sha-1")

    async def scenario():
        server = FakeServer(info)
        module = caps.Caps(server)
        first, second = FakeSession("a@localhost/1"), FakeSession("b@localhost/1")
        await asyncio.gather(module._presence(first, presence(ver)), module._presence(second, presence(ver)))
        assert server.queries == 1                        # the second waited for the first one's answer
        assert "urn:xmpp:avatar:metadata+notify" in module.features(second)
        assert [event[0] for event in server.fired] == ["caps-changed", "caps-changed"]
        await module._presence(first, presence(ver))       # nothing new: no query, no event
        assert server.queries == 1 and len(server.fired) == 2
        # A client whose answer does not hash to its ver is not believed, and nothing is cached.
        liar = FakeSession("c@localhost/1")
        await module._presence(liar, presence("AAAAAAAAAAAAAAAAAAAAAAAAAAA="))
        assert module.features(liar) == frozenset()
        await module._presence(liar, presence("AAAAAAAAAAAAAAAAAAAAAAAAAAA="))
        assert server.queries == 3

    asyncio.run(scenario())


def test_node_config_options():
    config = apply(NodeConfig(), {"pubsub#max_items": ["max"], "pubsub#access_model": ["open"],
                                  "pubsub#persist_items": ["1"]}, cap=50)
    assert (config.max_items, config.access_model, config.persist_items) == (50, "open", True)
    assert NodeConfig.from_json(config.to_json()) == config
    assert unmet_precondition(config, {"pubsub#max_items": ["max"]}, cap=50) is None
    assert unmet_precondition(config, {"pubsub#max_items": ["10"]}, cap=50) == "pubsub#max_items of the node is 50"
    assert "not an option" in unmet_precondition(config, {"pubsub#colour": ["red"]}, cap=50)
    for var, values in (("pubsub#max_items", ["0"]), ("pubsub#max_items", ["51"]), ("pubsub#max_items", ["x"]),
                        ("pubsub#access_model", ["friends"]), ("pubsub#persist_items", ["yes"]),
                        ("pubsub#access_model", ["open", "presence"])):
        with pytest.raises(BadOption):
            apply(config, {var: values}, cap=50)
    form = config_form(config)
    values = {f.get("var"): [v.text for v in f.iterchildren("{jabber:x:data}value")]
              for f in form.iterchildren("{jabber:x:data}field")}
    assert values["pubsub#max_items"] == ["50"] and values["pubsub#notify_retract"] == ["true"]


def test_pubsub_error_carries_its_application_condition():
    iq = etree.fromstring("<iq xmlns='jabber:client' type='set' id='1' from='a@localhost/r' to='a@localhost'/>")
    reply = PubsubError("conflict", "precondition-not-met", "pubsub#access_model of the node is open").reply(iq)
    error = reply.find("{jabber:client}error")
    assert error.get("type") == "cancel"
    assert error.find("{urn:ietf:params:xml:ns:xmpp-stanzas}conflict") is not None
    assert error.find("{http://jabber.org/protocol/pubsub#errors}precondition-not-met") is not None


def test_a_notification_wakes_no_phone():
    event = _event("items", "urn:xmpp:avatar:metadata")
    message = _notification("a@localhost", "b@localhost/phone", event, "a@localhost/laptop")
    assert message.get("type") == "headline"
    assert not is_important(message)
    assert b"replyto" in serialize(message)


def test_who_may_read_a_node():
    friend = RosterItem("b@localhost", subscription="from", groups=["Family"])
    follower = RosterItem("c@localhost", subscription="to", groups=["Family"])
    for model, friend_reads in (("open", True), ("presence", True), ("roster", False), ("whitelist", False)):
        config = NodeConfig(access_model=model)
        assert _may_read(config, friend) is friend_reads, model
        assert _may_read(config, follower) is (model == "open"), model   # no subscription to the owner
        assert _may_read(config, None) is (model == "open"), model
    family = NodeConfig(access_model="roster", roster_groups_allowed=("Family",))
    assert _may_read(family, friend) and not _may_read(family, follower)


def test_bookmark_conversion_both_ways():
    legacy = etree.fromstring(
        "<storage xmlns='storage:bookmarks'>"
        "<conference jid='Coven@muc.example.org' name='Coven' autojoin='1'><nick>alice</nick>"
        "<password>secret</password></conference>"
        "<conference jid='not a jid@@' name='Broken'/>"
        "<url name='Home' url='https://example.org/'/></storage>")
    items = items_from_legacy(legacy)
    assert list(items) == ["coven@muc.example.org"]          # normalised; the broken one skipped
    conference = items["coven@muc.example.org"]
    assert conference.tag == "{urn:xmpp:bookmarks:1}conference" and conference.get("autojoin") == "true"
    assert conference.findtext("{urn:xmpp:bookmarks:1}password") == "secret"
    back = legacy_from_items(list(items.items()), legacy)
    [room] = back.findall("{storage:bookmarks}conference")
    assert (room.get("jid"), room.get("name"), room.get("autojoin")) == ("coven@muc.example.org", "Coven", "true")
    assert room.findtext("{storage:bookmarks}nick") == "alice"
    assert back.find("{storage:bookmarks}url").get("url") == "https://example.org/"
