"""The durable per-recipient message queue: every message that matters, on its way to an account.

Why: once the server acknowledges a stanza to its sender (XEP-0198 <a h/>), it
must be delivered and acknowledged by the recipient, or be in durable storage,
even if the process is SIGKILLed. Writing each message before its ack would cost
one transaction (one fsync) per message. So the journal records messages in
*group commits*: one storage call (one transaction) covers everything added
since the previous call, while delivery to a live session happens at once
without waiting. The sender's ack waits for barrier(): everything added before
it is committed.

A message for an account becomes one row in offline_messages (one per
recipient account). When the recipient has it (a client acknowledged it, or it
was written to a client without stream management) finish() deletes the row,
also in a group commit, or keeps it from ever being written if the commit had
not started. A row that no live session holds is simply an offline message
(XEP-0160), handed over at the next login; after a crash every remaining row
is one.

No Twisted here, and no protocol: plain asyncio, unit tested without sockets.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Sequence
from datetime import datetime

from .storage import Storage, StorageError

log = logging.getLogger("xmppd.journal")

# Appends per storage call; the rest waits for the next call. Bounds a transaction's
# time and size, so a burst cannot hold every barrier behind one huge commit.
MAX_BATCH_APPENDS = 1000
# Row deletions per storage call (the storage splits them into statements of 512).
MAX_BATCH_DELETES = 10000


class Entry:
    """One message on its way to one account. Becomes a row in offline_messages once committed."""

    __slots__ = ("username", "data", "received_at", "max_messages", "id", "claims", "finished", "stored", "_seq")

    def __init__(
        self,
        username: str,
        data: bytes | None,
        received_at: datetime,
        max_messages: int | None,
        stored: asyncio.Future[bool],
        seq: int = 0,
    ) -> None:
        self.username = username
        self.data = data  # the serialized stanza; None for an adopted row (the reader has the XML)
        self.received_at = received_at
        self.max_messages = max_messages
        self.id: int | None = None  # the row id after commit; None before, or if refused
        self.claims = 0  # stream-management queues holding it unacknowledged right now
        self.finished = False  # the user has it: its row is deleted, or never written
        self.stored = stored  # True once committed (or finished first), False if refused
        self._seq = seq  # order of add(), for barriers

    @property
    def refused(self) -> bool:
        """The storage refused it (full quota, or no such user): there is no row to fall back on."""
        return self.stored.done() and not self.stored.cancelled() and not self.stored.result()

    def __repr__(self) -> str:
        state = "finished" if self.finished else f"claims={self.claims}"
        return f"<Entry {self.username} id={self.id} {state}>"


class Journal:
    """Group commits of message rows: appends for new messages, deletions for delivered ones.

    At most one storage call is in flight; what is added or finished meanwhile
    waits for the next one, which starts as soon as the call returns. The first
    add after a quiet spell starts a call on the next loop iteration, so the
    adds of one burst (one read from a socket, one fan-out) share it.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        retry_delays: Sequence[float] = (0.5, 1, 2, 5, 10, 30),
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """retry_delays: seconds before each retry of a failed storage call, the last repeating forever.
        loop: the event loop to use; by default the one running at the first call."""
        if not retry_delays:
            raise ValueError("retry_delays must not be empty")
        self.storage = storage
        self.retry_delays = tuple(retry_delays)
        self._loop = loop
        self._pending: dict[Entry, None] = {}  # waiting for the next call, in add() order
        self._in_flight: list[Entry] = []  # appends of the call under way
        self._deletes: list[int] = []  # row ids waiting for the next call
        self._in_hand: dict[int, Entry] = {}  # committed rows claimed by a queue, or finished but not yet deleted
        self._readers = 0  # read_queued() calls under way
        self._deleted_under_readers: set[int] = set()  # rows deleted while a read_queued() was under way
        self._barriers: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._added = 0  # entries ever added: the sequence number of the newest
        self._writer: asyncio.Task | None = None
        self._start_scheduled = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        # counters for metrics
        self.committed = 0  # rows written
        self.refused = 0  # appends the storage refused
        self.deleted = 0  # row deletions committed
        self.commits = 0  # successful storage calls (batches)
        self.failures = 0  # failed storage calls (each retried)
        self.commit_seconds = 0.0  # time spent in successful storage calls (storage latency)

    # -- metrics -------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Messages not yet committed (waiting or in the call under way)."""
        return len(self._pending) + len(self._in_flight)

    @property
    def tracked(self) -> int:
        """Committed rows held in memory (claimed, or finished with the delete not yet committed)."""
        return len(self._in_hand)

    # -- the API -------------------------------------------------------------------

    def add(self, username: str, data: bytes, received_at: datetime, *, max_messages: int | None = None) -> Entry:
        """Record a message for the next group commit and return at once (delivery never waits)."""
        if self._closed:
            raise RuntimeError("the journal is closed")
        # Checked here, not in the storage call: one bad entry there would fail its whole batch on every retry.
        if not isinstance(data, bytes) or b"\0" in data:
            raise ValueError("data must be the serialized stanza as bytes (XML has no NUL)")
        if received_at.tzinfo is None or received_at.utcoffset() is None:
            raise ValueError(f"received_at must be an aware datetime, not {received_at!r}")
        if max_messages is not None and max_messages < 0:
            raise ValueError(f"max_messages must not be negative, not {max_messages!r}")
        loop = self._get_loop()
        self._added += 1
        entry = Entry(username, data, received_at, max_messages, loop.create_future(), self._added)
        self._pending[entry] = None
        self._schedule()
        return entry

    def barrier(self) -> Awaitable[None]:
        """Resolves once every entry added before this call is committed or refused (a sender's <a/> waits for it).

        Resolves at once when nothing is pending. Never fails: while the storage
        fails it simply waits (see _write); close() cancels what is left.
        """
        future = self._get_loop().create_future()
        if self._oldest_unsettled() > self._added:
            future.set_result(None)
        else:
            self._barriers.append((self._added, future))
        return future

    def claim(self, entry: Entry) -> None:
        """A stream-management queue now holds the entry unacknowledged."""
        entry.claims += 1
        if entry.id is not None and not entry.finished:
            self._in_hand.setdefault(entry.id, entry)

    def release(self, entry: Entry) -> bool:
        """The queue gave the entry up unacknowledged (a session ended without resumption).

        True if nobody has it now (not finished, no claims): the caller may hand
        it on (to another resource), or leave it: its row makes it an offline
        message. A refused entry (entry.refused) has no row; the caller must
        answer for it otherwise (an error to the sender).
        """
        if entry.claims > 0:
            entry.claims -= 1
        if entry.claims or entry.finished:
            return False
        if entry.id is not None and self._in_hand.get(entry.id) is entry:
            del self._in_hand[entry.id]  # just a row now
        return True

    def finish(self, entry: Entry) -> None:
        """The user has the message: delete its row in the next commit, or never write it. Idempotent."""
        if entry.finished:
            return
        entry.finished = True
        if entry in self._pending:  # the commit has not started: never write it
            del self._pending[entry]
            entry.stored.set_result(True)
            self._resolve_barriers()
            if not self._pending and not self._deletes and self._writer is None:
                self._idle.set()
        elif entry.id is not None:  # committed: delete the row
            if self._closed:
                log.warning("journal closed: row %d of %s stays (it will be delivered again)", entry.id, entry.username)
                return
            self._in_hand[entry.id] = entry  # until the delete is committed
            self._deletes.append(entry.id)
            self._schedule()
        # Otherwise in flight (the write's result queues the delete) or refused (no row).

    def adopt(self, username: str, row_id: int, received_at: datetime) -> Entry:
        """The in-memory entry for a row read back from storage (offline delivery).

        The tracked one if this row is in hand, else a new committed entry whose
        data is None (the reader has the XML). Claim it at once, before
        anything else can read the row, so that in_hand() tells the others.
        """
        entry = self._in_hand.get(row_id)
        if entry is not None:
            return entry
        stored = self._get_loop().create_future()
        stored.set_result(True)
        entry = Entry(username, None, received_at, None, stored)
        entry.id = row_id
        return entry

    def in_hand(self, row_id: int) -> bool:
        """The row is claimed by a queue or finished: offline delivery must skip it."""
        return row_id in self._in_hand or row_id in self._deleted_under_readers

    async def read_queued(
        self, username: str, *, after: int = 0, limit: int | None = None
    ) -> list[tuple[int, str, datetime]]:
        """storage.list_queued(), read so that in_hand() is exact for the rows until the caller's next await.

        Offline delivery reads with this, then checks in_hand() and adopts and
        claims each row before it awaits anything. A bare list_queued() is not
        enough: the database answers on its own schedule, so (1) a row of a
        commit whose result this journal has not processed yet would look free
        although a queue claimed it (the barrier after the read waits for that
        result), and (2) a row deleted just after the read's snapshot would look
        free once the delete is processed (such rows stay in hand until the next
        commit finds no read under way). Either would deliver a message twice.
        """
        self._readers += 1
        try:
            rows = await self.storage.list_queued(username, after=after, limit=limit)
            await self.barrier()
        finally:
            self._readers -= 1
        return rows

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything added or finished so far (and meanwhile) is written; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 10.0) -> None:
        """Commit what is pending, then stop accepting. After timeout (storage failing) give up on the rest.

        What is given up was never acknowledged to its sender: its barriers are
        cancelled, so the ack is never sent, and the entries' `stored` too.
        """
        if self._closed:
            return
        if not await self.flush(timeout):
            log.error(
                "journal: closing with %d messages and %d deletions not committed (the storage kept failing);"
                " their senders were not acknowledged",
                self.pending,
                len(self._deletes),
            )
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.cancel()
                try:
                    await writer
                except asyncio.CancelledError:
                    pass
            for entry in [*self._in_flight, *self._pending]:
                entry.stored.cancel()
            for _, future in self._barriers:
                future.cancel()
            self._in_flight, self._pending, self._deletes = [], {}, []
            self._barriers.clear()
            self._idle.set()
        self._closed = True

    # -- group commit ----------------------------------------------------------------

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _schedule(self) -> None:
        """Start a storage call on the next loop iteration, unless one is under way (its end starts the next)."""
        self._idle.clear()
        if self._writer is None and not self._start_scheduled:
            self._start_scheduled = True
            self._get_loop().call_soon(self._start_writer)

    def _start_writer(self) -> None:
        self._start_scheduled = False
        if self._writer is None and not self._closed:
            if self._pending or self._deletes:
                self._writer = self._get_loop().create_task(self._write_all(), name="xmppd-journal")
                self._writer.add_done_callback(self._writer_done)
            else:
                self._idle.set()

    def _writer_done(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        if task.exception() is not None:  # a bug here, not in the storage: log it, keep going
            log.error("journal: the writer failed", exc_info=task.exception())
            unsettled = [entry for entry in self._in_flight if not entry.stored.done()]
            self._pending = {**dict.fromkeys(unsettled), **self._pending}
            self._in_flight = []
            if self._writer is None:
                if self._pending or self._deletes:
                    self._schedule()
                else:
                    self._idle.set()

    async def _write_all(self) -> None:
        """Write batches until nothing is left; one call at a time."""
        try:
            while self._pending or self._deletes:
                appends = []
                for entry in self._pending:
                    appends.append(entry)
                    if len(appends) == MAX_BATCH_APPENDS:
                        break
                for entry in appends:
                    del self._pending[entry]
                self._in_flight = appends
                deletes = self._deletes[:MAX_BATCH_DELETES]
                del self._deletes[:MAX_BATCH_DELETES]
                ids = await self._write(appends, deletes)
                self._in_flight = []
                self._committed(appends, ids, deletes)
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None
        if not self._pending and not self._deletes:
            self._idle.set()

    async def _write(self, appends: list[Entry], deletes: list[int]) -> list[int | None]:
        """One storage call, retried with back-off until it succeeds: no data is dropped."""
        rows = []
        undecodable = set()
        for entry in appends:
            try:
                rows.append((entry.username, entry.data.decode(), entry.received_at, entry.max_messages))
            except UnicodeDecodeError:
                undecodable.add(entry)
        if undecodable:  # cannot be stored as text: refuse these rather than fail the batch forever
            log.error("journal: %d messages are not UTF-8; refused", len(undecodable))
        failures = 0
        while True:
            started = time.monotonic()
            try:
                ids = await self.storage.write_message_queue(rows, deletes)
                self.commit_seconds += time.monotonic() - started
                break
            except Exception as exc:
                delay = self.retry_delays[min(failures, len(self.retry_delays) - 1)]
                failures += 1
                self.failures += 1
                what = (
                    f"journal: writing {len(rows)} messages and {len(deletes)} deletions failed"
                    f" (attempt {failures}): {exc}; {self.pending} messages wait, retrying in {delay:g} s"
                )
                if isinstance(exc, StorageError):
                    log.error("%s", what)
                else:
                    log.error("%s", what, exc_info=True)
                await asyncio.sleep(delay)
        if failures:
            log.warning("journal: storage works again after %d failed attempts", failures)
        if undecodable:
            written = iter(ids)
            ids = [None if entry in undecodable else next(written) for entry in appends]
        return ids

    def _committed(self, appends: list[Entry], ids: list[int | None], deletes: list[int]) -> None:
        self.commits += 1
        if not self._readers:
            # This runs in the writer's own task step: every reader has finished the
            # synchronous checks after its read_queued() by now.
            self._deleted_under_readers.clear()
        for row_id in deletes:
            entry = self._in_hand.get(row_id)
            if entry is not None and entry.finished:
                del self._in_hand[row_id]
                if self._readers:
                    self._deleted_under_readers.add(row_id)
        self.deleted += len(deletes)
        for entry, row_id in zip(appends, ids, strict=True):
            if row_id is None:
                self.refused += 1
                entry.stored.set_result(False)
                continue
            self.committed += 1
            entry.id = row_id
            entry.stored.set_result(True)
            if entry.finished:  # finished while its commit was in flight
                self._in_hand[row_id] = entry
                self._deletes.append(row_id)
            elif entry.claims:
                self._in_hand[row_id] = entry
        self._resolve_barriers()

    def _oldest_unsettled(self) -> int:
        """The sequence number of the oldest entry neither committed nor refused; beyond _added if none."""
        if self._in_flight:
            return self._in_flight[0]._seq
        for entry in self._pending:
            return entry._seq
        return self._added + 1

    def _resolve_barriers(self) -> None:
        oldest = self._oldest_unsettled()
        while self._barriers and self._barriers[0][0] < oldest:
            _, future = self._barriers.popleft()
            if not future.done():
                future.set_result(None)
