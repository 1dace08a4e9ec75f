"""The storage API, run against both backends."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import subprocess
import sys

import pytest

from xmppd.storage import RosterItem, ScramCredentials, StorageError, migrations, open_storage
from xmppd.storage.migrations import MIGRATIONS
from xmppd.storage.models import AppServerRegistration, PushRegistration
from xmppd.storage.sql import atomic, execute, select

from .storage_fixtures import BACKENDS, backend_config, run, storage  # noqa: F401

SHA1 = ScramCredentials(b"salt-1\x00\xff", 4096, b"\x01" * 20, b"\x02" * 20)
SHA256 = ScramCredentials(b"salt-256", 10000, b"\x03" * 32, b"\x04" * 32)
SUBSCRIBE = "<presence xmlns='jabber:client' from='{}' to='alice@example.org' type='subscribe'/>"
MESSAGE = "<message xmlns='jabber:client' from='bob@example.org/x' to='{}@example.org' type='chat'><body>{}</body></message>"


UTC = datetime.timezone.utc
T0 = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def raw(storage, sql_text, *params):
    """Rows of a query run through the backend's own driver (to look under the API)."""

    def script():
        return (yield select(sql_text, *params))

    script.__name__ = "raw"
    return run(storage._run(script))


def queued(storage, username, **kwargs):
    return run(storage.list_queued(username, **kwargs))


def messages(storage, username, **kwargs):
    """(id, stanza_xml) of the user's queued rows, oldest first."""
    return [(message_id, stanza_xml) for message_id, stanza_xml, _ in queued(storage, username, **kwargs)]


def append(storage, username, stanza_xml, max_messages=None):
    """Queue one message in a call of its own: its id, or None if it was refused."""
    [new_id] = run(storage.write_message_queue([(username, stanza_xml, T0, max_messages)], []))
    return new_id


def delete(storage, ids):
    """Delete rows by id in a call of its own."""
    assert run(storage.write_message_queue([], ids)) == []


def _legacy_row(username, stanza_xml):
    """Insert a row as versions before the message queue did: stored_at from the database's clock."""
    [(new_id,)] = yield select(
        "INSERT INTO offline_messages (username, stanza_xml) VALUES (?, ?) RETURNING id", username, stanza_xml
    )
    return new_id


# -- accounts ---------------------------------------------------------------


def test_create_user_and_credentials(storage):
    assert run(storage.create_user("alice", {"SCRAM-SHA-1": SHA1, "SCRAM-SHA-256": SHA256})) is True
    assert run(storage.create_user("alice", {"SCRAM-SHA-1": SHA256})) is False
    assert run(storage.user_exists("alice")) is True
    assert run(storage.user_exists("bob")) is False
    got = run(storage.get_credentials("alice", "SCRAM-SHA-1"))
    assert got == SHA1
    assert type(got.salt) is bytes and type(got.stored_key) is bytes and type(got.server_key) is bytes
    assert run(storage.get_credentials("alice", "SCRAM-SHA-256")) == SHA256
    assert run(storage.get_credentials("alice", "SCRAM-SHA-512")) is None
    assert run(storage.get_credentials("bob", "SCRAM-SHA-1")) is None


def test_create_user_without_credentials(storage):
    assert run(storage.create_user("carol", {})) is True
    assert run(storage.user_exists("carol")) is True
    assert run(storage.get_credentials("carol", "SCRAM-SHA-1")) is None


def test_set_credentials_replaces_all(storage):
    run(storage.create_user("alice", {"SCRAM-SHA-1": SHA1, "SCRAM-SHA-256": SHA256}))
    new = ScramCredentials(b"new", 8192, b"\x05" * 32, b"\x06" * 32)
    assert run(storage.set_credentials("alice", {"SCRAM-SHA-256": new})) is True
    assert run(storage.get_credentials("alice", "SCRAM-SHA-256")) == new
    assert run(storage.get_credentials("alice", "SCRAM-SHA-1")) is None
    assert run(storage.set_credentials("nobody", {"SCRAM-SHA-256": new})) is False
    assert run(storage.user_exists("nobody")) is False


def test_list_and_count_users(storage):
    assert run(storage.list_users()) == []
    assert run(storage.count_users()) == 0
    names = ["zoë", "alice", "bob", "émile", "日本", "Zed", "a"]
    for name in names:
        run(storage.create_user(name, {"SCRAM-SHA-1": SHA1}))
    assert run(storage.list_users()) == sorted(names)
    assert run(storage.count_users()) == len(names)


def test_delete_user_removes_everything(storage):
    for user in ("alice", "bob"):
        run(storage.create_user(user, {"SCRAM-SHA-1": SHA1, "SCRAM-SHA-256": SHA256}))
        run(storage.set_roster_item(user, RosterItem("carol@example.org", "Carol", "both", groups=["A", "B"])))
        run(storage.add_pending_subscription(user, "dave@example.org", SUBSCRIBE.format("dave@example.org")))
        run(storage.set_vcard(user, "<vCard xmlns='vcard-temp'><FN>x</FN></vCard>"))
        assert append(storage, user, MESSAGE.format(user, "hi"), max_messages=10) is not None
    assert run(storage.delete_user("alice")) is True
    assert run(storage.delete_user("alice")) is False
    assert run(storage.user_exists("alice")) is False
    tables = ("scram_credentials", "roster_items", "roster_groups", "pending_subscriptions", "vcards", "offline_messages")
    for table in tables:
        assert raw(storage, f"SELECT COUNT(*) FROM {table} WHERE username = ?", "alice") == [(0,)], table
        assert raw(storage, f"SELECT COUNT(*) FROM {table} WHERE username = ?", "bob") != [(0,)], table
    # A new account of the same name starts empty.
    run(storage.create_user("alice", {}))
    assert run(storage.get_roster("alice")) == (0, [])
    assert run(storage.list_pending_subscriptions("alice")) == []
    assert run(storage.get_vcard("alice")) is None
    assert run(storage.get_credentials("alice", "SCRAM-SHA-1")) is None
    assert queued(storage, "alice") == []
    assert run(storage.get_roster("bob"))[1][0].groups == ["A", "B"]
    assert [xml for _, xml, _ in queued(storage, "bob")] == [MESSAGE.format("bob", "hi")]


# -- roster -----------------------------------------------------------------------


def test_roster_items_and_versions(storage):
    run(storage.create_user("alice", {}))
    assert run(storage.get_roster("alice")) == (0, [])
    assert run(storage.get_roster_version("alice")) == 0
    assert run(storage.get_roster_item("alice", "bob@example.org")) is None

    bob = RosterItem("bob@example.org", "Bob", "to", ask=False, approved=True, groups=["Friends", "Work"])
    assert run(storage.set_roster_item("alice", bob)) == 1
    assert run(storage.get_roster_item("alice", "bob@example.org")) == bob
    carol = RosterItem("carol@example.org", None, "none", ask=True)
    assert run(storage.set_roster_item("alice", carol)) == 2
    assert run(storage.set_roster_item("alice", RosterItem("anne@example.org"))) == 3
    version, items = run(storage.get_roster("alice"))
    assert version == 3 == run(storage.get_roster_version("alice"))
    assert [item.jid for item in items] == ["anne@example.org", "bob@example.org", "carol@example.org"]
    assert items[1] == bob and items[2] == carol

    # Replacing changes every field, groups included.
    bob2 = RosterItem("bob@example.org", "Robert", "both", ask=True, approved=False, groups=["Work", "Chess"])
    assert run(storage.set_roster_item("alice", bob2)) == 4
    got = run(storage.get_roster_item("alice", "bob@example.org"))
    assert (got.name, got.subscription, got.ask, got.approved, got.groups) == ("Robert", "both", True, False, ["Chess", "Work"])
    assert run(storage.set_roster_item("alice", RosterItem("bob@example.org", "Robert"))) == 5
    assert run(storage.get_roster_item("alice", "bob@example.org")).groups == []

    assert run(storage.delete_roster_item("alice", "bob@example.org")) == 6
    assert run(storage.delete_roster_item("alice", "bob@example.org")) is None
    assert run(storage.get_roster_version("alice")) == 6
    assert [item.jid for item in run(storage.get_roster("alice"))[1]] == ["anne@example.org", "carol@example.org"]


