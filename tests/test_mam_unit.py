"""XEP-0313 message archive without sockets: the query parser, RSM, preferences, ids, the writer and
retention, and the module driven through the router on both storage backends."""

from __future__ import annotations

import asyncio
import time

import pytest
from lxml import etree
from twisted.internet.task import Clock

from tests.fakes import FakeConnection
from tests.storage_fixtures import BACKENDS, make_storage
from xmppd import mam, rsm
from xmppd.aio import settle
from xmppd.config import parse_config
from xmppd.importance import is_archived
from xmppd.jid import JID
from xmppd.mam import (ArchiveWriter, MessageArchive, SeqClock, archive_id, decide, parse_archive_id, parse_prefs,
                       parse_query, prefs_element)
from xmppd.server import CORE_MODULES, Server
from xmppd.stanza import StanzaError
from xmppd.storage import ArchiveFilter, ArchivePrefs, ArchiveRow, StorageError

DOMAIN = "localhost"
STREAM = '<stream:stream xmlns:stream="http://etherx.jabber.org/streams" xmlns="jabber:client">'
FORM = ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value>"
        "</field>{}</x>")


def element(xml: str) -> etree._Element:
    """A stanza as it comes off a stream (in jabber:client)."""
    return etree.fromstring(f"{STREAM}{xml}</stream:stream>")[0]


def query(inner: str = "", **attrs) -> etree._Element:
    attributes = "".join(f" {key}='{value}'" for key, value in attrs.items())
    return etree.fromstring(f"<query xmlns='urn:xmpp:mam:2'{attributes}>{inner}</query>")


def field(var: str, *values: str) -> str:
    return f"<field var='{var}'>" + "".join(f"<value>{v}</value>" for v in values) + "</field>"


def rsm_set(inner: str) -> str:
    return f"<set xmlns='http://jabber.org/protocol/rsm'>{inner}</set>"


def condition(call) -> str:
    with pytest.raises(StanzaError) as caught:
        call()
    return caught.value.condition


# ---------------------------------------------------------------- sans-IO parts

def test_archive_ids_round_trip_and_refuse_anything_else():
    assert parse_archive_id(archive_id(1_700_000_000_123_456, 0xDEADBEEF)) == (1_700_000_000_123_456, 0xDEADBEEF)
    for bad in ("", "zz-1", "12", "0x10-00000001", "10-1", "10-000000001", " 10-00000001"):
        assert condition(lambda: parse_archive_id(bad)) == "item-not-found", bad


def test_seqs_never_repeat_or_go_back():
    clock = SeqClock(last=time.time_ns() // 1000 + 10_000_000)   # the clock went back across a restart
    seqs = [clock.next() for _ in range(1000)]
    assert seqs == sorted(set(seqs)) and seqs[0] > clock.last - 1000


def test_query_form_fields_become_a_filter():
    after, before = archive_id(1000, 1), archive_id(2000, 2)
    parsed = parse_query(query(FORM.format(
        field("with", "Juliet@Capulet.lit/balcony") + field("start", "2010-06-07T00:00:00Z")
        + field("end", "2010-07-07T13:23:54.5+02:00") + field("after-id", after) + field("before-id", before)),
        queryid="f27"), 50)
    where = parsed.where
    assert (where.with_bare, where.with_resource) == ("juliet@capulet.lit", "balcony")
    assert where.start == 1275868800 * 1_000_000
    assert where.end == 1278501834 * 1_000_000 + 500_000
    assert (where.after, where.before) == (1000, 2000)
    assert parsed.known == ((1000, 1), (2000, 2))
    assert (parsed.queryid, parsed.limit, parsed.backwards, parsed.flip) == ("f27", 50, False, False)


def test_query_rsm_paging_and_limits():
    last_page = parse_query(query(rsm_set("<max>10</max><before/>") + "<flip-page/>"), 50)
    assert (last_page.limit, last_page.backwards, last_page.flip, last_page.where.before) == (10, True, True, None)
    before = parse_query(query(rsm_set(f"<max>500</max><before>{archive_id(99, 3)}</before>")), 50)
    assert (before.limit, before.backwards, before.where.before, before.known) == (50, True, 99, ((99, 3),))
    after = parse_query(query(FORM.format(field("after-id", archive_id(10, 1)))
                              + rsm_set(f"<after>{archive_id(20, 2)}</after>")), 50)
    assert after.where.after == 20 and not after.backwards
    ids = parse_query(query(FORM.format(field("ids", archive_id(5, 1), archive_id(6, 2)))), 50)
    assert ids.where.ids == (5, 6)
    assert parse_query(query(rsm_set("<index>3</index>")), 50).page.index == 3


@pytest.mark.parametrize("inner, expected", [
    (FORM.format(field("subject", "x")), "feature-not-implemented"),
    (FORM.format(field("include-groupchat", "true")), "feature-not-implemented"),
    (FORM.format(field("start", "yesterday")), "bad-request"),
    (FORM.format(field("start", "2010-06-07T00:00:00")), "bad-request"),   # no time zone
    (FORM.format(field("with", "a@b", "c@d")), "bad-request"),
    (FORM.format(field("with", "@nope")), "jid-malformed"),
    (FORM.format(field("after-id", "forged")), "item-not-found"),
    (FORM.format(field("ids", *[archive_id(n, 1) for n in range(51)])), "policy-violation"),
    ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:mam:1</value></field></x>",
     "bad-request"),
    (rsm_set("<max>-1</max>"), "bad-request"),
    (rsm_set("<max>ten</max>"), "bad-request"),
    (rsm_set("<after/>"), "bad-request"),
    (rsm_set(f"<after>{archive_id(1, 1)}</after><before/>"), "bad-request"),
    (rsm_set("<index>2</index><before/>"), "bad-request"),
])
def test_bad_queries_get_the_error_the_xeps_name(inner, expected):
    assert condition(lambda: parse_query(query(inner), 50)) == expected


