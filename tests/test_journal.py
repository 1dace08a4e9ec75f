"""The message journal (xmppd/journal.py): group commits, barriers, claims, and failures.

Ordering and failure cases run against a fake storage whose calls the test
holds and releases one at a time; the rest runs against both real backends.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import datetime, timedelta, timezone

import pytest

from xmppd import journal as journal_module
from xmppd.journal import Journal
from xmppd.storage import StorageError

from .storage_fixtures import run, storage  # noqa: F401

UTC = timezone.utc
T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def message(n: int | str) -> bytes:
    return f"<message xmlns='jabber:client' to='alice@example.org' id='m{n}'><body>{n}</body></message>".encode()


class FakeStorage:
    """write_message_queue with the real semantics, in memory; calls can be held (hold=True) and fail on demand."""

    def __init__(self, users=("alice", "bob")):
        self.users = set(users)
        self.rows: dict[int, tuple[str, str]] = {}
        self.next_id = 1
        self.calls: list[tuple[list, list]] = []
        self.failures: list[BaseException] = []  # raised by the next calls, in order
        self.hold = False
        self.proceed = asyncio.Semaphore(0)  # with hold: one release() lets one call finish
        # With hold: commit at once, then hold the answer (the rows are visible, the journal does not know yet).
        self.commit_then_hold = False
        self.read_gate: asyncio.Event | None = None  # list_queued takes its snapshot, then waits for this
        self.in_flight = 0
        self.max_in_flight = 0

    async def write_message_queue(self, appends, deletes):
        self.calls.append((list(appends), list(deletes)))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hold and not self.commit_then_hold:
                await self.proceed.acquire()
            else:
                await asyncio.sleep(0)
            if self.failures:
                raise self.failures.pop(0)
            ids = self._apply(appends, deletes)
            if self.hold and self.commit_then_hold:
                await self.proceed.acquire()
            return ids
        finally:
            self.in_flight -= 1

    def _apply(self, appends, deletes):
        for row_id in deletes:
            self.rows.pop(row_id, None)
        ids = []
        for username, xml, _, limit in appends:
            count = sum(1 for user, _ in self.rows.values() if user == username)
            if username not in self.users or (limit is not None and count >= limit):
                ids.append(None)
            else:
                self.rows[self.next_id] = (username, xml)
                ids.append(self.next_id)
                self.next_id += 1
        return ids

    async def list_queued(self, username, *, after=0, limit=None):
        rows = [(i, xml, T0) for i, (user, xml) in sorted(self.rows.items()) if user == username and i > after]
        if self.read_gate is not None:
            await self.read_gate.wait()
        else:
            await asyncio.sleep(0)
        return rows[:limit] if limit is not None else rows


async def turns(n: int = 5) -> None:
    """Let the loop run a few iterations (a call starts, a held call returns)."""
    for _ in range(n):
        await asyncio.sleep(0)


def scenario(coro_fn):
    """Run an async test body on a fresh loop."""
    return asyncio.run(coro_fn())


# -- group commit ---------------------------------------------------------------------


def test_a_burst_of_adds_shares_one_commit():
    async def body():
        fake = FakeStorage()
        journal = Journal(fake)
        entries = [journal.add("alice" if i % 2 else "bob", message(i), T0 + timedelta(seconds=i)) for i in range(10)]
        assert fake.calls == []  # add() returns at once; the call starts on a later loop iteration
        assert journal.pending == 10
        await turns()
        assert len(fake.calls) == 1
        appends, deletes = fake.calls[0]
        assert appends == [(e.username, e.data.decode(), e.received_at, None) for e in entries]
        assert deletes == []
        assert [e.stored.result() for e in entries] == [True] * 10
        assert [e.id for e in entries] == list(range(1, 11))
        assert (journal.pending, journal.committed, journal.commits, journal.tracked) == (0, 10, 1, 0)

    scenario(body)


def test_adds_during_a_commit_go_into_the_next_one():
    async def body():
        fake = FakeStorage()
        fake.hold = True
        journal = Journal(fake)
        first = [journal.add("alice", message(i), T0) for i in range(5)]
        await turns()
        assert len(fake.calls) == 1
        second = [journal.add("bob", message(i), T0) for i in range(5, 12)]
        await turns()
        assert len(fake.calls) == 1  # at most one call in flight
        assert journal.pending == 12
        fake.proceed.release()
        await turns()
        assert all(e.stored.result() for e in first) and not any(e.stored.done() for e in second)
        assert len(fake.calls) == 2 and [a[1] for a in fake.calls[1][0]] == [e.data.decode() for e in second]
        fake.proceed.release()
        await turns()
        assert all(e.stored.result() for e in second)
        assert fake.max_in_flight == 1 and journal.commits == 2

    scenario(body)


def test_batches_are_bounded():
    async def body():
        fake = FakeStorage()
        journal = Journal(fake)
        entries = [journal.add("alice", message(i), T0) for i in range(2 * journal_module.MAX_BATCH_APPENDS + 500)]
        await journal.barrier()
        sizes = [len(appends) for appends, _ in fake.calls]
        assert sizes == [journal_module.MAX_BATCH_APPENDS, journal_module.MAX_BATCH_APPENDS, 500]
        assert [e.id for e in entries] == sorted(e.id for e in entries)
        assert len(fake.rows) == len(entries)

    scenario(body)


# -- barriers ----------------------------------------------------------------------------


def test_barrier_waits_for_what_was_added_before_it():
    async def body():
        fake = FakeStorage()
        fake.hold = True
        journal = Journal(fake)
        assert journal.barrier().done()  # nothing pending
        a = journal.add("alice", message("a"), T0)
        first = journal.barrier()
        await turns()  # a's commit is in flight
        b = journal.add("alice", message("b"), T0)
        second = journal.barrier()
        await turns()
        assert not first.done() and not second.done()
        fake.proceed.release()  # commits a
        await turns()
        assert a.stored.result() and first.done() and not second.done()
        fake.proceed.release()  # commits b
        await turns()
        assert b.stored.result() and second.done()
        assert journal.barrier().done()

    scenario(body)


def test_barrier_resolves_when_everything_before_it_was_finished_first():
    async def body():
        fake = FakeStorage()
        journal = Journal(fake)
        a = journal.add("alice", message("a"), T0)
        b = journal.add("bob", message("b"), T0)
        barrier = journal.barrier()
        journal.finish(a)
        assert not barrier.done()
        journal.finish(b)
        assert barrier.done() and a.stored.result() is True and b.stored.result() is True
        await turns()
        assert fake.calls == []  # nothing was ever written
        assert a.id is None and journal.pending == 0 and await journal.flush(1)

    scenario(body)


def test_a_cancelled_barrier_does_not_disturb_the_others():
    async def body():
        fake = FakeStorage()
        journal = Journal(fake)
        journal.add("alice", message("a"), T0)
        cancelled, kept = journal.barrier(), journal.barrier()
        cancelled.cancel()
        await asyncio.wait_for(kept, 1)

    scenario(body)


# -- finish ---------------------------------------------------------------------------------


def test_finish_before_the_commit_started_never_writes_the_row():
    async def body():
        fake = FakeStorage()
        journal = Journal(fake)
        a, b, c = (journal.add("alice", message(n), T0) for n in "abc")
        journal.finish(b)
        journal.finish(b)  # idempotent
        await journal.barrier()
        assert [xml for _, xml, _, _ in fake.calls[0][0]] == [a.data.decode(), c.data.decode()]
        assert b.stored.result() is True and b.id is None and b.finished
        assert sorted(xml for _, xml in fake.rows.values()) == sorted([a.data.decode(), c.data.decode()])
        assert journal.committed == 2 and journal.deleted == 0

    scenario(body)


def test_finish_during_the_commit_deletes_in_the_next_one():
    async def body():
        fake = FakeStorage()
        fake.hold = True
        journal = Journal(fake)
        a = journal.add("alice", message("a"), T0)
        await turns()  # in flight
        journal.finish(a)
        fake.proceed.release()
        await turns()
        assert a.id == 1 and a.stored.result() is True
        assert journal.in_hand(a.id)  # finished, delete not committed: offline delivery must skip it
        assert len(fake.calls) == 2 and fake.calls[1] == ([], [a.id])
        fake.proceed.release()
        assert await journal.flush(1)
        assert not journal.in_hand(a.id) and fake.rows == {}
        assert (journal.deleted, journal.tracked) == (1, 0)

    scenario(body)


def test_finish_after_the_commit_deletes_the_row():
    async def body():
        fake = FakeStorage()
        journal = Journal(fake)
        entries = [journal.add("alice", message(i), T0) for i in range(4)]
        for entry in entries:
            journal.claim(entry)
        await journal.barrier()
        assert journal.tracked == 4
        journal.finish(entries[1])
        journal.finish(entries[3])
        journal.finish(entries[3])
        await journal.flush(1)
        assert fake.calls[-1] == ([], [entries[1].id, entries[3].id])
        assert sorted(fake.rows) == [entries[0].id, entries[2].id]
        assert [journal.in_hand(e.id) for e in entries] == [True, False, True, False]

    scenario(body)


# -- claims, adoption -------------------------------------------------------------------


def test_claim_release_and_in_hand():
    async def body():
        fake = FakeStorage()
        journal = Journal(fake)
        claimed, unclaimed, twice = (journal.add("alice", message(n), T0) for n in range(3))
        journal.claim(claimed)
        journal.claim(twice)
        journal.claim(twice)
        await journal.barrier()
        # Only entries in hand are kept: an unclaimed committed entry is just a row now.
        assert journal.tracked == 2
        assert journal.in_hand(claimed.id) and journal.in_hand(twice.id) and not journal.in_hand(unclaimed.id)
        assert journal.release(claimed) is True  # nobody has it: an offline message
        assert not journal.in_hand(claimed.id)
        assert journal.release(twice) is False and journal.in_hand(twice.id)
        assert journal.release(twice) is True and not journal.in_hand(twice.id)
        assert journal.tracked == 0
        # A finished entry released by its queue is nobody's to hand on.
        journal.claim(claimed)
        journal.finish(claimed)
        assert journal.release(claimed) is False
        await journal.flush(1)
        assert sorted(fake.rows) == [unclaimed.id, twice.id]

    scenario(body)


def test_release_during_the_commit_leaves_a_plain_row():
    async def body():
        fake = FakeStorage()
        fake.hold = True
        journal = Journal(fake)
        entry = journal.add("alice", message("a"), T0)
        journal.claim(entry)
        await turns()
        assert journal.release(entry) is True  # becomes an offline message once committed
        fake.proceed.release()
        await journal.barrier()
        assert entry.id in fake.rows and not journal.in_hand(entry.id) and journal.tracked == 0

    scenario(body)


def test_adopt():
    async def body():
        fake = FakeStorage()
        journal = Journal(fake)
        live = journal.add("alice", message("live"), T0)
        journal.claim(live)
        plain = journal.add("alice", message("plain"), T0)
        await journal.barrier()
        assert journal.adopt("alice", live.id, T0) is live  # in hand: the same object
        adopted = journal.adopt("alice", plain.id, T0 + timedelta(seconds=1))
        assert adopted is not plain
        assert (adopted.username, adopted.id, adopted.data, adopted.received_at) == ("alice", plain.id, None, T0 + timedelta(seconds=1))
        assert adopted.stored.result() is True and adopted.claims == 0 and not adopted.finished
        assert not journal.in_hand(plain.id)
        journal.claim(adopted)
        assert journal.in_hand(plain.id) and journal.adopt("alice", plain.id, T0) is adopted
        journal.finish(adopted)
        await journal.flush(1)
        assert fake.calls[-1] == ([], [plain.id]) and plain.id not in fake.rows
        assert not journal.in_hand(plain.id)

    scenario(body)


# -- reading rows for offline delivery ----------------------------------------------------------


def test_read_queued_accounts_for_a_commit_whose_answer_is_on_its_way():
    """The database committed a claimed entry's row, the journal has not seen the answer yet."""

    async def body():
        fake = FakeStorage()
        fake.hold = fake.commit_then_hold = True
        journal = Journal(fake)
        entry = journal.add("alice", message("live"), T0)
        journal.claim(entry)  # a stream-management queue holds it
        await turns()
        [(row_id, _, _)] = await fake.list_queued("alice")  # visible in the database already
        assert not journal.in_hand(row_id)  # what a bare list_queued() reader would go by
        reader = asyncio.create_task(journal.read_queued("alice"))
        await turns()
        assert not reader.done()  # it waits for the answer of the commit it may have seen
        fake.proceed.release()
        rows = await asyncio.wait_for(reader, 1)
        assert [r[0] for r in rows] == [row_id] and journal.in_hand(row_id)

    scenario(body)