def test_roster_is_per_user(storage):
    run(storage.create_user("alice", {}))
    run(storage.create_user("bob", {}))
    run(storage.set_roster_item("alice", RosterItem("x@example.org", groups=["G"])))
    assert run(storage.get_roster("bob")) == (0, [])
    assert run(storage.get_roster_item("bob", "x@example.org")) is None
    assert run(storage.delete_roster_item("bob", "x@example.org")) is None
    assert run(storage.get_roster_version("alice")) == 1


def test_roster_groups_are_a_set(storage):
    run(storage.create_user("alice", {}))
    run(storage.set_roster_item("alice", RosterItem("bob@example.org", groups=["b", "a", "b"])))
    assert run(storage.get_roster_item("alice", "bob@example.org")).groups == ["a", "b"]


def test_roster_unicode(storage):
    run(storage.create_user("ålice", {}))
    jids = ["zoë@example.org", "émile@example.org", "日本@example.jp", "bob@example.org", "Борис@example.ru"]
    for jid in jids:
        item = RosterItem(jid, f"名前 {jid} 🎉", "from", groups=["Família", "друзья", "😀", "Ω"])
        run(storage.set_roster_item("ålice", item))
    version, items = run(storage.get_roster("ålice"))
    assert version == len(jids)
    assert [item.jid for item in items] == sorted(jids)
    for item in items:
        assert item.name == f"名前 {item.jid} 🎉"
        assert item.groups == sorted(["Família", "друзья", "😀", "Ω"])
    assert run(storage.get_roster_item("ålice", "日本@example.jp")).groups == items[0].groups


def test_roster_rejects_bad_input(storage):
    with pytest.raises(StorageError, match="set_roster_item: no such user 'ghost'"):
        run(storage.set_roster_item("ghost", RosterItem("bob@example.org", groups=["G"])))
    assert run(storage.get_roster("ghost")) == (0, [])
    assert run(storage.get_roster_version("ghost")) == 0
    run(storage.create_user("alice", {}))
    with pytest.raises(ValueError):
        run(storage.set_roster_item("alice", RosterItem("bob@example.org", subscription="pending")))
    assert run(storage.get_roster("alice")) == (0, [])


def test_roster_items_in_one_transaction(storage):
    """set_roster_items (xmppctl import): many items, one version bump, all or nothing."""
    run(storage.create_user("alice", {}))
    run(storage.set_roster_item("alice", RosterItem("bob@example.org", "Old Bob", groups=["Old"])))
    items = [RosterItem("bob@example.org", "Bob", "both", groups=["Friends", "Work"]),
             RosterItem("carol@example.org", None, "none", ask=True),
             RosterItem("dave@example.org", "Dave", "from", approved=True)]
    assert run(storage.set_roster_items("alice", items)) == 2
    assert run(storage.get_roster("alice")) == (2, items)
    assert run(storage.set_roster_items("alice", [])) == 2
    with pytest.raises(ValueError):
        run(storage.set_roster_items("alice", [RosterItem("eve@example.org", subscription="pending")]))
    with pytest.raises(StorageError, match="set_roster_items: no such user 'ghost'"):
        run(storage.set_roster_items("ghost", items))
    assert run(storage.get_roster("alice")) == (2, items)


def test_failed_transaction_leaves_nothing(storage):
    """An atomic script that fails after writing rolls back, on both drivers."""
    run(storage.create_user("alice", {}))

    @atomic
    def half_done():
        yield execute("INSERT INTO vcards (username, xml) VALUES (?, ?)", "alice", "<vCard/>")
        yield execute("UPDATE users SET roster_version = 7 WHERE username = ?", "alice")
        raise StorageError("boom")

    with pytest.raises(StorageError, match="boom"):
        run(storage._run(half_done))
    assert run(storage.get_vcard("alice")) is None
    assert run(storage.get_roster_version("alice")) == 0


# -- pending subscriptions --------------------------------------------------------


def test_pending_subscriptions(storage):
    run(storage.create_user("alice", {}))
    run(storage.create_user("bob", {}))
    assert run(storage.list_pending_subscriptions("alice")) == []
    senders = ["zed@example.org", "amy@example.org", "mia@example.org"]
    for sender in senders:
        assert run(storage.add_pending_subscription("alice", sender, SUBSCRIBE.format(sender))) is None
    assert run(storage.list_pending_subscriptions("alice")) == [(s, SUBSCRIBE.format(s)) for s in senders]
    assert run(storage.list_pending_subscriptions("bob")) == []

    # A repeated request replaces the stanza and keeps its place.
    again = "<presence type='subscribe'><status>please</status></presence>"
    run(storage.add_pending_subscription("alice", "amy@example.org", again))
    assert run(storage.list_pending_subscriptions("alice")) == [
        ("zed@example.org", SUBSCRIBE.format("zed@example.org")),
        ("amy@example.org", again),
        ("mia@example.org", SUBSCRIBE.format("mia@example.org")),
    ]

    assert run(storage.remove_pending_subscription("alice", "zed@example.org")) is True
    assert run(storage.remove_pending_subscription("alice", "zed@example.org")) is False
    assert run(storage.remove_pending_subscription("bob", "amy@example.org")) is False
    run(storage.add_pending_subscription("alice", "zed@example.org", "<presence type='subscribe'/>"))
    assert [s for s, _ in run(storage.list_pending_subscriptions("alice"))] == [
        "amy@example.org",
        "mia@example.org",
        "zed@example.org",
    ]
    with pytest.raises(StorageError, match="no such user"):
        run(storage.add_pending_subscription("ghost", "amy@example.org", again))


# -- offline messages -------------------------------------------------------------


def test_offline_messages_keep_their_order(storage):
    run(storage.create_user("alice", {}))
    run(storage.create_user("bob", {}))
    assert queued(storage, "alice") == []
    assert run(storage.count_offline("alice")) == 0
    stored = []
    for i in range(6):
        # Interleaved with another user's messages: each user's come back in their own order.
        stored.append((append(storage, "alice", MESSAGE.format("alice", i), max_messages=100), MESSAGE.format("alice", i)))
        append(storage, "bob", MESSAGE.format("bob", i), max_messages=100)
    ids = [message_id for message_id, _ in stored]
    assert all(type(i) is int for i in ids) and ids == sorted(set(ids))
    assert messages(storage, "alice") == stored
    assert run(storage.count_offline("alice")) == 6
    assert run(storage.count_offline()) == 12          # everyone's: the queue depth of the metrics
    assert messages(storage, "alice", limit=2) == stored[:2]
    assert messages(storage, "alice", limit=100) == stored
    assert messages(storage, "alice", limit=0) == []
    assert [xml for _, xml in messages(storage, "bob")] == [MESSAGE.format("bob", i) for i in range(6)]

    # Handing over the first two, then the rest: what is left stays in order.
    delete(storage, ids[:2])
    assert messages(storage, "alice") == stored[2:]
    assert run(storage.count_offline("alice")) == 4
    # An id is never given out again, not even that of the newest message in the table once deleted.
    last = append(storage, "alice", "<message>last</message>", max_messages=100)
    assert run(storage.count_offline("alice")) == 5
    delete(storage, [last, ids[-1]])
    assert run(storage.count_offline("alice")) == 3
    newest = append(storage, "alice", "<message/>", max_messages=100)
    assert newest > last
    assert messages(storage, "alice") == stored[2:5] + [(newest, "<message/>")]
    assert run(storage.count_offline("alice")) == 4
    assert run(storage.count_offline("bob")) == 6