def test_result_set_carries_what_is_known():
    empty = rsm.result_set(None, None, count=0)
    assert [etree.QName(child).localname for child in empty] == ["count"]
    page = rsm.result_set("a", "b", first_index=0, count=2)
    assert page.findtext(f"{{{rsm.NS_RSM}}}first") == "a" and page.find(f"{{{rsm.NS_RSM}}}first").get("index") == "0"
    assert page.findtext(f"{{{rsm.NS_RSM}}}last") == "b" and page.findtext(f"{{{rsm.NS_RSM}}}count") == "2"


def test_preferences_decide_per_contact():
    romeo, tybalt = JID.parse("romeo@montague.lit/orchard"), JID.parse("tybalt@capulet.lit")
    assert decide(ArchivePrefs("always"), romeo) is True
    assert decide(ArchivePrefs("never", always=("romeo@montague.lit",)), romeo) is True
    assert decide(ArchivePrefs("always", never=("romeo@montague.lit/orchard",)), romeo) is False
    assert decide(ArchivePrefs("always", always=("tybalt@capulet.lit",), never=("tybalt@capulet.lit",)),
                  tybalt) is False
    assert decide(ArchivePrefs("roster"), tybalt) is None


def test_preferences_parse_and_render():
    prefs = parse_prefs(etree.fromstring(
        "<prefs xmlns='urn:xmpp:mam:2' default='roster'><always><jid>Romeo@Montague.lit</jid>"
        "<jid>romeo@montague.lit</jid></always><never><jid>tybalt@capulet.lit/x</jid></never></prefs>"))
    assert prefs == ArchivePrefs("roster", ("romeo@montague.lit",), ("tybalt@capulet.lit/x",))
    assert parse_prefs(prefs_element(prefs)) == prefs
    assert condition(lambda: parse_prefs(etree.fromstring("<prefs xmlns='urn:xmpp:mam:2' default='often'/>"))) \
        == "bad-request"


@pytest.mark.parametrize("xml, archived", [
    ("<message type='chat'><body>hi</body></message>", True),
    ("<message><body>normal</body></message>", True),
    ("<message type='chat'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>", True),
    ("<message type='chat'><propose xmlns='urn:xmpp:jingle-message:0' id='c'/></message>", True),
    ("<message type='chat'><accept xmlns='urn:xmpp:jingle-message:0' id='c'/></message>", True),
    ("<message type='chat'><displayed xmlns='urn:xmpp:chat-markers:0' id='m'/></message>", True),
    ("<message type='chat'><received xmlns='urn:xmpp:receipts' id='m'/></message>", False),
    ("<message type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>", False),
    ("<message type='chat'><received xmlns='urn:xmpp:receipts' id='m'/><store xmlns='urn:xmpp:hints'/></message>",
     True),
    ("<message type='chat'><body>off the record</body><no-store xmlns='urn:xmpp:hints'/></message>", False),
    ("<message type='chat'><body>x</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>", False),
    ("<message type='headline'><body>news</body></message>", False),
    ("<message type='chat'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>"
     "<message xmlns='jabber:client' type='chat'><body>copy</body></message></forwarded></sent></message>", False),
    ("<message type='groupchat'><body>room</body></message>", False),
    ("<message type='error'><body>bounced</body></message>", False),
])
def test_what_is_archived(xml, archived):
    assert is_archived(element(xml)) is archived