def test_read_queued_keeps_rows_deleted_under_it_in_hand():
    """The read's snapshot has the row; its delete commits before the reader looks at it."""

    async def body():
        fake = FakeStorage()
        journal = Journal(fake)
        entry = journal.add("alice", message("acked"), T0)
        journal.claim(entry)
        await journal.barrier()
        fake.read_gate = asyncio.Event()
        reader = asyncio.create_task(journal.read_queued("alice"))
        await turns()  # the snapshot is taken
        journal.finish(entry)  # the client acknowledges it
        await journal.flush(1)  # and the delete is committed
        assert entry.id not in fake.rows
        fake.read_gate.set()
        rows = await asyncio.wait_for(reader, 1)
        assert [r[0] for r in rows] == [entry.id]
        assert journal.in_hand(entry.id)  # so offline delivery skips the stale row
        # Once no read is under way, the next commit forgets it.
        fake.read_gate = None
        other = journal.add("alice", message("other"), T0)
        await journal.barrier()
        assert not journal.in_hand(entry.id) and not journal.in_hand(other.id)

    scenario(body)


# -- refusal -------------------------------------------------------------------------------


def test_refused_entries_are_not_tracked():
    async def body():
        fake = FakeStorage(users=["alice"])
        journal = Journal(fake)
        kept = [journal.add("alice", message(i), T0, max_messages=2) for i in range(3)]
        ghost = journal.add("ghost", message("g"), T0)
        for entry in [*kept, ghost]:
            journal.claim(entry)
        await journal.barrier()
        assert [e.stored.result() for e in kept] == [True, True, False]
        assert kept[2].id is None and kept[2].refused and not kept[0].refused
        assert ghost.stored.result() is False and ghost.refused
        assert (journal.committed, journal.refused, journal.tracked) == (2, 2, 2)
        # Nobody has it and there is no row: the caller must answer for it (entry.refused).
        assert journal.release(ghost) is True
        journal.finish(ghost)
        await journal.flush(1)
        assert len(fake.calls) == 1

    scenario(body)


