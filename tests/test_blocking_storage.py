"""XEP-0191 block lists in storage, on both backends."""

from __future__ import annotations

import pytest

from xmppd.storage import StorageError

from .storage_fixtures import run, storage  # noqa: F401


def test_block_unblock_and_list(storage):
    run(storage.create_user("alice", {}))
    run(storage.create_user("bob", {}))
    assert run(storage.get_blocklist("alice")) == []
    assert run(storage.block_jids("alice", ["romeo@example.net", "iago@example.org", "évil.example"], 10)) == [
        "iago@example.org", "romeo@example.net", "évil.example"]
    # Blocking again what is there is fine and reports only what is new.
    assert run(storage.block_jids("alice", ["romeo@example.net", "x.example/res"], 10)) == ["x.example/res"]
    assert run(storage.get_blocklist("alice")) == sorted(
        ["iago@example.org", "romeo@example.net", "évil.example", "x.example/res"])
    assert run(storage.get_blocklist("bob")) == []
    assert run(storage.unblock_jids("alice", ["romeo@example.net", "never@blocked.example"])) == ["romeo@example.net"]
    assert run(storage.unblock_jids("alice", None)) == sorted(["iago@example.org", "évil.example", "x.example/res"])
    assert run(storage.get_blocklist("alice")) == []
    assert run(storage.unblock_jids("alice", None)) == []


def test_block_list_limit_changes_nothing(storage):
    run(storage.create_user("alice", {}))
    assert run(storage.block_jids("alice", ["a@x.example", "b@x.example"], 3)) == ["a@x.example", "b@x.example"]
    assert run(storage.block_jids("alice", ["c@x.example", "d@x.example"], 3)) is None
    assert run(storage.get_blocklist("alice")) == ["a@x.example", "b@x.example"]
    # Items already there do not count twice.
    assert run(storage.block_jids("alice", ["a@x.example", "c@x.example"], 3)) == ["c@x.example"]


def test_block_list_goes_with_the_account(storage):
    run(storage.create_user("alice", {}))
    run(storage.block_jids("alice", ["romeo@example.net"], 10))
    assert run(storage.delete_user("alice")) is True
    run(storage.create_user("alice", {}))
    assert run(storage.get_blocklist("alice")) == []
    with pytest.raises(StorageError):
        run(storage.block_jids("nobody", ["romeo@example.net"], 10))
