"""XEP-0313 message archive over real sockets with slixmpp, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from tests.harness import Client, iq_error_condition, run

MAM = "urn:xmpp:mam:2"
RSM = "http://jabber.org/protocol/rsm"
SID = "urn:xmpp:sid:0"
CLIENT = "jabber:client"
FORWARD = "urn:xmpp:forward:0"


@dataclass
class Archived:
    """One result of a query: its archive id and the archived message."""

    id: str
    stamp: str
    message: ET.Element

    @property
    def body(self) -> str | None:
        return self.message.findtext(f"{{{CLIENT}}}body")


class MamClient(Client):
    """A slixmpp client with its MAM plugins, collecting archive results by queryid."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for plugin in ("xep_0313", "xep_0441", "xep_0359"):
            self.register_plugin(plugin)
        self.results: dict[str, list[ET.Element]] = {}
        self.every_message: asyncio.Queue = asyncio.Queue()
        self.register_handler(Callback("mam results", MatchXPath(f"{{{CLIENT}}}message/{{{MAM}}}result"),
                                       self._result))
        self.register_handler(Callback("every message", MatchXPath(f"{{{CLIENT}}}message"),
                                       lambda m: m.xml.find(f"{{{MAM}}}result") is None
                                       and self.every_message.put_nowait(m)))

    def _result(self, message) -> None:
        result = message.xml.find(f"{{{MAM}}}result")
        assert message["from"] == self.boundjid.bare    # results come from the archive: the account's bare JID
        self.results.setdefault(result.get("queryid"), []).append(result)

    async def next_any(self, timeout: float = 5.0):
        return await asyncio.wait_for(self.every_message.get(), timeout)

    async def query(self, *, fields: dict[str, str | list[str]] | None = None, rsm: str = "", flip: bool = False,
                    to: str | None = None) -> tuple[list[Archived], ET.Element]:
        """Send a query; return its results and the <fin/>. Raises IqError for an error answer."""
        queryid = secrets.token_hex(4)
        query = ET.Element(f"{{{MAM}}}query", queryid=queryid)
        if fields:
            form = ET.SubElement(query, "{jabber:x:data}x", type="submit")
            form_type = ET.SubElement(form, "{jabber:x:data}field", var="FORM_TYPE", type="hidden")
            ET.SubElement(form_type, "{jabber:x:data}value").text = MAM
            for var, values in fields.items():
                field = ET.SubElement(form, "{jabber:x:data}field", var=var)
                for value in [values] if isinstance(values, str) else values:
                    ET.SubElement(field, "{jabber:x:data}value").text = value
        if rsm:
            query.append(ET.fromstring(f"<set xmlns='{RSM}'>{rsm}</set>"))
        if flip:
            ET.SubElement(query, f"{{{MAM}}}flip-page")
        iq = self.make_iq_set(ito=to)
        iq.xml.append(query)
        reply = await iq.send(timeout=10)
        fin = reply.xml.find(f"{{{MAM}}}fin")
        assert fin is not None and fin.get("queryid") == queryid
        results = []
        for result in self.results.pop(queryid, []):
            forwarded = result.find(f"{{{FORWARD}}}forwarded")
            results.append(Archived(result.get("id"), forwarded.find("{urn:xmpp:delay}delay").get("stamp"),
                                    forwarded.find(f"{{{CLIENT}}}message")))
        return results, fin


def rsm_of(fin: ET.Element) -> dict[str, str | None]:
    page = fin.find(f"{{{RSM}}}set")
    first = page.find(f"{{{RSM}}}first")
    return {"first": None if first is None else first.text, "index": None if first is None else first.get("index"),
            "last": page.findtext(f"{{{RSM}}}last"), "count": page.findtext(f"{{{RSM}}}count"),
            "complete": fin.get("complete")}


def stanza_id(message, by: str) -> str | None:
    for element in message.xml.findall(f"{{{SID}}}stanza-id"):
        if element.get("by") == by:
            return element.get("id")
    return None


async def online(xmppd, jid: str, password: str, resource: str | None = None, *, presence: bool = True) -> MamClient:
    client = MamClient(xmppd, f"{jid}/{resource}" if resource else jid, password)
    await client.login()
    if presence:
        client.send_presence()
        await client.plugin["xep_0199"].ping(jid="localhost", timeout=5)
    return client


async def chat(sender: MamClient, to: str, body: str, **extra) -> None:
    message = sender.make_message(mto=to, mbody=body, mtype="chat")
    for xml in extra.get("children", ()):
        message.xml.append(ET.fromstring(xml))
    message.send()