def test_add_rejects_what_would_poison_a_batch():
    async def body():
        journal = Journal(FakeStorage())
        with pytest.raises(ValueError, match="aware"):
            journal.add("alice", message(1), datetime(2024, 1, 1))
        with pytest.raises(ValueError):
            journal.add("alice", "<message/>", T0)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            journal.add("alice", b"<message>\0</message>", T0)
        with pytest.raises(ValueError):
            journal.add("alice", message(1), T0, max_messages=-1)
        assert journal.pending == 0

    scenario(body)


# -- failures ---------------------------------------------------------------------------------


def test_storage_failures_are_retried_without_loss(caplog):
    async def body():
        fake = FakeStorage()
        fake.hold = True
        fake.failures = [StorageError("PostgreSQL host=db: write_message_queue failed: disk full"), RuntimeError("a bug")]
        journal = Journal(fake, retry_delays=(0.01, 0.05))
        entries = [journal.add("alice", message(i), T0) for i in range(3)]
        barrier = journal.barrier()
        await turns()
        fake.proceed.release()  # the first attempt fails
        await turns()
        assert not barrier.done() and journal.pending == 3
        late = journal.add("bob", message("late"), T0)  # waits for the batch being retried
        fake.proceed.release()  # the second attempt fails too
        await asyncio.sleep(0.02)
        assert not barrier.done()
        fake.proceed.release()  # the third succeeds
        await asyncio.wait_for(barrier, 1)
        fake.proceed.release()
        await asyncio.wait_for(late.stored, 1)
        assert [c[0] for c in fake.calls[:3]] == [fake.calls[0][0]] * 3  # the same batch each time
        assert [a[1] for a in fake.calls[3][0]] == [late.data.decode()]
        assert sorted(xml for _, xml in fake.rows.values()) == sorted(e.data.decode() for e in [*entries, late])
        assert journal.failures == 2 and journal.commits == 2

    with caplog.at_level(logging.INFO, logger="xmppd.journal"):
        scenario(body)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    first, second = (r.getMessage() for r in errors)
    assert "writing 3 messages and 0 deletions failed" in first and "disk full" in first
    assert "3 messages wait" in first and "retrying in 0.01 s" in first
    assert "a bug" in second and "4 messages wait" in second and "retrying in 0.05 s" in second
    assert errors[0].exc_info is None and errors[1].exc_info is not None  # a traceback only for the unexpected
    assert any("works again after 2 failed attempts" in r.getMessage() for r in caplog.records)


