"""The message archive's storage calls (XEP-0313), on both backends."""

from __future__ import annotations

import pytest

from xmppd.storage import ArchiveFilter, ArchivePrefs, ArchiveRow, StorageError

from .storage_fixtures import run, storage  # noqa: F401

XML = "<message xmlns='jabber:client' type='chat'><body>{}</body></message>"


def fill(storage, owner: str, count: int, *, first_seq: int = 1000, peers=("bob@x", "carol@x")) -> list[ArchiveRow]:
    rows = [ArchiveRow(first_seq + n, 7000 + n, owner, peers[n % len(peers)], "phone" if n % 4 == 0 else "",
                       XML.format(n)) for n in range(count)]
    assert run(storage.mam_append(rows)) == count
    return rows


def seqs(messages) -> list[int]:
    return [m.seq for m in messages]


def test_append_skips_missing_owners_and_repeated_rows(storage):
    run(storage.create_user("alice", {}))
    rows = fill(storage, "alice", 3)
    ghost = ArchiveRow(5000, 1, "ghost", "bob@x", "", XML.format("lost"))
    # A retried batch (its commit had happened) and a row of a deleted account store nothing new.
    assert run(storage.mam_append([*rows, ghost])) == 0
    assert seqs(run(storage.mam_query("alice", ArchiveFilter(), limit=10))) == [1000, 1001, 1002]
    assert run(storage.mam_last_seq()) == 1002


def test_filters_and_paging(storage):
    run(storage.create_user("alice", {}))
    run(storage.create_user("bob", {}))
    fill(storage, "alice", 10)
    fill(storage, "bob", 5, first_seq=2000)
    query = storage.mam_query
    assert seqs(run(query("alice", ArchiveFilter(), limit=3))) == [1000, 1001, 1002]
    assert seqs(run(query("alice", ArchiveFilter(), limit=3, backwards=True))) == [1009, 1008, 1007]
    assert seqs(run(query("alice", ArchiveFilter(with_bare="bob@x"), limit=10))) == [1000, 1002, 1004, 1006, 1008]
    assert seqs(run(query("alice", ArchiveFilter(with_bare="bob@x", with_resource="phone"), limit=10))) == [
        1000, 1004, 1008]
    assert seqs(run(query("alice", ArchiveFilter(start=1003, end=1005), limit=10))) == [1003, 1004, 1005]
    assert seqs(run(query("alice", ArchiveFilter(after=1007), limit=10))) == [1008, 1009]
    assert seqs(run(query("alice", ArchiveFilter(before=1002), limit=10))) == [1000, 1001]
    assert seqs(run(query("alice", ArchiveFilter(ids=(1009, 1001, 2001)), limit=10))) == [1001, 1009]
    assert seqs(run(query("alice", ArchiveFilter(ids=()), limit=10))) == []
    assert seqs(run(query("alice", ArchiveFilter(), limit=2, offset=8))) == [1008, 1009]
    assert run(storage.mam_count("alice", ArchiveFilter(with_bare="carol@x"))) == 5
    assert run(storage.mam_count("bob", ArchiveFilter())) == 5
    first, last = run(storage.mam_bounds("alice"))
    assert (first.seq, first.tag, last.seq, last.with_jid) == (1000, 7000, 1009, "carol@x")
    assert run(storage.mam_bounds("nobody")) is None


def test_known_ids_must_be_in_this_archive(storage):
    run(storage.create_user("alice", {}))
    run(storage.create_user("bob", {}))
    fill(storage, "alice", 3)
    fill(storage, "bob", 1, first_seq=2000)
    query = storage.mam_query
    assert seqs(run(query("alice", ArchiveFilter(after=1000), limit=5, known=[(1000, 7000)]))) == [1001, 1002]
    assert run(query("alice", ArchiveFilter(), limit=5, known=[(1000, 1)])) is None        # wrong tag: a guess
    assert run(query("alice", ArchiveFilter(), limit=5, known=[(2000, 7000)])) is None     # bob's message


def test_prefs_and_account_deletion(storage):
    assert run(storage.mam_prefs("alice")) == (False, None)
    run(storage.create_user("alice", {}))
    assert run(storage.mam_prefs("alice")) == (True, None)
    prefs = ArchivePrefs("roster", ("romeo@montague.lit",), ("tybalt@capulet.lit", "x@y/z"))
    run(storage.mam_set_prefs("alice", prefs))
    assert run(storage.mam_prefs("alice")) == (True, prefs)
    run(storage.mam_set_prefs("alice", ArchivePrefs("never")))
    assert run(storage.mam_prefs("alice")) == (True, ArchivePrefs("never"))
    with pytest.raises(StorageError):
        run(storage.mam_set_prefs("ghost", ArchivePrefs("always")))
    with pytest.raises(ValueError):
        run(storage.mam_set_prefs("alice", ArchivePrefs("sometimes")))
    fill(storage, "alice", 4)
    assert run(storage.delete_user("alice"))
    assert run(storage.mam_count("alice", ArchiveFilter())) == 0
    assert run(storage.mam_prefs("alice")) == (False, None)


def test_expire_deletes_the_oldest_in_batches(storage):
    run(storage.create_user("alice", {}))
    run(storage.create_user("bob", {}))
    fill(storage, "alice", 6)
    fill(storage, "bob", 6, first_seq=1100)
    assert run(storage.mam_expire(1103, 4)) == 4
    assert run(storage.mam_expire(1103, 4)) == 4
    assert run(storage.mam_expire(1103, 4)) == 1
    assert run(storage.mam_expire(1103, 4)) == 0
    assert seqs(run(storage.mam_query("bob", ArchiveFilter(), limit=10))) == [1103, 1104, 1105]
    assert run(storage.mam_count("alice", ArchiveFilter())) == 0