def test_offline_quota_is_exact(storage):
    run(storage.create_user("alice", {}))
    run(storage.create_user("bob", {}))
    ids = [append(storage, "alice", MESSAGE.format("alice", i), max_messages=3) for i in range(3)]
    assert None not in ids
    before = queued(storage, "alice")
    assert append(storage, "alice", "<message>too many</message>", max_messages=3) is None
    assert append(storage, "alice", "<message>too many</message>", max_messages=2) is None
    assert queued(storage, "alice") == before
    assert raw(storage, "SELECT COUNT(*) FROM offline_messages") == [(3,)]
    # The quota is per user.
    assert append(storage, "bob", "<message/>", max_messages=3) is not None
    # Room again after a delivery, or with a larger quota.
    delete(storage, ids[:1])
    assert run(storage.count_offline("alice")) == 2
    assert append(storage, "alice", "<message>4</message>", max_messages=3) is not None
    assert append(storage, "alice", "<message>5</message>", max_messages=3) is None
    assert append(storage, "alice", "<message>5</message>", max_messages=4) is not None
    assert run(storage.count_offline("alice")) == 4
    assert append(storage, "bob", "<message/>", max_messages=0) is None
    with pytest.raises(ValueError):
        append(storage, "alice", "<message/>", max_messages=-1)
    with pytest.raises(ValueError):
        queued(storage, "alice", limit=-1)
    assert run(storage.count_offline("alice")) == 4


def test_offline_for_unknown_user(storage):
    # Refused with None, not StorageError: the rest of a batch must go through (see below).
    assert append(storage, "ghost", "<message/>", max_messages=10) is None
    assert append(storage, "ghost", "<message/>", max_messages=0) is None
    assert append(storage, "ghost", "<message/>") is None
    assert queued(storage, "ghost") == []
    assert run(storage.count_offline("ghost")) == 0
    delete(storage, [1, 2])
    assert raw(storage, "SELECT COUNT(*) FROM offline_messages") == [(0,)]


def test_offline_delete_only_named_ids(storage):
    # Deletes name rows by id, whoever's they are; because an id is never given out again,
    # one that was read earlier and is deleted late (or twice) cannot hit another message.
    run(storage.create_user("alice", {}))
    run(storage.create_user("bob", {}))
    alice = [append(storage, "alice", MESSAGE.format("alice", i), max_messages=10) for i in range(3)]
    bob = [append(storage, "bob", MESSAGE.format("bob", i), max_messages=10) for i in range(3)]
    delete(storage, [])
    assert run(storage.count_offline("alice")) == 3 and run(storage.count_offline("bob")) == 3
    # A mixed list, with repeats and an unknown id: exactly the named rows go, each once.
    delete(storage, [bob[0], alice[1], alice[1], max(bob) + 1000])
    assert [i for i, _ in messages(storage, "alice")] == [alice[0], alice[2]]
    assert [i for i, _ in messages(storage, "bob")] == bob[1:]
    assert run(storage.count_offline("alice")) == 2 and run(storage.count_offline("bob")) == 2
    # Deleting them again after either user got new messages: harmless.
    later = append(storage, "bob", "<message>later</message>", max_messages=10)
    delete(storage, [alice[1], bob[0], alice[1]])
    assert [i for i, _ in messages(storage, "alice")] == [alice[0], alice[2]]
    assert [i for i, _ in messages(storage, "bob")] == bob[1:] + [later]
    # More ids than one statement takes (batches, in one transaction), most of them unknown or
    # deleted already; bob's remaining rows are not named.
    many = [i for i in range(1, later + 1300) if i not in bob[1:] + [later]]
    delete(storage, many)
    assert queued(storage, "alice") == []
    assert [i for i, _ in messages(storage, "bob")] == bob[1:] + [later]
    assert run(storage.count_offline("alice")) == 0 and run(storage.count_offline("bob")) == 3