def test_the_last_retry_delay_repeats(caplog):
    async def body():
        fake = FakeStorage()
        fake.failures = [StorageError("down")] * 4
        journal = Journal(fake, retry_delays=(0.001, 0.002))
        journal.add("alice", message(1), T0)
        await asyncio.wait_for(journal.barrier(), 2)
        assert len(fake.rows) == 1

    with caplog.at_level(logging.ERROR, logger="xmppd.journal"):
        scenario(body)
    delays = [re.search(r"retrying in (\S+) s", r.getMessage()).group(1) for r in caplog.records]
    assert delays == ["0.001", "0.002", "0.002", "0.002"]


# -- close ------------------------------------------------------------------------------------------


def test_close_commits_what_is_pending_then_refuses():
    async def body():
        fake = FakeStorage()
        journal = Journal(fake)
        entries = [journal.add("alice", message(i), T0) for i in range(3)]
        journal.claim(entries[0])
        await journal.barrier()
        journal.finish(entries[0])
        more = journal.add("bob", message("more"), T0)
        fake.hold = True  # the storage takes its time: close() waits for it

        async def slow_storage():
            while True:
                await asyncio.sleep(0.05)
                fake.proceed.release()

        releaser = asyncio.create_task(slow_storage())
        await journal.close()
        releaser.cancel()
        assert more.stored.result() is True
        assert sorted(fake.rows) == [entries[1].id, entries[2].id, more.id]
        with pytest.raises(RuntimeError, match="closed"):
            journal.add("alice", message("after"), T0)
        assert journal.barrier().done()
        await journal.close()  # twice is harmless

    scenario(body)