# ---------------------------------------------------------------- the writer

class FlakyStorage:
    """mam_append fails the first `failures` times, after committing (the answer is lost)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.rows: dict[int, ArchiveRow] = {}
        self.calls = 0

    async def mam_append(self, rows):
        self.calls += 1
        before = len(self.rows)
        for row in rows:
            self.rows.setdefault(row.seq, row)
        if self.failures:
            self.failures -= 1
            raise StorageError("connection lost after the commit")
        return len(self.rows) - before


def test_writer_batches_retries_and_never_stores_twice():
    async def main():
        storage = FlakyStorage(failures=2)
        writer = ArchiveWriter(storage, retry_delays=(0.01,))
        for seq in range(1, 251):
            writer.add(ArchiveRow(seq, 0, "alice", "bob@x", "", "<message/>"))
        await asyncio.wait_for(writer.barrier(), 5)
        assert sorted(storage.rows) == list(range(1, 251))
        assert storage.calls == 3 and writer.failures == 2
        writer.add(ArchiveRow(251, 0, "alice", "bob@x", "", "<message/>"))
        await asyncio.wait_for(writer.barrier(), 5)
        assert storage.calls == 4 and writer.stored == 1

    asyncio.run(main())


# ---------------------------------------------------------------- the module, through the router

@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


def run_server(backend, tmp_path, test, toml: str = "") -> None:
    async def main() -> None:
        storage, cleanup = await make_storage(backend, tmp_path)
        try:
            config = parse_config("[c2s]\nport = 0\ndirect_tls_port = 0\nrequire_encryption = false\n" + toml)
            server = Server(config, storage)
            server.load_modules(CORE_MODULES)
            clock = Clock()
            server.modules["mam"] = MessageArchive(server, clock=clock)
            for name in ("alice", "bob"):
                await storage.create_user(name, {})
            await test(server, clock)
        finally:
            await cleanup()

    asyncio.run(main())


def online(server: Server, username: str, resource: str = "phone"):
    session = server.bind(FakeConnection(), username, resource)
    session.available = True
    return session


async def send(server: Server, session, xml: str) -> None:
    stanza = element(xml)
    stanza.set("from", session.full)
    await settle(server.router.from_client(session, stanza))


def test_stamps_the_recipients_copy_and_strips_forged_ids(backend, tmp_path):
    async def test(server, clock):
        alice, bob = online(server, "alice"), online(server, "bob")
        await send(server, alice, "<message to='bob@localhost' type='chat' id='m1'><body>hi</body>"
                                  "<origin-id xmlns='urn:xmpp:sid:0' id='o1'/>"
                                  "<stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='forged'/>"
                                  "<stanza-id xmlns='urn:xmpp:sid:0' by='localhost' id='forged2'/>"
                                  "<stanza-id xmlns='urn:xmpp:sid:0' by='room@muc.example' id='theirs'/></message>")
        [received] = bob.connection.take()
        ids = {s.get("by"): s.get("id") for s in received.findall("{urn:xmpp:sid:0}stanza-id")}
        assert set(ids) == {"bob@localhost", "room@muc.example"} and ids["room@muc.example"] == "theirs"
        assert received.find("{urn:xmpp:sid:0}origin-id").get("id") == "o1"
        archive = server.modules["mam"]
        await archive.barrier()
        [bob_copy] = await server.storage.mam_query("bob", ArchiveFilter(), limit=10)
        assert archive_id(bob_copy.seq, bob_copy.tag) == ids["bob@localhost"]
        assert bob_copy.with_jid == "alice@localhost"
        [alice_copy] = await server.storage.mam_query("alice", ArchiveFilter(), limit=10)
        sent = etree.fromstring(alice_copy.stanza_xml)
        assert [s.get("by") for s in sent.findall("{urn:xmpp:sid:0}stanza-id")] == ["room@muc.example"]
        assert alice_copy.with_jid == "bob@localhost"
        # A chat state is delivered untouched and archived nowhere.
        await send(server, alice, "<message to='bob@localhost' type='chat'>"
                                  "<active xmlns='http://jabber.org/protocol/chatstates'/></message>")
        [state] = bob.connection.take()
        assert state.find("{urn:xmpp:sid:0}stanza-id") is None
        await archive.barrier()
        assert await server.storage.mam_count("bob", ArchiveFilter()) == 1

    run_server(backend, tmp_path, test)


def test_messages_to_oneself_and_to_nobody(backend, tmp_path):
    async def test(server, clock):
        alice = online(server, "alice")
        laptop = online(server, "alice", "laptop")
        await send(server, alice, "<message to='alice@localhost/laptop' type='chat'><body>note</body></message>")
        await send(server, alice, "<message to='ghost@localhost' type='chat'><body>anyone?</body></message>")
        await send(server, alice, "<message to='bob@remote.example' type='chat'><body>far</body></message>")
        await server.modules["mam"].barrier()
        archived = await server.storage.mam_query("alice", ArchiveFilter(), limit=10)
        assert [m.with_jid for m in archived] == ["alice@localhost", "ghost@localhost", "bob@remote.example"]
        [note] = laptop.connection.take()
        assert note.find("{urn:xmpp:sid:0}stanza-id").get("id") == archive_id(archived[0].seq, archived[0].tag)

    run_server(backend, tmp_path, test)


def test_roster_preference_asks_the_roster(backend, tmp_path):
    async def test(server, clock):
        from xmppd.storage.models import RosterItem
        await server.storage.create_user("carol", {})
        await server.storage.set_roster_item("bob", RosterItem("alice@localhost", None, "both"))
        bob = online(server, "bob")
        await server.storage.mam_set_prefs("bob", ArchivePrefs("roster"))
        server.modules["mam"]._prefs.clear()
        for sender in ("alice", "carol"):
            await send(server, online(server, sender),
                       f"<message to='bob@localhost' type='chat'><body>from {sender}</body></message>")
        stamped = [m.find("{urn:xmpp:sid:0}stanza-id") is not None for m in bob.connection.take()]
        assert stamped == [True, False]
        await server.modules["mam"].barrier()
        assert [m.with_jid for m in await server.storage.mam_query("bob", ArchiveFilter(), limit=10)] == [
            "alice@localhost"]

    run_server(backend, tmp_path, test)


def test_retention_deletes_old_messages_every_hour(backend, tmp_path):
    async def test(server, clock):
        now = time.time_ns() // 1000
        day = 86400 * 1_000_000
        rows = [ArchiveRow(now - age * day, 1, "alice", "bob@localhost", "", "<message/>") for age in (40, 31, 29, 1)]
        assert await server.storage.mam_append(rows) == 4
        clock.advance(60)
        await asyncio.sleep(0.5)
        left = await server.storage.mam_query("alice", ArchiveFilter(), limit=10)
        assert [m.seq for m in left] == [rows[2].seq, rows[3].seq]
        assert clock.getDelayedCalls()[0].getTime() == 60 + 3600

    run_server(backend, tmp_path, test, "[mam]\nretention = 30\n")


def test_a_deleted_account_is_forgotten(backend, tmp_path):
    async def test(server, clock):
        archive = server.modules["mam"]
        await server.storage.mam_append([ArchiveRow(10, 1, "alice", "bob@localhost", "", "<message/>")])
        assert await archive._load_prefs("alice") is not None
        assert await server.storage.delete_user("alice")
        server.fire("account-deleted", "alice")
        assert await server.storage.mam_count("alice", ArchiveFilter()) == 0
        bob = online(server, "bob")
        await send(server, bob, "<message to='alice@localhost' type='chat'><body>still there?</body></message>")
        [bounce] = bob.connection.take()
        assert bounce.get("type") == "error" and bounce.find("{urn:xmpp:sid:0}stanza-id") is None
        await archive.barrier()
        assert await server.storage.mam_count("bob", ArchiveFilter(with_bare="alice@localhost")) == 1

    run_server(backend, tmp_path, test)


def test_random_tags_are_32_bit_and_refill():
    tags = mam.RandomTags(chunk=8)   # two tags per read: the third needs a refill
    drawn = [tags.next() for _ in range(1000)]
    assert all(0 <= tag < 2 ** 32 for tag in drawn)
    assert len(set(drawn)) > 990   # random, not a counter or a repeated chunk