def test_offline_unicode_and_large_stanzas(storage):
    run(storage.create_user("ålice", {}))
    small = MESSAGE.format("ålice", "Grüße, 日本語, Борис, 😀🎉 — 'quotes' \"double\" ? %s %% \\ \r\n\ttabs &amp; &lt;")
    body = "".join(chr(c) for c in range(0x20, 0x800) if not 0xD800 <= c <= 0xDFFF) + "𝄞😀🇫🇷"
    large = MESSAGE.format("ålice", (body * (200_000 // len(body) + 1))[:200_000])
    assert len(large) > 200_000
    first = append(storage, "ålice", small, max_messages=10)
    second = append(storage, "ålice", large, max_messages=10)
    assert messages(storage, "ålice") == [(first, small), (second, large)]
    delete(storage, [first, second])
    assert queued(storage, "ålice") == []


def test_offline_concurrent_stores_keep_the_quota(storage):
    async def store(username, stanza_xml, max_messages):
        [new_id] = await storage.write_message_queue([(username, stanza_xml, T0, max_messages)], [])
        return new_id

    async def scenario():
        await storage.create_user("alice", {})
        await storage.create_user("bob", {})
        results = await asyncio.gather(
            *(store("alice", MESSAGE.format("alice", i), 10) for i in range(50)),
            *(store("bob", MESSAGE.format("bob", i), 7) for i in range(30)),
            *(storage.count_offline("alice") for _ in range(10)),
        )
        alice, bob, counts = results[:50], results[50:80], results[80:]
        assert sum(r is not None for r in alice) == 10
        assert sum(r is not None for r in bob) == 7
        assert all(0 <= count <= 10 for count in counts)
        listed = await storage.list_queued("alice")
        assert [i for i, _, _ in listed] == sorted(r for r in alice if r is not None)
        assert await storage.count_offline("alice") == 10 and await storage.count_offline("bob") == 7

        # Deliveries and new messages at once: never more than the quota, no message lost.
        handed_over = [i for i, _, _ in listed[:4]]
        results = await asyncio.gather(
            storage.write_message_queue([], handed_over[:2]),
            *(store("alice", f"<message>{i}</message>", 10) for i in range(20)),
            storage.write_message_queue([], handed_over[2:]),
        )
        assert results[0] == [] and results[-1] == []
        accepted = [r for r in results[1:-1] if r is not None]
        assert len(accepted) <= 4
        assert await storage.count_offline("alice") == 6 + len(accepted) <= 10
        assert [i for i, _, _ in await storage.list_queued("alice")] == [i for i, _, _ in listed[4:]] + sorted(accepted)

    run(scenario())


# -- the message queue (group commits, journal.py) ---------------------------------


def test_queue_ids_increase_in_append_order(storage):
    run(storage.create_user("alice", {}))
    run(storage.create_user("bob", {}))
    # 300 rows: inserts in chunks of 256, 32, 8 and 4, so ids must line up across chunks.
    appends = [("alice" if i % 3 else "bob", MESSAGE.format("x", i), T0 + datetime.timedelta(seconds=i), None) for i in range(300)]
    ids = run(storage.write_message_queue(appends, []))
    assert len(ids) == 300 and None not in ids
    assert ids == sorted(ids) and len(set(ids)) == 300
    for user in ("alice", "bob"):
        expected = [(i, xml, at) for i, (u, xml, at, _) in zip(ids, appends) if u == user]
        assert queued(storage, user) == expected
    # A later call's ids are above all earlier ones, also for the other user.
    [later] = run(storage.write_message_queue([("bob", "<message/>", T0, None)], []))
    assert later > max(ids)


def test_queue_quota_counts_rows_of_the_same_call(storage):
    run(storage.create_user("alice", {}))
    run(storage.create_user("bob", {}))
    [old] = run(storage.write_message_queue([("alice", "<message>old</message>", T0, None)], []))
    ids = run(storage.write_message_queue(
        [
            ("alice", "<message>1</message>", T0, 3),  # 2nd row
            ("bob", "<message>b1</message>", T0, 1),
            ("alice", "<message>2</message>", T0, 3),  # 3rd row
            ("alice", "<message>3</message>", T0, 3),  # would be the 4th: refused
            ("bob", "<message>b2</message>", T0, 1),  # refused
            ("alice", "<message>4</message>", T0, None),  # no quota: stored
            ("alice", "<message>5</message>", T0, 5),  # 5th row: within 5
            ("alice", "<message>6</message>", T0, 5),  # refused
            ("alice", "<message>7</message>", T0, 0),  # refused
        ],
        [],
    ))
    assert [i is not None for i in ids] == [True, True, True, False, False, True, True, False, False]
    assert [xml for _, xml, _ in queued(storage, "alice")] == [f"<message>{x}</message>" for x in ("old", 1, 2, 4, 5)]
    assert [xml for _, xml, _ in queued(storage, "bob")] == ["<message>b1</message>"]
    # Deletes come first within a call: they make room for its appends.
    ids = run(storage.write_message_queue([("alice", "<message>8</message>", T0, 5)], [old]))
    assert ids[0] is not None
    assert run(storage.write_message_queue([("alice", "<message>9</message>", T0, 5)], [])) == [None]
    assert run(storage.count_offline("alice")) == 5
    with pytest.raises(ValueError):
        run(storage.write_message_queue([("alice", "<message/>", T0, -1)], []))
    assert run(storage.count_offline("alice")) == 5


def test_queue_unknown_user_is_refused_alone(storage):
    run(storage.create_user("alice", {}))
    ids = run(storage.write_message_queue(
        [("alice", "<message>1</message>", T0, None), ("ghost", "<message/>", T0, None),
         ("ghost", "<message/>", T0, 10), ("alice", "<message>2</message>", T0, 10)],
        [],
    ))
    assert ids[1:3] == [None, None] and ids[0] is not None and ids[3] > ids[0]
    assert [xml for _, xml, _ in queued(storage, "alice")] == ["<message>1</message>", "<message>2</message>"]
    assert raw(storage, "SELECT COUNT(*) FROM offline_messages WHERE username = ?", "ghost") == [(0,)]
    # A user deleted meanwhile: refused, the rest of the batch goes through.
    run(storage.create_user("bob", {}))
    run(storage.delete_user("bob"))
    assert run(storage.write_message_queue([("bob", "<message/>", T0, None), ("alice", "<message>3</message>", T0, None)], []))[0] is None
    assert run(storage.count_offline("alice")) == 3


def test_queue_deletes_any_users_rows(storage):
    run(storage.create_user("alice", {}))
    run(storage.create_user("bob", {}))
    alice = run(storage.write_message_queue([("alice", f"<message>{i}</message>", T0, None) for i in range(600)], []))
    bob = run(storage.write_message_queue([("bob", f"<message>{i}</message>", T0, None) for i in range(3)], []))
    # One call deletes rows of both users, ignoring unknown and repeated ids; 601 ids need two statements.
    gone = alice[:599] + [bob[1], bob[1], max(bob) + 1000]
    assert run(storage.write_message_queue([], gone)) == []
    assert [i for i, _, _ in queued(storage, "alice")] == alice[599:]
    assert [i for i, _, _ in queued(storage, "bob")] == [bob[0], bob[2]]
    # Deletes together with appends for the same user.
    [new] = run(storage.write_message_queue([("alice", "<message>new</message>", T0, None)], [alice[599], bob[0]]))
    assert [i for i, _, _ in queued(storage, "alice")] == [new]
    assert [i for i, _, _ in queued(storage, "bob")] == [bob[2]]
    assert run(storage.write_message_queue([], [])) == []


def test_queue_batch_is_atomic(storage, monkeypatch):
    """A batch that fails after all of its statements ran leaves nothing: no insert, no delete."""
    from xmppd.storage import sql

    run(storage.create_user("alice", {}))
    [kept] = run(storage.write_message_queue([("alice", "<message>kept</message>", T0, None)], []))
    original = sql._write_message_queue

    def _write_message_queue(*args):
        yield from original(*args)
        raise StorageError("boom")

    _write_message_queue.atomic = sql.is_atomic(original)  # the test is of the real script's marking

    monkeypatch.setattr(sql, "_write_message_queue", _write_message_queue)
    with pytest.raises(StorageError, match="boom"):
        run(storage.write_message_queue([("alice", f"<message>{i}</message>", T0, 5) for i in range(300)], [kept]))
    assert queued(storage, "alice") == [(kept, "<message>kept</message>", T0)]
    monkeypatch.undo()
    # The failed call used no quota and the next one goes through.
    assert None not in run(storage.write_message_queue([("alice", f"<message>{i}</message>", T0, 5) for i in range(4)], [kept]))
    assert run(storage.count_offline("alice")) == 4


def test_queue_timestamps_round_trip(storage):
    run(storage.create_user("alice", {}))
    moments = [
        T0,
        datetime.datetime(2024, 5, 6, 9, 8, 9, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),  # 07:08:09.000001Z
        datetime.datetime(2031, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    ]
    run(storage.write_message_queue([("alice", f"<message>{i}</message>", at, None) for i, at in enumerate(moments)], []))
    got = [at for _, _, at in queued(storage, "alice")]
    assert got == moments
    assert all(at.utcoffset() == datetime.timedelta(0) for at in got)
    assert got[1].tzinfo == UTC and got[1].microsecond == 1 and got[1].hour == 7
    # The stored text sorts as time does (SQLite stores text, PostgreSQL a timestamptz).
    assert [i for (i,) in raw(storage, "SELECT id FROM offline_messages ORDER BY stored_at, id")] == [
        i for i, _, _ in sorted(queued(storage, "alice"), key=lambda row: (row[2], row[0]))
    ]
    with pytest.raises(ValueError, match="aware"):
        run(storage.write_message_queue([("alice", "<message/>", datetime.datetime(2024, 1, 1), None)], []))
    # Rows written by older versions (stored_at from the database's clock, to the second) read back as UTC too.
    message_id = run(storage._run(_legacy_row, "alice", "<message>old</message>"))
    [(row_id, _, at)] = queued(storage, "alice", after=max(i for i, _, _ in queued(storage, "alice")) - 1)[-1:]
    assert row_id == message_id and at.tzinfo is not None
    assert abs(datetime.datetime.now(UTC) - at) < datetime.timedelta(minutes=5)


def test_list_queued_after_and_limit(storage):
    run(storage.create_user("alice", {}))
    run(storage.create_user("bob", {}))
    ids = run(storage.write_message_queue([(u, f"<message>{u}{i}</message>", T0, None) for i in range(5) for u in ("alice", "bob")], []))
    alice = ids[0::2]
    assert [i for i, _, _ in queued(storage, "alice")] == alice
    assert [i for i, _, _ in queued(storage, "alice", after=alice[1])] == alice[2:]
    assert [i for i, _, _ in queued(storage, "alice", after=alice[1] + 1, limit=2)] == alice[2:4]
    assert queued(storage, "alice", limit=0) == []
    assert queued(storage, "alice", after=alice[-1]) == []
    assert queued(storage, "ghost") == []
    with pytest.raises(ValueError):
        queued(storage, "alice", limit=-1)


def test_queue_concurrent_batches_keep_the_quota(storage):
    """Several calls at once (PostgreSQL runs them on separate connections): the quota holds, ids follow commits."""

    async def scenario():
        await storage.create_user("alice", {})
        await storage.create_user("bob", {})
        results = await asyncio.gather(*(
            storage.write_message_queue(
                [("alice", f"<message>{n}.{i}</message>", T0, 25) for i in range(10)]
                + [("bob", f"<message>{n}.{i}</message>", T0, None) for i in range(3)],
                [],
            )
            for n in range(8)
        ))
        accepted = [i for ids in results for i in ids[:10] if i is not None]
        assert len(accepted) == 25
        assert all(None not in ids[10:] for ids in results)
        assert [i for i, _, _ in await storage.list_queued("alice")] == sorted(accepted)
        assert await storage.count_offline("bob") == 24

    run(scenario())


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "America/Adak"])
def test_queue_timestamps_ignore_the_postgresql_session_zone(tmp_path, zone):
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    async def scenario():
        config, remove = await backend_config("postgresql", tmp_path)
        options = conninfo_to_dict(config["postgresql_dsn"])["options"]
        config["postgresql_dsn"] = make_conninfo(config["postgresql_dsn"], options=f"{options} -ctimezone={zone}")
        try:
            store = await open_storage("postgresql", **config)
            try:
                await store.create_user("alice", {})
                await store.write_message_queue([("alice", "<message/>", T0, None)], [])
                [(_, _, at)] = await store.list_queued("alice")
                assert at == T0 and at.tzinfo == UTC
                [(text,)] = await store._run(_stored_at_text)
                assert text.startswith("2024-05-06 07:08:09.123456")  # as stored, read in UTC
            finally:
                await store.close()
        finally:
            await remove()

    asyncio.run(scenario())


def _stored_at_text():
    return (yield select("SELECT to_char(stored_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM offline_messages"))


# -- vcard-temp and settings -----------------------------------------------------


def test_vcard(storage):
    run(storage.create_user("alice", {}))
    assert run(storage.get_vcard("alice")) is None
    card = "<vCard xmlns='vcard-temp'><FN>Ålice Ünicode 😀</FN></vCard>"
    run(storage.set_vcard("alice", card))
    assert run(storage.get_vcard("alice")) == card
    run(storage.set_vcard("alice", "<vCard xmlns='vcard-temp'/>"))
    assert run(storage.get_vcard("alice")) == "<vCard xmlns='vcard-temp'/>"
    run(storage.set_vcard("alice", None))
    assert run(storage.get_vcard("alice")) is None
    run(storage.set_vcard("alice", None))
    with pytest.raises(StorageError, match="no such user"):
        run(storage.set_vcard("ghost", card))


def test_settings(storage):
    assert run(storage.get_setting("secret")) is None
    assert run(storage.set_setting_if_absent("secret", "first")) == "first"
    assert run(storage.set_setting_if_absent("secret", "second")) == "first"
    assert run(storage.get_setting("secret")) == "first"
    run(storage.set_setting("secret", "third"))
    assert run(storage.get_setting("secret")) == "third"
    run(storage.set_setting("other", ""))
    assert run(storage.get_setting("other")) == ""


# -- concurrency ------------------------------------------------------------------


def test_concurrent_calls(storage):
    async def scenario():
        created = await asyncio.gather(*(storage.create_user("alice", {"SCRAM-SHA-1": SHA1}) for _ in range(20)))
        assert created.count(True) == 1
        versions = await asyncio.gather(
            *(storage.set_roster_item("alice", RosterItem(f"c{i:03}@example.org", groups=[f"g{i % 3}"])) for i in range(60)),
            *(storage.get_roster("alice") for _ in range(20)),
            *(storage.add_pending_subscription("alice", f"p{i}@example.org", "<presence/>") for i in range(20)),
        )
        assert sorted(versions[:60]) == list(range(1, 61))
        for version, items in versions[60:80]:
            assert len(items) <= version  # a snapshot: never more items than changes so far
        secrets = await asyncio.gather(*(storage.set_setting_if_absent("secret", f"s{i}") for i in range(20)))
        assert len(set(secrets)) == 1
        deleted = await asyncio.gather(*(storage.delete_roster_item("alice", f"c{i:03}@example.org") for i in range(0, 60, 2)))
        assert sorted(deleted) == list(range(61, 91))
        version, items = await storage.get_roster("alice")
        assert version == 90 and len(items) == 30
        assert len(await storage.list_pending_subscriptions("alice")) == 20

    run(scenario())


# -- XEP-0357 push registrations (push_xep0357.py) ---------------------------------


def minutes(n: float) -> datetime.timedelta:
    return datetime.timedelta(minutes=n)


OPTIONS = "<x xmlns='jabber:x:data' type='submit'><field var='secret'><value>s</value></field></x>"


def keys(registrations):
    return [(r.jid, r.node) for r in registrations]


def test_push_enable_and_list(storage):
    run(storage.create_user("alice", {}))
    run(storage.create_user("bob", {}))
    assert run(storage.push_registrations("alice")) == []
    assert run(storage.push_enable("alice", "push.example.org", "n1", OPTIONS, T0, 5)) == []
    assert run(storage.push_enable("alice", "push.example.org", "n2", None, T0 + minutes(1), 5)) == []
    assert run(storage.push_enable("alice", "other.example.org", "n1", None, T0 + minutes(2), 5)) == []
    assert run(storage.push_enable("bob", "push.example.org", "n1", None, T0, 5)) == []
    [first, second, third] = run(storage.push_registrations("alice"))
    assert first == PushRegistration("alice", "push.example.org", "n1", OPTIONS, T0, None, 0)
    assert keys([second, third]) == [("push.example.org", "n2"), ("other.example.org", "n1")]
    assert second.options_xml is None and second.created_at == T0 + minutes(1)
    assert run(storage.count_push_registrations()) == 4
    # Stored UTC with microseconds, whatever zone the caller used.
    zone = datetime.timezone(datetime.timedelta(hours=-7))
    run(storage.push_enable("bob", "push.example.org", "n2", None, T0.astimezone(zone), 5))
    assert run(storage.push_registrations("bob"))[1].created_at == T0
    assert run(storage.push_registrations("bob"))[1].created_at.utcoffset() == datetime.timedelta(0)


def test_push_enable_replaces_options_and_resets(storage):
    run(storage.create_user("alice", {}))
    run(storage.push_enable("alice", "push.example.org", "n1", OPTIONS, T0, 5))
    run(storage.push_enable("alice", "push.example.org", "n2", None, T0 + minutes(1), 5))
    run(storage.push_record_success("alice", "push.example.org", "n1", T0 + minutes(2)))
    assert run(storage.push_record_failure("alice", "push.example.org", "n1")) == 1
    assert run(storage.push_record_failure("alice", "push.example.org", "n1")) == 2
    assert run(storage.push_enable("alice", "push.example.org", "n1", None, T0 + minutes(3), 5)) == []
    [n2, n1] = run(storage.push_registrations("alice"))  # re-enabled: now the newest
    assert n1 == PushRegistration("alice", "push.example.org", "n1", None, T0 + minutes(3), T0 + minutes(2), 0)
    assert n2.node == "n2"


def test_push_enable_drops_the_least_recently_used(storage):
    run(storage.create_user("alice", {}))
    for i in range(3):
        assert run(storage.push_enable("alice", "push.example.org", f"n{i}", None, T0 + minutes(i), 3)) == []
    # n0 is the oldest but was used most recently: n1 goes.
    run(storage.push_record_success("alice", "push.example.org", "n0", T0 + minutes(10)))
    dropped = run(storage.push_enable("alice", "push.example.org", "n3", None, T0 + minutes(11), 3))
    assert keys(dropped) == [("push.example.org", "n1")]
    assert dropped[0].created_at == T0 + minutes(1)
    assert keys(run(storage.push_registrations("alice"))) == [
        ("push.example.org", "n0"), ("push.example.org", "n2"), ("push.example.org", "n3")]
    # A smaller limit drops several at once; the one being enabled always stays, even with a clock
    # that went backwards.
    dropped = run(storage.push_enable("alice", "push.example.org", "n4", None, T0 - minutes(60), 2))
    assert sorted(keys(dropped)) == [("push.example.org", "n0"), ("push.example.org", "n2")]
    assert keys(run(storage.push_registrations("alice"))) == [("push.example.org", "n4"), ("push.example.org", "n3")]
    with pytest.raises(ValueError):
        run(storage.push_enable("alice", "push.example.org", "n5", None, T0, 0))
    with pytest.raises(ValueError):
        run(storage.push_enable("alice", "push.example.org", "n5", None, T0.replace(tzinfo=None), 5))


def test_push_enable_needs_the_user(storage):
    with pytest.raises(StorageError, match="no such user 'nobody'"):
        run(storage.push_enable("nobody", "push.example.org", "n1", None, T0, 5))
    assert run(storage.count_push_registrations()) == 0


def test_push_enable_concurrent_keeps_the_limit(storage):
    run(storage.create_user("alice", {}))

    async def scenario():
        results = await asyncio.gather(
            *(storage.push_enable("alice", "push.example.org", f"n{i:02}", None, T0 + minutes(i), 3) for i in range(20))
        )
        dropped = [r.node for result in results for r in result]
        left = [r.node for r in await storage.push_registrations("alice")]
        assert len(left) == 3
        assert sorted(dropped + left) == [f"n{i:02}" for i in range(20)]

    run(scenario())


def test_push_disable(storage):
    run(storage.create_user("alice", {}))
    run(storage.push_enable("alice", "push.example.org", "n1", OPTIONS, T0, 5))
    run(storage.push_enable("alice", "push.example.org", "n2", None, T0 + minutes(1), 5))
    run(storage.push_enable("alice", "other.example.org", "n1", None, T0 + minutes(2), 5))
    assert run(storage.push_disable("alice", "push.example.org", "nope")) == []
    [removed] = run(storage.push_disable("alice", "push.example.org", "n1"))
    assert removed == PushRegistration("alice", "push.example.org", "n1", OPTIONS, T0, None, 0)
    run(storage.push_enable("alice", "push.example.org", "n3", None, T0 + minutes(3), 5))
    assert keys(run(storage.push_disable("alice", "push.example.org", None))) == [
        ("push.example.org", "n2"), ("push.example.org", "n3")]
    assert keys(run(storage.push_registrations("alice"))) == [("other.example.org", "n1")]
    assert run(storage.push_disable("bob", "other.example.org", None)) == []


def test_push_strikes(storage):
    run(storage.create_user("alice", {}))
    run(storage.push_enable("alice", "push.example.org", "n1", None, T0, 5))
    assert [run(storage.push_record_failure("alice", "push.example.org", "n1")) for _ in range(3)] == [1, 2, 3]
    run(storage.push_record_success("alice", "push.example.org", "n1", T0 + minutes(5)))
    [r] = run(storage.push_registrations("alice"))
    assert (r.strikes, r.last_success_at) == (0, T0 + minutes(5))
    assert run(storage.push_record_failure("alice", "push.example.org", "n1")) == 1
    # Gone: nothing to count, nothing to record.
    assert run(storage.push_record_failure("alice", "push.example.org", "gone")) == 0
    run(storage.push_record_success("alice", "push.example.org", "gone", T0))
    assert run(storage.count_push_registrations()) == 1


def test_push_expire(storage):
    for user in ("alice", "bob"):
        run(storage.create_user(user, {}))
    run(storage.push_enable("alice", "push.example.org", "old", None, T0, 5))
    run(storage.push_enable("alice", "push.example.org", "used", None, T0, 5))
    run(storage.push_record_success("alice", "push.example.org", "used", T0 + minutes(100)))
    run(storage.push_enable("bob", "push.example.org", "new", None, T0 + minutes(90), 5))
    run(storage.push_enable("bob", "push.example.org", "old", None, T0 + minutes(10), 5))
    expired = run(storage.push_expire(T0 + minutes(60)))
    assert [(r.username, r.node) for r in expired] == [("alice", "old"), ("bob", "old")]
    assert run(storage.push_expire(T0 + minutes(60))) == []
    assert [r.node for r in run(storage.push_registrations("alice"))] == ["used"]
    assert [r.node for r in run(storage.push_registrations("bob"))] == ["new"]
    assert run(storage.count_push_registrations()) == 2


def test_push_registrations_go_with_the_account(storage):
    for user in ("alice", "bob"):
        run(storage.create_user(user, {}))
        run(storage.push_enable(user, "push.example.org", "n1", OPTIONS, T0, 5))
    assert run(storage.delete_user("alice")) is True
    assert raw(storage, "SELECT username FROM push_registrations") == [("bob",)]
    run(storage.create_user("alice", {}))
    assert run(storage.push_registrations("alice")) == []


# -- the push app server's devices (xmppd/appserver) -----------------------------------


def p2(node, owner="alice@example.org", device="dev1", token="tok1", app="conversations", muc=None, secret="s3cr3t"):
    return AppServerRegistration(node, app, token, owner, secret, device, muc)


def nodes(registrations):
    return [r.node for r in registrations]


def test_appserver_register_and_find(storage):
    stored, dropped = run(storage.appserver_register(p2("n1"), T0, 10))
    assert dropped == []
    assert stored == AppServerRegistration("n1", "conversations", "tok1", "alice@example.org", "s3cr3t", "dev1", None,
                                           T0, T0, None)
    assert stored.style == "p2"
    assert run(storage.appserver_registration("n1")) == stored
    assert run(storage.appserver_registration("nope")) is None
    # The same device again (a new token): node, secret and created_at stay, so the client's
    # <enable/> stays valid.
    again, _ = run(storage.appserver_register(p2("n2", token="tok2", secret="other"), T0 + minutes(1), 10))
    assert (again.node, again.secret, again.token, again.created_at, again.updated_at) == (
        "n1", "s3cr3t", "tok2", T0, T0 + minutes(1))
    assert run(storage.appserver_registration("n2")) is None
    # A room, another device, another app, another owner: each its own registration.
    run(storage.appserver_register(p2("room", muc="room@muc.example.org"), T0, 10))
    run(storage.appserver_register(p2("dev2", device="dev2"), T0, 10))
    run(storage.appserver_register(p2("apns", app="siskin"), T0, 10))
    run(storage.appserver_register(p2("bob", owner="bob@example.org"), T0, 10))
    assert run(storage.appserver_registration("room")).muc == "room@muc.example.org"
    assert nodes(run(storage.appserver_registrations("alice@example.org"))) == ["apns", "dev2", "n1", "room"]
    assert nodes(run(storage.appserver_registrations())) == ["apns", "dev2", "n1", "room", "bob"]
    assert run(storage.count_appserver_registrations()) == {"conversations": 4, "siskin": 1}
    with pytest.raises(ValueError):
        run(storage.appserver_register(p2("x", secret=None), T0, 10))


def test_appserver_register_limits_each_owner(storage):
    for i in range(3):
        run(storage.appserver_register(p2(f"n{i}", device=f"d{i}"), T0 + minutes(i), 3))
    run(storage.appserver_touch("n0", T0 + minutes(10)))  # used lately: n1 is the least recently used
    stored, dropped = run(storage.appserver_register(p2("n3", device="d3"), T0 + minutes(11), 3))
    assert stored.node == "n3" and nodes(dropped) == ["n1"]
    assert nodes(run(storage.appserver_registrations("alice@example.org"))) == ["n0", "n2", "n3"]
    # Monal-style rows of the owner do not count against it.
    run(storage.appserver_seen("monaltoken", "monal", "alice@example.org", T0))
    _, dropped = run(storage.appserver_register(p2("n4", device="d2", token="new"), T0 + minutes(12), 3))
    assert dropped == []


def test_appserver_unregister(storage):
    run(storage.appserver_register(p2("n1"), T0, 10))
    run(storage.appserver_register(p2("room1", muc="r1@muc.example.org"), T0, 10))
    run(storage.appserver_register(p2("room2", muc="r2@muc.example.org"), T0, 10))
    run(storage.appserver_register(p2("other", device="dev2"), T0, 10))
    run(storage.appserver_register(p2("apns", app="siskin"), T0, 10))
    assert run(storage.appserver_unregister("conversations", "alice@example.org", "nope", None)) == []
    assert nodes(run(storage.appserver_unregister("conversations", "alice@example.org", "dev1",
                                                  "r1@muc.example.org"))) == ["room1"]
    assert nodes(run(storage.appserver_unregister("conversations", "alice@example.org", "dev1", None))) == [
        "n1", "room2"]
    assert nodes(run(storage.appserver_registrations())) == ["apns", "other"]
    run(storage.appserver_register(p2("bob", owner="bob@example.org"), T0, 10))
    run(storage.appserver_seen("monal", "monal", "alice@example.org", T0))
    assert nodes(run(storage.appserver_delete_owner("alice@example.org"))) == ["apns", "monal", "other"]
    assert nodes(run(storage.appserver_registrations())) == ["bob"]
    assert run(storage.appserver_delete_owner("alice@example.org")) == []


def test_appserver_remove_only_the_dead_token(storage):
    run(storage.appserver_register(p2("n1", token="old"), T0, 10))
    run(storage.appserver_register(p2("n1", token="new"), T0 + minutes(1), 10))  # re-registered meanwhile
    assert run(storage.appserver_remove("n1", "old")) is False
    assert run(storage.appserver_registration("n1")).token == "new"
    assert run(storage.appserver_remove("n1", "new")) is True
    assert run(storage.appserver_registration("n1")) is None
    assert run(storage.appserver_remove("n1", "new")) is False


def test_appserver_monal_style_rows(storage):
    run(storage.appserver_seen("ab" * 32, "monal", "alice@example.org", T0))
    row = run(storage.appserver_registration("ab" * 32))
    assert row == AppServerRegistration("ab" * 32, "monal", "ab" * 32, "alice@example.org", None, None, None,
                                        T0, T0, T0)
    assert row.style == "module"
    run(storage.appserver_seen("ab" * 32, "monal2", "bob@example.org", T0 + minutes(5)))
    row = run(storage.appserver_registration("ab" * 32))
    assert (row.app, row.owner, row.created_at, row.last_used_at) == ("monal2", "alice@example.org", T0, T0 + minutes(5))
    # A p2 registration's node is never turned into a secretless one.
    run(storage.appserver_register(p2("n1"), T0, 10))
    run(storage.appserver_seen("n1", "monal", "mallory@example.org", T0 + minutes(6)))
    assert run(storage.appserver_registration("n1")) == AppServerRegistration(
        "n1", "conversations", "tok1", "alice@example.org", "s3cr3t", "dev1", None, T0, T0, None)


def test_appserver_touch_and_expire(storage):
    run(storage.appserver_register(p2("old", device="d1"), T0, 10))
    run(storage.appserver_register(p2("used", device="d2"), T0, 10))
    run(storage.appserver_touch("used", T0 + minutes(100)))
    run(storage.appserver_register(p2("renewed", device="d3", token="a"), T0, 10))
    run(storage.appserver_register(p2("renewed", device="d3", token="b"), T0 + minutes(90), 10))
    run(storage.appserver_seen("monal-old", "monal", "bob@example.org", T0))
    run(storage.appserver_touch("nope", T0))
    assert run(storage.appserver_registration("used")).last_used_at == T0 + minutes(100)
    assert nodes(run(storage.appserver_expire(T0 + minutes(60)))) == ["old", "monal-old"]
    assert nodes(run(storage.appserver_registrations())) == ["renewed", "used"]
    assert run(storage.appserver_expire(T0 + minutes(60))) == []
    assert run(storage.count_appserver_registrations()) == {"conversations": 2}


PUSH_MIGRATION = 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_push_migration_upgrades_an_existing_database(backend, tmp_path, monkeypatch):
    """A database of schema 2 gets the push tables on the next open; accounts from before are covered
    by the cascade."""

    async def scenario():
        config, remove = await backend_config(backend, tmp_path)
        try:
            with monkeypatch.context() as m:
                m.setattr(migrations, "MIGRATIONS", [mg for mg in MIGRATIONS if mg.version < PUSH_MIGRATION])
                old = await open_storage(backend, **config)
                try:
                    await old.create_user("alice", {"SCRAM-SHA-256": SHA256})
                    await old.write_message_queue([("alice", "<message/>", T0, None)], [])
                    with pytest.raises(StorageError):
                        await old.push_registrations("alice")
                finally:
                    await old.close()
            new = await open_storage(backend, **config)
            try:
                assert [v for (v,) in await new._run(_versions)] == [m.version for m in MIGRATIONS]
                assert len(await new.list_queued("alice")) == 1
                await new.push_enable("alice", "push.example.org", "n1", None, T0, 5)
                await new.appserver_register(p2("n1"), T0, 10)
                assert await new.delete_user("alice") is True
                assert await new.count_push_registrations() == 0
                assert await new.count_appserver_registrations() == {"conversations": 1}  # not an account's
            finally:
                await new.close()
        finally:
            await remove()

    asyncio.run(scenario())


# -- opening, migrations, durability ----------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_reopen_keeps_data_and_schema(backend, tmp_path):
    async def scenario():
        config, remove = await backend_config(backend, tmp_path)
        try:
            first = await open_storage(backend, **config)
            await first.create_user("alice", {"SCRAM-SHA-256": SHA256})
            assert await first.set_roster_item("alice", RosterItem("bob@example.org", groups=["G"])) == 1
            await first.close()
            # Two processes starting at once: both open, the schema is migrated once.
            second, third = await asyncio.gather(open_storage(backend, **config), open_storage(backend, **config))
            try:
                assert await second.get_credentials("alice", "SCRAM-SHA-256") == SHA256
                assert await third.set_roster_item("alice", RosterItem("carol@example.org")) == 2
                assert [v for (v,) in await second._run(_versions)] == [m.version for m in MIGRATIONS]
            finally:
                await second.close()
                await third.close()
        finally:
            await remove()

    asyncio.run(scenario())


def _versions():
    return (yield select("SELECT version FROM schema_version ORDER BY version"))


OFFLINE_MIGRATION = 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_offline_migration_upgrades_an_existing_database(backend, tmp_path, monkeypatch):
    """A database made by the previous schema version gets the offline table on the next open, data intact."""

    async def scenario():
        config, remove = await backend_config(backend, tmp_path)
        try:
            with monkeypatch.context() as m:
                m.setattr(migrations, "MIGRATIONS", [mg for mg in MIGRATIONS if mg.version < OFFLINE_MIGRATION])
                old = await open_storage(backend, **config)
                try:
                    await old.create_user("alice", {"SCRAM-SHA-256": SHA256})
                    await old.create_user("bob", {})
                    assert await old.set_roster_item("alice", RosterItem("bob@example.org", groups=["G"])) == 1
                    await old.add_pending_subscription("alice", "carol@example.org", SUBSCRIBE.format("carol@example.org"))
                    assert [v for (v,) in await old._run(_versions)] == [OFFLINE_MIGRATION - 1]
                    with pytest.raises(StorageError):
                        await old.count_offline("alice")
                finally:
                    await old.close()
            # Both at once, as two processes starting together would: one migrates, the other waits.
            new, other = await asyncio.gather(open_storage(backend, **config), open_storage(backend, **config))
            try:
                assert [v for (v,) in await new._run(_versions)] == [m.version for m in MIGRATIONS]
                assert await new.get_credentials("alice", "SCRAM-SHA-256") == SHA256
                assert (await new.get_roster("alice"))[1] == [RosterItem("bob@example.org", groups=["G"])]
                assert [j for j, _ in await new.list_pending_subscriptions("alice")] == ["carol@example.org"]
                [first] = await new.write_message_queue([("alice", "<message>1</message>", T0, 2)], [])
                [second] = await other.write_message_queue([("alice", "<message>2</message>", T0, 2)], [])
                assert await new.write_message_queue([("alice", "<message>3</message>", T0, 2)], []) == [None]
                assert await other.list_queued("alice") == [
                    (first, "<message>1</message>", T0),
                    (second, "<message>2</message>", T0),
                ]
                assert await new.write_message_queue([("bob", "<message/>", T0, 2)], []) != [None]
                # Accounts from before the migration are covered by its cascade too.
                assert await new.delete_user("alice") is True
                assert await new._run(_offline_users) == [("bob",)]
            finally:
                await new.close()
                await other.close()
        finally:
            await remove()

    asyncio.run(scenario())


def _offline_users():
    return (yield select("SELECT username FROM offline_messages ORDER BY username"))


def test_offline_timestamps_are_utc(storage):
    run(storage.create_user("alice", {}))
    run(storage._run(_legacy_row, "alice", "<message/>"))
    # Rows written by older versions: the database's clock is this machine's, a stamp in
    # another zone would be hours off.
    [(stored_at,)] = raw(storage, "SELECT stored_at FROM offline_messages")
    if isinstance(stored_at, str):  # SQLite: UTC as 'YYYY-MM-DD HH:MM:SS'
        stored_at = datetime.datetime.fromisoformat(stored_at).replace(tzinfo=datetime.timezone.utc)
    assert abs(datetime.datetime.now(datetime.timezone.utc) - stored_at) < datetime.timedelta(minutes=5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_newer_schema_is_refused(backend, tmp_path):
    async def scenario():
        config, remove = await backend_config(backend, tmp_path)
        try:
            store = await open_storage(backend, **config)

            def from_the_future():
                yield execute("INSERT INTO schema_version (version) VALUES (?)", 9999)

            await store._run(from_the_future)
            await store.close()
            with pytest.raises(StorageError, match="schema is version 9999, newer"):
                await open_storage(backend, **config)
        finally:
            await remove()

    asyncio.run(scenario())


def _bad_config(backend, tmp_path):
    if backend == "sqlite":
        path = str(tmp_path / "no-such-directory" / "xmppd.sqlite")
        return {"sqlite_path": path}, [path]
    return {"postgresql_dsn": "postgresql://postgres:s3cr3t-pw@127.0.0.1:1/test"}, ["host=127.0.0.1", "port=1"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_open_failure_is_explained(backend, tmp_path):
    config, expected = _bad_config(backend, tmp_path)
    with pytest.raises(StorageError) as failure:
        asyncio.run(open_storage(backend, **config))
    message = str(failure.value)
    for part in expected:
        assert part in message
    assert "s3cr3t" not in message


def test_open_failure_sqlite_path_is_directory(tmp_path):
    with pytest.raises(StorageError, match=str(tmp_path)):
        asyncio.run(open_storage("sqlite", sqlite_path=str(tmp_path)))


def test_open_failure_bad_configuration():
    with pytest.raises(StorageError, match="unknown storage backend 'mysql'"):
        asyncio.run(open_storage("mysql"))
    with pytest.raises(StorageError, match="needs a database path"):
        asyncio.run(open_storage("sqlite"))
    with pytest.raises(StorageError, match="needs a DSN"):
        asyncio.run(open_storage("postgresql"))
    with pytest.raises(StorageError) as failure:
        asyncio.run(open_storage("postgresql", postgresql_dsn="host=x password=hunter2 garbage"))
    assert "hunter2" not in str(failure.value) and "garbage" not in str(failure.value)


def test_calls_after_close_fail(storage):
    run(storage.close())
    with pytest.raises(StorageError, match="after close"):
        run(storage.user_exists("alice"))
    run(storage.close())  # closing twice is harmless


_WRITER = """
import asyncio, json, sys, time
from xmppd.storage import RosterItem, open_storage

async def main():
    store = await open_storage(sys.argv[1], **json.loads(sys.argv[2]))
    await store.create_user("alice", {})
    for i in range(20):
        version = await store.set_roster_item("alice", RosterItem(f"c{i}@example.org"))
        print(version, flush=True)
    time.sleep(60)  # killed here, without close()

asyncio.run(main())
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_acknowledged_writes_survive_sigkill(backend, tmp_path):
    async def prepare():
        return await backend_config(backend, tmp_path)

    config, remove = asyncio.run(prepare())
    try:
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, backend, json.dumps(config)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        try:
            acknowledged = [int(writer.stdout.readline()) for _ in range(20)]
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            writer.stdout.close()
        assert acknowledged[-1] == 20

        async def check():
            store = await open_storage(backend, **config)
            try:
                return await store.get_roster("alice")
            finally:
                await store.close()

        version, items = asyncio.run(check())
        assert version == 20 and len(items) == 20
    finally:
        asyncio.run(remove())

