"""PEP nodes and items and private XML in storage, on both backends."""

from __future__ import annotations

import datetime

import pytest

from xmppd.storage import StorageError
from xmppd.storage.models import PepItem

from .storage_fixtures import run, storage  # noqa: F401

T0 = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc)


def item(item_id: str, text: str = "x") -> PepItem:
    return PepItem(item_id, f"<p xmlns='urn:example'>{text}</p>", "alice@example.org/phone", T0)


def ids(items) -> list[str]:
    return [i.item_id for i in items]


def test_publish_creates_the_node_and_replaces_by_id(storage):
    run(storage.create_user("alice", {}))
    assert run(storage.pep_publish("alice", "urn:example", '{"a": 1}', item("1"), 10)) is True
    assert run(storage.pep_publish("alice", "urn:example", '{"other": 2}', item("2"), 10)) is False
    assert run(storage.pep_nodes("alice")) == {"urn:example": '{"a": 1}'}   # the node kept its config
    run(storage.pep_publish("alice", "urn:example", "{}", item("1", "new"), 10))
    items = run(storage.pep_items("alice", "urn:example"))
    assert ids(items) == ["2", "1"]                        # the re-published one is the newest
    assert items[1].payload.endswith(">new</p>")
    assert items[1].published_at == T0 and items[1].publisher == "alice@example.org/phone"


def test_max_items_keeps_the_newest(storage):
    run(storage.create_user("alice", {}))
    for n in range(5):
        run(storage.pep_publish("alice", "n", "{}", item(str(n)), 3))
    assert ids(run(storage.pep_items("alice", "n"))) == ["2", "3", "4"]
    assert ids(run(storage.pep_items("alice", "n", newest=1))) == ["4"]
    assert ids(run(storage.pep_items("alice", "n", item_ids=["4", "2", "9"]))) == ["2", "4"]
    assert run(storage.pep_items("alice", "n", item_ids=[])) == []
    assert run(storage.pep_configure_node("alice", "n", '{"max": 1}', 1)) is True
    assert ids(run(storage.pep_items("alice", "n"))) == ["4"]
    assert run(storage.pep_configure_node("alice", "none", "{}", 1)) is False
    with pytest.raises(ValueError):
        run(storage.pep_publish("alice", "n", "{}", item("x"), 0))


def test_retract_purge_delete(storage):
    run(storage.create_user("alice", {}))
    run(storage.create_user("bob", {}))
    for n in range(3):
        run(storage.pep_publish("alice", "n", "{}", item(str(n)), 10))
    run(storage.pep_publish("bob", "n", "{}", item("b"), 10))
    assert run(storage.pep_retract("alice", "n", "1")) is True
    assert run(storage.pep_retract("alice", "n", "1")) is False
    assert ids(run(storage.pep_items("alice", "n"))) == ["0", "2"]
    assert run(storage.pep_purge("alice", "n")) == 2
    assert run(storage.pep_items("alice", "n")) == []
    assert run(storage.pep_create_node("alice", "n", "{}")) is False
    assert run(storage.pep_delete_node("alice", "n")) is True
    assert run(storage.pep_delete_node("alice", "n")) is False
    assert ids(run(storage.pep_items("bob", "n"))) == ["b"]     # another account's node is untouched


def test_unknown_user_and_account_deletion(storage):
    with pytest.raises(StorageError, match="no such user"):
        run(storage.pep_publish("nobody", "n", "{}", item("1"), 10))
    with pytest.raises(StorageError, match="no such user"):
        run(storage.set_private_xml("nobody", "storage:bookmarks", "<storage/>"))
    run(storage.create_user("alice", {}))
    run(storage.pep_publish("alice", "n", "{}", item("1"), 10))
    run(storage.set_private_xml("alice", "storage:bookmarks", "<storage xmlns='storage:bookmarks'/>"))
    run(storage.delete_user("alice"))
    run(storage.create_user("alice", {}))
    assert run(storage.pep_nodes("alice")) == {}
    assert run(storage.pep_items("alice", "n")) == []
    assert run(storage.get_private_xml("alice", "storage:bookmarks")) is None


def test_private_xml(storage):
    run(storage.create_user("alice", {}))
    assert run(storage.get_private_xml("alice", "storage:bookmarks")) is None
    run(storage.set_private_xml("alice", "storage:bookmarks", "<a/>"))
    run(storage.set_private_xml("alice", "storage:bookmarks", "<b/>"))
    run(storage.set_private_xml("alice", "urn:other", "<c/>"))
    assert run(storage.get_private_xml("alice", "storage:bookmarks")) == "<b/>"
    run(storage.set_private_xml("alice", "storage:bookmarks", None))
    assert run(storage.get_private_xml("alice", "storage:bookmarks")) is None
    assert run(storage.get_private_xml("alice", "urn:other")) == "<c/>"


def test_find_nodes_of_many_accounts(storage):
    users = [f"user{n}" for n in range(600)]        # more than one IN list's worth
    for name in users:
        run(storage.create_user(name, {}))
    run(storage.pep_create_node("user1", "urn:a", '{"a": 1}'))
    run(storage.pep_create_node("user1", "urn:b", "{}"))
    run(storage.pep_create_node("user599", "urn:a", "{}"))
    run(storage.pep_create_node("user2", "urn:c", "{}"))
    assert run(storage.pep_find_nodes(users, ["urn:a", "urn:b"])) == [
        ("user1", "urn:a", '{"a": 1}'), ("user1", "urn:b", "{}"), ("user599", "urn:a", "{}")]
    assert run(storage.pep_find_nodes(users, [])) == []
    assert run(storage.pep_find_nodes(["nobody"], ["urn:a"])) == []
