"""Storage of XEP-0198 sessions across a graceful restart, on both backends."""

from __future__ import annotations

import datetime

from xmppd.storage.models import ResumableSession

from .storage_fixtures import run, storage  # noqa: F401

T0 = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc)


def saved(resume_id: str, username: str = "alice", **changes) -> ResumableSession:
    fields = dict(resume_id=resume_id, username=username, resource="phone", handled=7, acked=4294967290,
                  remaining=123.5, details='{"queue": []}', saved_at=T0)
    fields.update(changes)
    return ResumableSession(**fields)


def test_sessions_are_taken_once_and_in_save_order(storage):
    run(storage.create_user("alice", {}))
    first, second = saved("id-1"), saved("id-2", resource="laptop", saved_at=T0 + datetime.timedelta(seconds=1))
    assert run(storage.save_resumable_sessions([second, first])) == 2
    assert run(storage.take_resumable_sessions()) == [first, second]
    assert run(storage.take_resumable_sessions()) == []


def test_saving_again_replaces_and_unknown_users_are_skipped(storage):
    run(storage.create_user("alice", {}))
    run(storage.save_resumable_sessions([saved("id-1")]))
    assert run(storage.save_resumable_sessions([saved("id-1", handled=9), saved("id-2", username="nobody")])) == 1
    assert run(storage.take_resumable_sessions()) == [saved("id-1", handled=9)]


def test_deleting_the_user_deletes_its_sessions(storage):
    run(storage.create_user("alice", {}))
    run(storage.create_user("bob", {}))
    run(storage.save_resumable_sessions([saved("id-1"), saved("id-2", username="bob")]))
    assert run(storage.delete_user("alice"))
    assert [s.resume_id for s in run(storage.take_resumable_sessions())] == ["id-2"]