def test_close_gives_up_after_its_timeout(caplog):
    async def body():
        fake = FakeStorage()
        fake.failures = [StorageError("down")] * 1000
        journal = Journal(fake, retry_delays=(0.01,))
        entry = journal.add("alice", message(1), T0)
        barrier = journal.barrier()
        await turns()
        await asyncio.wait_for(journal.close(timeout=0.05), 1)
        # Never committed, so never acknowledged: the sender's ack must not go out.
        assert barrier.cancelled() and entry.stored.cancelled()
        calls = len(fake.calls)
        await asyncio.sleep(0.05)
        assert len(fake.calls) == calls  # the writer stopped

    with caplog.at_level(logging.ERROR, logger="xmppd.journal"):
        scenario(body)
    assert any("1 messages and 0 deletions not committed" in r.getMessage() for r in caplog.records)


# -- on the real backends -------------------------------------------------------------------------


def test_journal_on_storage(storage):
    async def body():
        await storage.create_user("alice", {})
        await storage.create_user("bob", {})
        journal = Journal(storage, retry_delays=(0.01,))
        at = [T0 + timedelta(milliseconds=i) for i in range(30)]
        entries = [journal.add("alice" if i % 3 else "bob", message(i), at[i]) for i in range(30)]
        ghost = journal.add("ghost", message("ghost"), T0)
        journal.finish(entries[0])  # delivered before its commit: never written
        for entry in entries[1:10]:
            journal.claim(entry)  # held by stream-management queues
        await journal.barrier()
        assert journal.commits == 1 and ghost.stored.result() is False
        assert entries[0].id is None and all(e.id is not None for e in entries[1:])
        for user in ("alice", "bob"):
            expected = [(e.id, e.data.decode(), e.received_at) for e in entries[1:] if e.username == user]
            assert await storage.list_queued(user) == expected
        # The recipient acknowledges some; one queue gives up the others unacknowledged.
        for entry in entries[1:5]:
            journal.finish(entry)
        assert all(journal.in_hand(e.id) for e in entries[1:10])
        released = [journal.release(e) for e in entries[5:10]]
        assert released == [True] * 5 and not any(journal.in_hand(e.id) for e in entries[5:10])
        await journal.flush(5)
        assert journal.tracked == 0

        async def row_ids():
            return {i for user in ("alice", "bob") for i, _, _ in await storage.list_queued(user)}

        left = {e.id for e in entries[5:]}  # the four acknowledged ones are gone
        assert await row_ids() == left
        await journal.close()

        # After a restart every row is an offline message: adopt, deliver, acknowledge.
        journal = Journal(storage)
        adopted = []
        for user in ("alice", "bob"):
            for row_id, _, received_at in await journal.read_queued(user, limit=3):
                entry = journal.adopt(user, row_id, received_at)
                journal.claim(entry)
                assert journal.in_hand(row_id)
                adopted.append(entry)
        for entry in adopted:
            journal.finish(entry)
        await journal.flush(5)
        assert len(adopted) == 6 and await row_ids() == left - {e.id for e in adopted}
        await journal.close()

    run(body())