def test_both_parties_archive_and_the_recipient_learns_the_id(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        a, b = await online(xmppd, alice, pa), await online(xmppd, bob, pb)
        for n in range(3):
            await chat(a, bob, f"m{n}", children=[f"<origin-id xmlns='{SID}' id='origin-{n}'/>"])
        received = [await b.next_any() for _ in range(3)]
        ids = [stanza_id(message, bob) for message in received]
        assert all(ids) and len(set(ids)) == 3
        results, fin = await b.query()
        assert [r.id for r in results] == ids
        assert [r.body for r in results] == ["m0", "m1", "m2"]
        assert all(r.message.get("from") == str(a.boundjid) for r in results)
        assert all(r.stamp.endswith("Z") for r in results)
        assert rsm_of(fin) == {"first": ids[0], "index": "0", "last": ids[2], "count": "3", "complete": "true"}
        sent, _ = await a.query()
        assert [r.body for r in sent] == ["m0", "m1", "m2"]
        assert [r.message.find(f"{{{SID}}}origin-id").get("id") for r in sent] == ["origin-0", "origin-1",
                                                                                   "origin-2"]
        assert all(r.message.find(f"{{{SID}}}stanza-id") is None for r in sent)   # bob's id is bob's
        assert not set(r.id for r in sent) & set(ids)
        for client in (a, b):
            await client.close()

    run(scenario())


def test_a_device_that_was_away_reads_what_it_missed_and_what_another_device_sent(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        a = await online(xmppd, alice, pa)
        laptop = await online(xmppd, bob, pb, "laptop")
        phone = await online(xmppd, bob, pb, "phone")
        await chat(a, bob, "before the phone slept")
        seen = stanza_id(await phone.next_any(), bob)
        await phone.close()                                   # the phone goes away
        await chat(a, bob, "are you there?")
        await chat(a, bob, "hello?")
        assert [(await laptop.next_any())["body"] for _ in range(3)][1:] == ["are you there?", "hello?"]
        await chat(laptop, alice, "answering from my laptop")
        assert (await a.next_any())["body"] == "answering from my laptop"
        phone = await online(xmppd, bob, pb, "phone", presence=False)
        missed, after = [], seen
        while True:                                           # pages of two, after the last id it saw
            page, fin = await phone.query(fields={"after-id": after}, rsm="<max>2</max>")
            missed += page
            if fin.get("complete") == "true":
                break
            after = rsm_of(fin)["last"]
        assert [r.body for r in missed] == ["are you there?", "hello?", "answering from my laptop"]
        assert missed[2].message.get("from") == f"{bob}/laptop" and missed[2].message.get("to") == alice
        # slixmpp's own MAM client reads the same conversation.
        with_alice = [m["mam_result"]["forwarded"]["stanza"]["body"]
                      async for m in phone.plugin["xep_0313"].iterate(with_jid=alice, rsm={"max": 3})]
        assert with_alice == ["before the phone slept", "are you there?", "hello?", "answering from my laptop"]
        for client in (a, laptop, phone):
            await client.close()

    run(scenario())


def test_an_offline_message_carries_its_archive_id(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        a = await online(xmppd, alice, pa)
        await chat(a, bob, "while you were out")
        await a.plugin["xep_0199"].ping(jid="localhost", timeout=5)
        b = await online(xmppd, bob, pb)
        offline = await b.next_any()
        assert offline["body"] == "while you were out"
        [archived], _ = await b.query()
        assert stanza_id(offline, bob) == archived.id
        for client in (a, b):
            await client.close()

    run(scenario())


def test_filters_with_time_and_ids(xmppd, account):
    (alice, pa), (bob, pb), (carol, pc) = account("alice"), account("bob"), account("carol")

    async def scenario():
        a = await online(xmppd, alice, pa)
        desk = await online(xmppd, bob, pb, "desk")
        c = await online(xmppd, carol, pc)
        for n in range(3):
            await chat(a, bob, f"to bob {n}")
            await chat(a, carol, f"to carol {n}")
        for _ in range(3):
            await desk.next_any()
        await chat(desk, alice, "from bob's desk")
        await a.next_any()
        everything, _ = await a.query()
        assert len(everything) == 7
        by_bob, _ = await a.query(fields={"with": bob})
        assert [r.body for r in by_bob] == ["to bob 0", "to bob 1", "to bob 2", "from bob's desk"]
        from_desk, _ = await a.query(fields={"with": f"{bob}/desk"})
        assert [r.body for r in from_desk] == ["from bob's desk"]
        middle, _ = await a.query(fields={"start": everything[2].stamp, "end": everything[4].stamp})
        assert [r.id for r in middle] == [r.id for r in everything[2:5]]
        between, _ = await a.query(fields={"after-id": everything[1].id, "before-id": everything[5].id})
        assert [r.id for r in between] == [r.id for r in everything[2:5]]
        picked, fin = await a.query(fields={"ids": [everything[6].id, everything[0].id]})
        assert [r.id for r in picked] == [everything[0].id, everything[6].id] and fin.get("complete") == "true"
        # Errors named by XEP-0313: unknown ids, unknown fields, bad dates, somebody else's archive.
        assert await iq_error_condition(a.query(fields={"after-id": "123-00000001"})) == "item-not-found"
        assert await iq_error_condition(a.query(fields={"ids": [everything[0].id, "nonsense"]})) == "item-not-found"
        foreign, _ = await c.query()
        assert await iq_error_condition(a.query(fields={"ids": foreign[0].id})) == "item-not-found"
        assert await iq_error_condition(a.query(rsm=f"<after>{foreign[0].id}</after>")) == "item-not-found"
        assert await iq_error_condition(a.query(fields={"color": "red"})) == "feature-not-implemented"
        assert await iq_error_condition(a.query(fields={"start": "last tuesday"})) == "bad-request"
        assert await iq_error_condition(a.query(to=bob)) == "service-unavailable"
        for client in (a, desk, c):
            await client.close()

    run(scenario())


def test_rsm_paging_both_ways(xmppd, account):
    (alice, pa), (bob, _) = account("alice"), account("bob")

    async def scenario():
        a = await online(xmppd, alice, pa)
        for n in range(7):
            await chat(a, bob, f"{n}")
        everything, _ = await a.query()
        ids = [r.id for r in everything]
        first, fin = await a.query(rsm="<max>3</max>")
        assert [r.body for r in first] == ["0", "1", "2"]
        assert rsm_of(fin) == {"first": ids[0], "index": "0", "last": ids[2], "count": None, "complete": None}
        second, fin = await a.query(rsm=f"<max>3</max><after>{ids[2]}</after>")
        assert [r.body for r in second] == ["3", "4", "5"] and fin.get("complete") is None
        third, fin = await a.query(rsm=f"<max>3</max><after>{ids[5]}</after>")
        assert [r.body for r in third] == ["6"] and fin.get("complete") == "true"
        last, fin = await a.query(rsm="<max>3</max><before/>")
        assert [r.body for r in last] == ["4", "5", "6"] and fin.get("complete") is None
        earlier, fin = await a.query(rsm=f"<max>3</max><before>{ids[4]}</before>")
        assert [r.body for r in earlier] == ["1", "2", "3"]
        earliest, fin = await a.query(rsm=f"<max>3</max><before>{ids[1]}</before>")
        assert [r.body for r in earliest] == ["0"] and fin.get("complete") == "true"
        flipped, fin = await a.query(rsm="<max>3</max><before/>", flip=True)
        assert [r.body for r in flipped] == ["6", "5", "4"]
        assert rsm_of(fin)["first"] == ids[4] and rsm_of(fin)["last"] == ids[6]   # still in archive order
        skipped, fin = await a.query(rsm="<max>2</max><index>5</index>")
        assert [r.body for r in skipped] == ["5", "6"] and rsm_of(fin)["index"] == "5"
        counted, fin = await a.query(rsm="<max>0</max>")
        assert counted == [] and rsm_of(fin)["count"] == "7" and rsm_of(fin)["first"] is None
        nothing, fin = await a.query(fields={"with": "nobody@localhost"})
        assert nothing == [] and rsm_of(fin) == {"first": None, "index": None, "last": None, "count": "0",
                                                 "complete": "true"}
        assert await iq_error_condition(a.query(rsm="<max>-3</max>")) == "bad-request"
        await a.close()

    run(scenario())


def test_what_is_archived_and_forged_ids(xmppd, account):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        a, b = await online(xmppd, alice, pa), await online(xmppd, bob, pb)
        await chat(a, bob, "forged", children=[f"<stanza-id xmlns='{SID}' by='{bob}' id='evil'/>",
                                               f"<stanza-id xmlns='{SID}' by='{alice}' id='evil2'/>"])
        forged = await b.next_any()
        assert [s.get("id") for s in forged.xml.findall(f"{{{SID}}}stanza-id")] != ["evil"]
        assert stanza_id(forged, alice) is None and stanza_id(forged, bob) != "evil"
        skipped = [
            "<composing xmlns='http://jabber.org/protocol/chatstates'/>",
            "<received xmlns='urn:xmpp:receipts' id='x'/>",
        ]
        for child in skipped:
            message = a.make_message(mto=bob, mtype="chat")
            message.xml.append(ET.fromstring(child))
            message.send()
        await chat(a, bob, "off the record", children=["<no-store xmlns='urn:xmpp:hints'/>"])
        marker = a.make_message(mto=bob, mtype="chat")
        marker.xml.append(ET.fromstring("<displayed xmlns='urn:xmpp:chat-markers:0' id='x'/>"))
        marker.send()
        received = [await b.next_any() for _ in range(4)]
        assert [stanza_id(m, bob) is not None for m in received] == [False, False, False, True]
        archived, _ = await b.query()
        assert [r.body for r in archived] == ["forged", None]
        assert archived[1].message.find("{urn:xmpp:chat-markers:0}displayed") is not None
        for client in (a, b):
            await client.close()

    run(scenario())


def test_preferences(xmppd, account):
    (alice, pa), (bob, pb), (carol, pc) = account("alice"), account("bob"), account("carol")

    async def scenario():
        a, b, c = (await online(xmppd, alice, pa), await online(xmppd, bob, pb), await online(xmppd, carol, pc))
        assert await b.plugin["xep_0441"].get_preferences(timeout=5) == ("always", set(), set())
        reply = await b.plugin["xep_0441"].set_preferences(default="never", always=[carol], never=[], timeout=5)
        assert reply["mam_prefs"]["default"] == "never" and [str(j) for j in reply["mam_prefs"]["always"]] == [carol]
        await chat(a, bob, "not kept")
        await chat(c, bob, "kept")
        # Two senders: their messages may arrive in either order (each waits for its own archive decision).
        received = [await b.next_any() for _ in range(2)]
        assert {m["body"]: stanza_id(m, bob) is not None for m in received} == {"not kept": False, "kept": True}
        # "roster": only contacts are archived (carol is one, alice is not).
        await b.update_roster(carol, name="Carol", timeout=5)
        await b.plugin["xep_0441"].set_preferences(default="roster", always=[], never=[], timeout=5)
        await chat(a, bob, "stranger")
        await chat(c, bob, "friend")
        received = [await b.next_any() for _ in range(2)]
        assert {m["body"]: stanza_id(m, bob) is not None for m in received} == {"stranger": False, "friend": True}
        archived, _ = await b.query()
        assert [r.body for r in archived] == ["kept", "friend"]
        sent, _ = await a.query()                      # alice's archive follows alice's preferences
        assert [r.body for r in sent] == ["not kept", "stranger"]
        assert await b.plugin["xep_0441"].get_preferences(timeout=5) == ("roster", set(), set())
        iq = a.make_iq_get(ito=bob)
        iq.enable("mam_prefs")
        assert await iq_error_condition(iq.send(timeout=5)) == "service-unavailable"
        for client in (a, b, c):
            await client.close()

    run(scenario())


def test_discovery_form_and_metadata(xmppd, account):
    (alice, pa), (bob, _) = account("alice"), account("bob")

    async def scenario():
        a = await online(xmppd, alice, pa)
        info = await a.plugin["xep_0030"].get_info(jid=alice, timeout=5)
        features = set(info["disco_info"]["features"])
        assert {MAM, f"{MAM}#extended", SID} <= features
        form = await a.plugin["xep_0313"].get_fields(jid=alice, timeout=5)
        assert {"FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids"} <= set(form.get_fields())
        empty = await a.plugin["xep_0313"].get_archive_metadata(timeout=5)
        assert len(empty.xml.find(f"{{{MAM}}}metadata")) == 0
        for n in range(3):
            await chat(a, bob, f"{n}")
        everything, _ = await a.query()
        metadata = (await a.plugin["xep_0313"].get_archive_metadata(timeout=5))["mam_metadata"]
        assert metadata["start"]["id"] == everything[0].id and metadata["end"]["id"] == everything[2].id
        assert metadata["end"]["timestamp"] >= metadata["start"]["timestamp"]
        await a.close()

    run(scenario())


def test_a_message_to_nobody_is_archived_for_its_sender_only(xmppd, account):
    alice, pa = account("alice")

    async def scenario():
        a = await online(xmppd, alice, pa)
        await chat(a, "nobody-here@localhost", "hello?")
        error = await a.next_any()
        assert error["type"] == "error" and error["error"]["condition"] == "service-unavailable"
        assert stanza_id(error, "nobody-here@localhost") is None
        archived, _ = await a.query()
        assert [(r.body, r.message.get("to")) for r in archived] == [("hello?", "nobody-here@localhost")]
        await a.close()

    run(scenario())