def test_journal_quota_on_storage(storage):
    async def body():
        await storage.create_user("alice", {})
        journal = Journal(storage)
        entries = [journal.add("alice", message(i), T0, max_messages=3) for i in range(5)]
        await journal.barrier()
        assert [e.stored.result() for e in entries] == [True, True, True, False, False]
        assert journal.refused == 2
        # Delivered messages free their room; the delete goes before the next appends in one call.
        journal.finish(entries[0])
        again = journal.add("alice", message("again"), T0, max_messages=3)
        await journal.barrier()
        assert again.stored.result() is True
        assert [i for i, _, _ in await storage.list_queued("alice")] == [entries[1].id, entries[2].id, again.id]
        await journal.close()

    run(body())


def test_journal_retries_when_the_storage_is_closed_under_it(storage, caplog):
    """A real StorageError (the store closed) is retried; nothing is lost once a working store is back."""

    async def body():
        await storage.create_user("alice", {})

        class Flaky:
            def __init__(self):
                self.broken = True

            async def write_message_queue(self, appends, deletes):
                if self.broken:
                    self.broken = False
                    raise StorageError("the database went away")
                return await storage.write_message_queue(appends, deletes)

        journal = Journal(Flaky(), retry_delays=(0.01,))
        entries = [journal.add("alice", message(i), T0) for i in range(3)]
        await asyncio.wait_for(journal.barrier(), 5)
        assert [i for i, _, _ in await storage.list_queued("alice")] == [e.id for e in entries]
        await journal.close()

    with caplog.at_level(logging.ERROR, logger="xmppd.journal"):
        run(body())
    assert any("the database went away" in r.getMessage() for r in caplog.records)
