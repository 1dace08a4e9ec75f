"""The storage operations, written once for both SQL backends.

Each operation is a *script*: a generator that yields Statements and is sent
back their results, doing no I/O itself. The SQLite backend drives scripts
synchronously in its worker thread, the PostgreSQL backend drives them with
``await`` on a pooled connection; so the SQL and the logic between statements
exist once, and the backends only move statements to a database. Scripts
marked @atomic run in one transaction; the others are a single statement.

The SQL is the common subset of SQLite (3.35+) and PostgreSQL, written with
``?`` placeholders (the PostgreSQL backend turns them into ``%s``, so the SQL
holds no other ``?`` or ``%``). Columns
that are sorted use byte-wise collation on both (see migrations.py), so
"sorted" means code point order, as Python's sorted().
"""

from __future__ import annotations

import abc
import enum
import operator
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..histogram import Histogram
from .base import Storage, StorageError
from .models import (ARCHIVE_DEFAULTS, SUBSCRIPTIONS, AppServerRegistration, ArchiveFilter, ArchivePrefs,
                     ArchiveRow, ArchivedMessage, PepItem, PushRegistration, ResumableSession, RosterItem,
                     ScramCredentials, UploadSlot)


class Result(enum.Enum):
    """What the driver sends back into the script for a statement."""

    ROWS = "rows"  # list of row tuples
    ROWCOUNT = "rowcount"  # number of rows changed
    NOTHING = "nothing"  # executemany: None


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str
    params: Sequence[Any]  # one row of parameters; for Result.NOTHING a list of rows
    result: Result


def select(sql: str, *params: Any) -> Statement:
    """A statement whose rows the script wants (SELECT, or DML with RETURNING)."""
    return Statement(sql, params, Result.ROWS)


def execute(sql: str, *params: Any) -> Statement:
    """A statement whose changed-row count the script wants."""
    return Statement(sql, params, Result.ROWCOUNT)


def execute_many(sql: str, rows: list[Sequence[Any]]) -> Statement:
    """One statement run for each parameter row (the backend batches them)."""
    return Statement(sql, rows, Result.NOTHING)


Script = Callable[..., Generator[Statement, Any, Any]]


def atomic(script: Script) -> Script:
    """Mark a script whose statements must commit together or not at all."""
    script.atomic = True  # type: ignore[attr-defined]
    return script


def is_atomic(script: Script) -> bool:
    return getattr(script, "atomic", False)


def operation(script: Script) -> str:
    """The public name of the operation a script implements, for error messages."""
    return script.__name__.lstrip("_")


def unknown_user(script: Script, args: tuple) -> StorageError:
    """The error for a foreign-key violation: every foreign key ends at users, every user-scoped call takes the username first."""
    return StorageError(f"{operation(script)}: no such user {args[0]!r}")


# Bounds (seconds) of the storage latency histograms: a call takes well under a millisecond when all is well.
STORAGE_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class SQLStorage(Storage):
    """Storage implemented with the scripts below; a backend supplies _execute()."""

    def __init__(self) -> None:
        # operation -> how long its calls took, waiting for the connection included (metrics.py).
        self.latency: dict[str, Histogram] = {}

    async def _run(self, script: Script, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return await self._execute(script, *args)
        finally:
            name = operation(script)
            histogram = self.latency.get(name)
            if histogram is None:
                histogram = self.latency[name] = Histogram(STORAGE_LATENCY_BUCKETS)
            histogram.observe(time.perf_counter() - started)

    @abc.abstractmethod
    async def _execute(self, script: Script, *args: Any) -> Any:
        """Drive script(*args) to completion on a connection (in a transaction if atomic)."""

    async def create_user(self, username: str, credentials: dict[str, ScramCredentials]) -> bool:
        return await self._run(_create_user, username, credentials)

    async def set_credentials(self, username: str, credentials: dict[str, ScramCredentials]) -> bool:
        return await self._run(_set_credentials, username, credentials)

    async def get_credentials(self, username: str, mechanism: str) -> ScramCredentials | None:
        return await self._run(_get_credentials, username, mechanism)

    async def user_exists(self, username: str) -> bool:
        return await self._run(_user_exists, username)

    async def delete_user(self, username: str) -> bool:
        return await self._run(_delete_user, username)

    async def list_users(self) -> list[str]:
        return await self._run(_list_users)

    async def count_users(self) -> int:
        return await self._run(_count_users)

    async def get_roster(self, username: str) -> tuple[int, list[RosterItem]]:
        return await self._run(_get_roster, username)

    async def get_roster_item(self, username: str, jid: str) -> RosterItem | None:
        return await self._run(_get_roster_item, username, jid)

    async def set_roster_item(self, username: str, item: RosterItem) -> int:
        if item.subscription not in SUBSCRIPTIONS:
            raise ValueError(f"subscription must be one of {SUBSCRIPTIONS}, not {item.subscription!r}")
        return await self._run(_set_roster_item, username, item)

    async def set_roster_items(self, username: str, items: Sequence[RosterItem]) -> int:
        for item in items:
            if item.subscription not in SUBSCRIPTIONS:
                raise ValueError(f"subscription must be one of {SUBSCRIPTIONS}, not {item.subscription!r}")
        return await self._run(_set_roster_items, username, list(items))

    async def delete_roster_item(self, username: str, jid: str) -> int | None:
        return await self._run(_delete_roster_item, username, jid)

    async def get_roster_version(self, username: str) -> int:
        return await self._run(_get_roster_version, username)

    async def add_pending_subscription(self, username: str, from_jid: str, stanza_xml: str) -> None:
        await self._run(_add_pending_subscription, username, from_jid, stanza_xml)

    async def remove_pending_subscription(self, username: str, from_jid: str) -> bool:
        return await self._run(_remove_pending_subscription, username, from_jid)

    async def list_pending_subscriptions(self, username: str) -> list[tuple[str, str]]:
        return await self._run(_list_pending_subscriptions, username)

    async def get_vcard(self, username: str) -> str | None:
        return await self._run(_get_vcard, username)

    async def set_vcard(self, username: str, xml: str | None) -> None:
        await self._run(_set_vcard, username, xml)

    async def count_offline(self, username: str | None = None) -> int:
        return await self._run(_count_offline, username)

    async def write_message_queue(
        self, appends: Sequence[tuple[str, str, datetime, int | None]], deletes: Sequence[int]
    ) -> list[int | None]:
        rows = []
        for username, stanza_xml, received_at, max_messages in appends:
            if max_messages is not None and max_messages < 0:
                raise ValueError(f"max_messages must not be negative, not {max_messages!r}")
            rows.append((username, stanza_xml, _timestamp_param(received_at), max_messages))
        unique_deletes = sorted({operator.index(i) for i in deletes})
        if not rows and not unique_deletes:
            return []
        return await self._run(_write_message_queue, rows, unique_deletes)

    async def list_queued(
        self, username: str, *, after: int = 0, limit: int | None = None
    ) -> list[tuple[int, str, datetime]]:
        if limit is not None and limit < 0:
            # SQLite reads a negative LIMIT as none, PostgreSQL refuses it: refuse it on both.
            raise ValueError(f"limit must not be negative, not {limit!r}")
        return await self._run(_list_queued, username, operator.index(after), limit)

    async def get_setting(self, key: str) -> str | None:
        return await self._run(_get_setting, key)

    async def set_setting(self, key: str, value: str) -> None:
        await self._run(_set_setting, key, value)

    async def set_setting_if_absent(self, key: str, value: str) -> str:
        return await self._run(_set_setting_if_absent, key, value)

    async def push_enable(
        self, username: str, jid: str, node: str, options_xml: str | None, now: datetime, max_registrations: int
    ) -> list[PushRegistration]:
        if operator.index(max_registrations) < 1:
            raise ValueError(f"max_registrations must be at least 1, not {max_registrations!r}")
        return await self._run(
            _push_enable, username, jid, node, options_xml, _timestamp_param(now, "now"), max_registrations
        )

    async def push_disable(self, username: str, jid: str, node: str | None) -> list[PushRegistration]:
        return await self._run(_push_disable, username, jid, node)

    async def push_registrations(self, username: str) -> list[PushRegistration]:
        return await self._run(_push_registrations, username)

    async def push_record_success(self, username: str, jid: str, node: str, now: datetime) -> None:
        await self._run(_push_record_success, username, jid, node, _timestamp_param(now, "now"))

    async def push_record_failure(self, username: str, jid: str, node: str) -> int:
        return await self._run(_push_record_failure, username, jid, node)

    async def push_expire(self, unused_since: datetime) -> list[PushRegistration]:
        return await self._run(_push_expire, _timestamp_param(unused_since, "unused_since"))

    async def count_push_registrations(self) -> int:
        return await self._run(_count_push_registrations)

    async def appserver_register(
        self, registration: AppServerRegistration, now: datetime, max_per_owner: int
    ) -> tuple[AppServerRegistration, list[AppServerRegistration]]:
        if registration.secret is None or registration.device_id is None:
            raise ValueError("a p2-style registration has a secret and a device_id")
        if operator.index(max_per_owner) < 1:
            raise ValueError(f"max_per_owner must be at least 1, not {max_per_owner!r}")
        return await self._run(_appserver_register, registration, _timestamp_param(now, "now"), max_per_owner)

    async def appserver_registration(self, node: str) -> AppServerRegistration | None:
        return await self._run(_appserver_registration, node)

    async def appserver_unregister(
        self, app: str, owner: str, device_id: str, muc: str | None
    ) -> list[AppServerRegistration]:
        return await self._run(_appserver_unregister, app, owner, device_id, muc)

    async def appserver_remove(self, node: str, token: str) -> bool:
        return await self._run(_appserver_remove, node, token)

    async def appserver_touch(self, node: str, now: datetime) -> None:
        await self._run(_appserver_touch, node, _timestamp_param(now, "now"))

    async def appserver_seen(self, node: str, app: str, owner: str, now: datetime) -> None:
        await self._run(_appserver_seen, node, app, owner, _timestamp_param(now, "now"))

    async def appserver_delete_owner(self, owner: str) -> list[AppServerRegistration]:
        return await self._run(_appserver_delete_owner, owner)

    async def appserver_registrations(self, owner: str | None = None) -> list[AppServerRegistration]:
        return await self._run(_appserver_registrations, owner)

    async def appserver_expire(self, unused_since: datetime) -> list[AppServerRegistration]:
        return await self._run(_appserver_expire, _timestamp_param(unused_since, "unused_since"))

    async def count_appserver_registrations(self) -> dict[str, int]:
        return await self._run(_count_appserver_registrations)

    async def save_resumable_sessions(self, sessions: Sequence[ResumableSession]) -> int:
        return await self._run(_save_resumable_sessions, list(sessions))

    async def take_resumable_sessions(self) -> list[ResumableSession]:
        return await self._run(_take_resumable_sessions)

    async def upload_reserve(self, slot: UploadSlot, quota: int) -> int | None:
        return await self._run(_upload_reserve, slot, quota)

    async def upload_slot(self, slot: str) -> UploadSlot | None:
        return await self._run(_upload_slot, slot)

    async def upload_complete(self, slot: str, now: datetime) -> bool:
        return await self._run(_upload_complete, slot, _timestamp_param(now, "now"))

    async def upload_expire(self, stored_before: datetime | None, reserved_before: datetime) -> list[str]:
        return await self._run(
            _upload_expire,
            None if stored_before is None else _timestamp_param(stored_before, "stored_before"),
            _timestamp_param(reserved_before, "reserved_before"),
        )

    async def upload_known(self, slots: Sequence[str]) -> set[str]:
        return await self._run(_upload_known, list(slots))

    async def pep_nodes(self, username: str) -> dict[str, str]:
        return await self._run(_pep_nodes, username)

    async def pep_find_nodes(self, usernames: Sequence[str], nodes: Sequence[str]) -> list[tuple[str, str, str]]:
        if not usernames or not nodes:
            return []
        return await self._run(_pep_find_nodes, sorted(set(usernames)), sorted(set(nodes)))

    async def pep_create_node(self, username: str, node: str, config: str) -> bool:
        return await self._run(_pep_create_node, username, node, config)

    async def pep_configure_node(self, username: str, node: str, config: str, max_items: int) -> bool:
        return await self._run(_pep_configure_node, username, node, config, _positive(max_items, "max_items"))

    async def pep_delete_node(self, username: str, node: str) -> bool:
        return await self._run(_pep_delete_node, username, node)

    async def pep_publish(self, username: str, node: str, config: str, item: PepItem, max_items: int) -> bool:
        return await self._run(_pep_publish, username, node, config, item.item_id, item.payload, item.publisher,
                               _timestamp_param(item.published_at, "published_at"), _positive(max_items, "max_items"))

    async def pep_items(
        self, username: str, node: str, *, item_ids: Sequence[str] | None = None, newest: int | None = None
    ) -> list[PepItem]:
        if newest is not None:
            _positive(newest, "newest")
        return await self._run(_pep_items, username, node, None if item_ids is None else sorted(set(item_ids)),
                               newest)

    async def pep_retract(self, username: str, node: str, item_id: str) -> bool:
        return await self._run(_pep_retract, username, node, item_id)

    async def pep_purge(self, username: str, node: str) -> int:
        return await self._run(_pep_purge, username, node)

    async def get_private_xml(self, username: str, namespace: str) -> str | None:
        return await self._run(_get_private_xml, username, namespace)

    async def set_private_xml(self, username: str, namespace: str, xml: str | None) -> None:
        await self._run(_set_private_xml, username, namespace, xml)

    async def get_blocklist(self, username: str) -> list[str]:
        return await self._run(_get_blocklist, username)

    async def block_jids(self, username: str, jids: list[str], max_items: int) -> list[str] | None:
        return await self._run(_block_jids, username, jids, max_items)

    async def unblock_jids(self, username: str, jids: list[str] | None) -> list[str]:
        return await self._run(_unblock_jids, username, jids)

    async def mam_append(self, rows: Sequence[ArchiveRow]) -> int:
        if not rows:
            return 0
        return await self._run(_mam_append, list(rows))

    async def mam_query(
        self, owner: str, where: ArchiveFilter, *, limit: int, backwards: bool = False, offset: int = 0,
        known: Sequence[tuple[int, int]] = (),
    ) -> list[ArchivedMessage] | None:
        if operator.index(limit) < 0 or operator.index(offset) < 0:
            raise ValueError(f"limit and offset must not be negative, not {limit!r}, {offset!r}")
        return await self._run(_mam_query, owner, where, limit, backwards, offset, list(known))

    async def mam_count(self, owner: str, where: ArchiveFilter) -> int:
        return await self._run(_mam_count, owner, where)

    async def mam_bounds(self, owner: str) -> tuple[ArchivedMessage, ArchivedMessage] | None:
        return await self._run(_mam_bounds, owner)

    async def mam_prefs(self, username: str) -> tuple[bool, ArchivePrefs | None]:
        return await self._run(_mam_prefs, username)

    async def mam_set_prefs(self, username: str, prefs: ArchivePrefs) -> None:
        if prefs.default not in ARCHIVE_DEFAULTS:
            raise ValueError(f"default must be one of {ARCHIVE_DEFAULTS}, not {prefs.default!r}")
        for jid in (*prefs.always, *prefs.never):
            if "\n" in jid or not jid:
                raise ValueError(f"not a JID: {jid!r}")
        await self._run(_mam_set_prefs, username, prefs)

    async def mam_expire(self, before_seq: int, limit: int) -> int:
        return await self._run(_mam_expire, operator.index(before_seq), operator.index(limit))

    async def mam_last_seq(self) -> int:
        return await self._run(_mam_last_seq)


# -- accounts -------------------------------------------------------------

_INSERT_CREDENTIALS = (
    "INSERT INTO scram_credentials (username, mechanism, salt, iterations, stored_key, server_key)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


def _credential_rows(username: str, credentials: dict[str, ScramCredentials]) -> list[tuple]:
    return [
        (username, mechanism, c.salt, c.iterations, c.stored_key, c.server_key)
        for mechanism, c in credentials.items()
    ]


@atomic
def _create_user(username, credentials):
    if not (yield execute("INSERT INTO users (username) VALUES (?) ON CONFLICT (username) DO NOTHING", username)):
        return False
    if credentials:
        yield execute_many(_INSERT_CREDENTIALS, _credential_rows(username, credentials))
    return True


@atomic
def _set_credentials(username, credentials):
    if not (yield select("SELECT 1 FROM users WHERE username = ?", username)):
        return False
    yield execute("DELETE FROM scram_credentials WHERE username = ?", username)
    if credentials:
        yield execute_many(_INSERT_CREDENTIALS, _credential_rows(username, credentials))
    return True


def _get_credentials(username, mechanism):
    rows = yield select(
        "SELECT salt, iterations, stored_key, server_key FROM scram_credentials"
        " WHERE username = ? AND mechanism = ?",
        username,
        mechanism,
    )
    if not rows:
        return None
    salt, iterations, stored_key, server_key = rows[0]
    return ScramCredentials(salt, iterations, stored_key, server_key)


def _user_exists(username):
    rows = yield select("SELECT 1 FROM users WHERE username = ?", username)
    return bool(rows)


def _delete_user(username):
    # One statement: ON DELETE CASCADE removes everything that references the user within it.
    deleted = yield execute("DELETE FROM users WHERE username = ?", username)
    return bool(deleted)


def _list_users():
    rows = yield select("SELECT username FROM users ORDER BY username")
    return [username for (username,) in rows]


def _count_users():
    [(count,)] = yield select("SELECT COUNT(*) FROM users")
    return count


# -- roster -------------------------------------------------------------------
# Writers touch the roster_items row first and users.roster_version last, so
# concurrent PostgreSQL transactions take row locks in one order (no deadlock)
# and the version bump serializes them per user.


def _roster_items(rows: Iterable[tuple]) -> list[RosterItem]:
    """Fold (jid, name, subscription, ask, approved, group) rows, ordered by jid, into items."""
    items: list[RosterItem] = []
    for jid, name, subscription, ask, approved, group in rows:
        if not items or items[-1].jid != jid:
            items.append(RosterItem(jid, name, subscription, bool(ask), bool(approved), []))
        if group is not None:
            items[-1].groups.append(group)
    return items


def _get_roster(username):
    # One statement, so the version and the items come from one snapshot.
    rows = yield select(
        "SELECT u.roster_version, i.jid, i.name, i.subscription, i.ask, i.approved, g.group_name"
        " FROM users AS u"
        " LEFT JOIN roster_items AS i ON i.username = u.username"
        " LEFT JOIN roster_groups AS g ON g.username = i.username AND g.jid = i.jid"
        " WHERE u.username = ?"
        " ORDER BY i.jid, g.group_name",
        username,
    )
    if not rows:
        return 0, []
    return rows[0][0], _roster_items(row[1:] for row in rows if row[1] is not None)


def _get_roster_item(username, jid):
    rows = yield select(
        "SELECT i.jid, i.name, i.subscription, i.ask, i.approved, g.group_name"
        " FROM roster_items AS i"
        " LEFT JOIN roster_groups AS g ON g.username = i.username AND g.jid = i.jid"
        " WHERE i.username = ? AND i.jid = ?"
        " ORDER BY g.group_name",
        username,
        jid,
    )
    items = _roster_items(rows)
    return items[0] if items else None


def _bump_roster_version(username):
    [(version,)] = yield select(
        "UPDATE users SET roster_version = roster_version + 1 WHERE username = ? RETURNING roster_version",
        username,
    )
    return version


@atomic
def _set_roster_item(username, item):
    yield from _write_roster_item(username, item)
    # The item's foreign key held the users row against deletion, so the row is there.
    return (yield from _bump_roster_version(username))


@atomic
def _set_roster_items(username, items):
    for item in items:
        yield from _write_roster_item(username, item)
    if not items:
        return (yield from _get_roster_version(username))
    return (yield from _bump_roster_version(username))


def _write_roster_item(username, item):
    yield execute(
        "INSERT INTO roster_items (username, jid, name, subscription, ask, approved)"
        " VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (username, jid) DO UPDATE SET name = excluded.name,"
        " subscription = excluded.subscription, ask = excluded.ask, approved = excluded.approved",
        username,
        item.jid,
        item.name,
        item.subscription,
        item.ask,
        item.approved,
    )
    yield execute("DELETE FROM roster_groups WHERE username = ? AND jid = ?", username, item.jid)
    groups = sorted(set(item.groups))
    if groups:
        yield execute_many(
            "INSERT INTO roster_groups (username, jid, group_name) VALUES (?, ?, ?)",
            [(username, item.jid, group) for group in groups],
        )


@atomic
def _delete_roster_item(username, jid):
    if not (yield execute("DELETE FROM roster_items WHERE username = ? AND jid = ?", username, jid)):
        return None
    return (yield from _bump_roster_version(username))


def _get_roster_version(username):
    rows = yield select("SELECT roster_version FROM users WHERE username = ?", username)
    return rows[0][0] if rows else 0


# -- pending inbound subscriptions ---------------------------------------------


def _add_pending_subscription(username, from_jid, stanza_xml):
    # An upsert keeps the row's id, and so the request's place in the queue.
    yield execute(
        "INSERT INTO pending_subscriptions (username, from_jid, stanza_xml) VALUES (?, ?, ?)"
        " ON CONFLICT (username, from_jid) DO UPDATE SET stanza_xml = excluded.stanza_xml",
        username,
        from_jid,
        stanza_xml,
    )


def _remove_pending_subscription(username, from_jid):
    removed = yield execute("DELETE FROM pending_subscriptions WHERE username = ? AND from_jid = ?", username, from_jid)
    return bool(removed)


def _list_pending_subscriptions(username):
    rows = yield select(
        "SELECT from_jid, stanza_xml FROM pending_subscriptions WHERE username = ? ORDER BY id", username
    )
    return [(from_jid, stanza_xml) for from_jid, stanza_xml in rows]


# -- vcard-temp -----------------------------------------------------------------


def _get_vcard(username):
    rows = yield select("SELECT xml FROM vcards WHERE username = ?", username)
    return rows[0][0] if rows else None


def _set_vcard(username, xml):
    if xml is None:
        yield execute("DELETE FROM vcards WHERE username = ?", username)
    else:
        yield execute(
            "INSERT INTO vcards (username, xml) VALUES (?, ?) ON CONFLICT (username) DO UPDATE SET xml = excluded.xml",
            username,
            xml,
        )


# -- offline messages -------------------------------------------------------------


def _count_offline(username):
    if username is None:
        [(count,)] = yield select("SELECT COUNT(*) FROM offline_messages")
    else:
        [(count,)] = yield select("SELECT COUNT(*) FROM offline_messages WHERE username = ?", username)
    return count


# -- the message queue (group commits of offline_messages rows) ---------------------
# stored_at holds the time the server received the message. SQLite has no time type:
# there it is text in UTC, 'YYYY-MM-DD HH:MM:SS.ffffff+00:00', which sorts in time
# order with the 'YYYY-MM-DD HH:MM:SS' that CURRENT_TIMESTAMP wrote for rows of older
# versions of the server. PostgreSQL casts the same text to TIMESTAMPTZ, the explicit
# offset making the session's time zone irrelevant.

# Rows per multi-row INSERT; a chunk's size is a power of two (at most nine statement
# texts), 3 parameters a row.
_QUEUE_INSERT_BATCH = 256

# Values per IN (...) list. A batch is padded (repeating its last value) to a power of two,
# so at most ten statement texts exist: few prepared statements on PostgreSQL, and far
# below either database's limit on parameters.
_IN_LIST_BATCH = 512


def _timestamp_param(moment: datetime, name: str = "received_at") -> str:
    """A point in time as the one text both databases get: UTC, microseconds, explicit offset."""
    if not isinstance(moment, datetime) or moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, not {moment!r}")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00:00")


def _utc(value: datetime | str) -> datetime:
    """A timestamp column's value, as the driver returns it, as an aware UTC datetime."""
    if isinstance(value, str):  # SQLite
        value = datetime.fromisoformat(value)
        if value.tzinfo is None:  # CURRENT_TIMESTAMP: UTC without an offset
            return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _in_lists(values: Sequence[Any]) -> Iterator[tuple[str, list[Any]]]:
    """(placeholders, parameters) for IN lists covering the values, padded as described above."""
    for start in range(0, len(values), _IN_LIST_BATCH):
        batch = list(values[start : start + _IN_LIST_BATCH])
        size = 1 << (len(batch) - 1).bit_length()
        batch += batch[-1:] * (size - len(batch))
        yield ", ".join("?" * size), batch


def _chunk_sizes(count: int) -> Iterator[int]:
    """Split count into powers of two of at most _QUEUE_INSERT_BATCH, largest first."""
    while count:
        size = min(_QUEUE_INSERT_BATCH, 1 << (count.bit_length() - 1))
        yield size
        count -= size


@atomic
def _write_message_queue(appends, deletes):
    # Order of locks, so that this cannot deadlock with delete_user (which locks the
    # users row, then the rows its cascade deletes): first the no-op update locks the
    # appended users' rows, then the deletes, then the inserts. The update's RETURNING
    # tells which users exist, and its locks hold them against deletion until the
    # inserts. On PostgreSQL concurrent calls for one user queue on that lock, and the
    # COUNT after it (a new snapshot under READ COMMITTED) sees what the ones before
    # committed, so the quota holds; it also means a user's ids are drawn in commit
    # order, so a reader never sees a newer row before an older one. On SQLite,
    # BEGIN IMMEDIATE already serializes writers.
    users = sorted({username for username, _, _, _ in appends})
    existing = set()
    for placeholders, batch in _in_lists(users):
        rows = yield select(
            f"UPDATE users SET roster_version = roster_version WHERE username IN ({placeholders}) RETURNING username",
            *batch,
        )
        existing.update(username for (username,) in rows)
    for placeholders, batch in _in_lists(deletes):
        yield execute(f"DELETE FROM offline_messages WHERE id IN ({placeholders})", *batch)
    counted = sorted({username for username, _, _, limit in appends if limit is not None and username in existing})
    counts = dict.fromkeys(counted, 0)
    for placeholders, batch in _in_lists(counted):
        rows = yield select(
            f"SELECT username, COUNT(*) FROM offline_messages WHERE username IN ({placeholders}) GROUP BY username",
            *batch,
        )
        counts.update(rows)
    accepted = []  # positions in appends
    for position, (username, _, _, limit) in enumerate(appends):
        if username not in existing:
            continue
        if username in counts:  # every row counts, also those appended without a quota
            if limit is not None and counts[username] >= limit:
                continue
            counts[username] += 1
        accepted.append(position)
    ids: list[int | None] = [None] * len(appends)
    start = 0
    for size in _chunk_sizes(len(accepted)):
        chunk = accepted[start : start + size]
        start += size
        params = [value for position in chunk for value in appends[position][:3]]
        rows = yield select(
            "INSERT INTO offline_messages (username, stanza_xml, stored_at) VALUES "
            + ", ".join(["(?, ?, ?)"] * size)
            + " RETURNING id",
            *params,
        )
        # Both databases number the rows of one VALUES list in its order, but neither
        # promises the order of RETURNING: match sorted ids to the rows.
        for position, new_id in zip(chunk, sorted(new_id for (new_id,) in rows), strict=True):
            ids[position] = new_id
    return ids


def _list_queued(username, after, limit):
    sql = "SELECT id, stanza_xml, stored_at FROM offline_messages WHERE username = ? AND id > ? ORDER BY id"
    rows = yield (select(sql, username, after) if limit is None else select(sql + " LIMIT ?", username, after, limit))
    return [(message_id, stanza_xml, _utc(stored_at)) for message_id, stanza_xml, stored_at in rows]


# -- settings ---------------------------------------------------------------------


def _get_setting(key):
    rows = yield select("SELECT value FROM settings WHERE key = ?", key)
    return rows[0][0] if rows else None


def _set_setting(key, value):
    yield execute(
        "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        key,
        value,
    )


def _set_setting_if_absent(key, value):
    # The no-op update makes RETURNING yield the stored row in both cases, in one statement.
    [(stored,)] = yield select(
        "INSERT INTO settings (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = settings.value RETURNING value",
        key,
        value,
    )
    return stored


# -- XEP-0357 push registrations of accounts ------------------------------------------
# "Recently used" is the later of created_at and last_success_at. Written as a CASE:
# SQLite's max(a, b) is NULL when either is, PostgreSQL's GREATEST skips NULLs.

_PUSH_COLUMNS = "username, jid, node, options_xml, created_at, last_success_at, strikes"
_PUSH_RECENT = (
    "CASE WHEN last_success_at IS NULL OR last_success_at < created_at THEN created_at ELSE last_success_at END"
)


def _push_registration(row: tuple) -> PushRegistration:
    username, jid, node, options_xml, created_at, last_success_at, strikes = row
    return PushRegistration(
        username, jid, node, options_xml, _utc(created_at), None if last_success_at is None else _utc(last_success_at),
        strikes,
    )


@atomic
def _push_enable(username, jid, node, options_xml, now, max_registrations):
    # Lock the account's row first (also telling whether it exists): concurrent enables for
    # one account queue here on PostgreSQL, so the count below sees what they committed.
    # delete_user locks the same row first, so this cannot deadlock with it.
    if not (yield select("UPDATE users SET roster_version = roster_version WHERE username = ? RETURNING username",
                         username)):
        raise StorageError(f"push_enable: no such user {username!r}")
    yield execute(
        "INSERT INTO push_registrations (username, jid, node, options_xml, created_at, strikes)"
        " VALUES (?, ?, ?, ?, ?, 0)"
        " ON CONFLICT (username, jid, node) DO UPDATE SET options_xml = excluded.options_xml,"
        " created_at = excluded.created_at, strikes = 0",
        username, jid, node, options_xml, now,
    )
    rows = yield select(f"SELECT {_PUSH_COLUMNS} FROM push_registrations WHERE username = ?", username)
    if len(rows) <= max_registrations:
        return []
    registrations = [_push_registration(row) for row in rows]

    def recency(r: PushRegistration):
        latest = r.created_at if r.last_success_at is None else max(r.created_at, r.last_success_at)
        # The one just enabled first whatever the clocks say; then most recent first.
        return ((r.jid, r.node) != (jid, node), -latest.timestamp(), -r.created_at.timestamp(), r.jid, r.node)

    dropped = sorted(registrations, key=recency)[max_registrations:]
    yield execute_many(
        "DELETE FROM push_registrations WHERE username = ? AND jid = ? AND node = ?",
        [(username, r.jid, r.node) for r in dropped],
    )
    return dropped


def _push_disable(username, jid, node):
    if node is None:
        rows = yield select(
            f"DELETE FROM push_registrations WHERE username = ? AND jid = ? RETURNING {_PUSH_COLUMNS}", username, jid
        )
    else:
        rows = yield select(
            f"DELETE FROM push_registrations WHERE username = ? AND jid = ? AND node = ? RETURNING {_PUSH_COLUMNS}",
            username, jid, node,
        )
    return sorted((_push_registration(row) for row in rows), key=lambda r: (r.created_at, r.jid, r.node))


def _push_registrations(username):
    rows = yield select(
        f"SELECT {_PUSH_COLUMNS} FROM push_registrations WHERE username = ? ORDER BY created_at, jid, node", username
    )
    return [_push_registration(row) for row in rows]


def _push_record_success(username, jid, node, now):
    yield execute(
        "UPDATE push_registrations SET strikes = 0, last_success_at = ? WHERE username = ? AND jid = ? AND node = ?",
        now, username, jid, node,
    )


def _push_record_failure(username, jid, node):
    rows = yield select(
        "UPDATE push_registrations SET strikes = strikes + 1 WHERE username = ? AND jid = ? AND node = ?"
        " RETURNING strikes",
        username, jid, node,
    )
    return rows[0][0] if rows else 0


def _push_expire(unused_since):
    rows = yield select(f"DELETE FROM push_registrations WHERE {_PUSH_RECENT} < ? RETURNING {_PUSH_COLUMNS}",
                        unused_since)
    return sorted((_push_registration(row) for row in rows), key=lambda r: (r.username, r.created_at, r.jid, r.node))


def _count_push_registrations():
    [(count,)] = yield select("SELECT COUNT(*) FROM push_registrations")
    return count


# -- the push app server's devices -------------------------------------------------------

_APPSERVER_COLUMNS = "node, app, token, owner, secret, device_id, muc, created_at, updated_at, last_used_at"
_APPSERVER_RECENT = (
    "CASE WHEN last_used_at IS NULL OR last_used_at < updated_at THEN updated_at ELSE last_used_at END"
)


def _appserver_registration_of(row: tuple) -> AppServerRegistration:
    node, app, token, owner, secret, device_id, muc, created_at, updated_at, last_used_at = row
    return AppServerRegistration(
        node, app, token, owner, secret, device_id, muc or None, _utc(created_at), _utc(updated_at),
        None if last_used_at is None else _utc(last_used_at),
    )


def _appserver_order(r: AppServerRegistration):
    return (r.owner, r.created_at, r.node)


@atomic
def _appserver_register(registration, now, max_per_owner):
    r = registration
    [row] = yield select(
        "INSERT INTO appserver_registrations"
        " (node, app, token, owner, secret, device_id, muc, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (app, owner, device_id, muc) DO UPDATE SET token = excluded.token, updated_at = excluded.updated_at"
        f" RETURNING {_APPSERVER_COLUMNS}",
        r.node, r.app, r.token, r.owner, r.secret, r.device_id, r.muc or "", now, now,
    )
    stored = _appserver_registration_of(row)
    rows = yield select(
        f"SELECT {_APPSERVER_COLUMNS} FROM appserver_registrations WHERE owner = ? AND secret IS NOT NULL", r.owner
    )
    if len(rows) <= max_per_owner:
        return stored, []
    others = [_appserver_registration_of(row) for row in rows]

    def recency(x: AppServerRegistration):
        latest = x.updated_at if x.last_used_at is None else max(x.updated_at, x.last_used_at)
        return (x.node != stored.node, -latest.timestamp(), x.node)

    dropped = sorted(others, key=recency)[max_per_owner:]
    yield execute_many("DELETE FROM appserver_registrations WHERE node = ?", [(x.node,) for x in dropped])
    return stored, sorted(dropped, key=_appserver_order)


def _appserver_registration(node):
    rows = yield select(f"SELECT {_APPSERVER_COLUMNS} FROM appserver_registrations WHERE node = ?", node)
    return _appserver_registration_of(rows[0]) if rows else None


def _appserver_unregister(app, owner, device_id, muc):
    sql = (
        "DELETE FROM appserver_registrations WHERE app = ? AND owner = ? AND device_id = ? AND secret IS NOT NULL"
    )
    if muc is None:
        rows = yield select(f"{sql} RETURNING {_APPSERVER_COLUMNS}", app, owner, device_id)
    else:
        rows = yield select(f"{sql} AND muc = ? RETURNING {_APPSERVER_COLUMNS}", app, owner, device_id, muc)
    return sorted((_appserver_registration_of(row) for row in rows), key=_appserver_order)


def _appserver_remove(node, token):
    deleted = yield execute("DELETE FROM appserver_registrations WHERE node = ? AND token = ?", node, token)
    return bool(deleted)


def _appserver_touch(node, now):
    yield execute("UPDATE appserver_registrations SET last_used_at = ? WHERE node = ?", now, node)


def _appserver_seen(node, app, owner, now):
    yield execute(
        "INSERT INTO appserver_registrations (node, app, token, owner, created_at, updated_at, last_used_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (node) DO UPDATE SET last_used_at = excluded.last_used_at, app = excluded.app"
        " WHERE appserver_registrations.secret IS NULL",
        node, app, node, owner, now, now, now,
    )


def _appserver_delete_owner(owner):
    rows = yield select(f"DELETE FROM appserver_registrations WHERE owner = ? RETURNING {_APPSERVER_COLUMNS}", owner)
    return sorted((_appserver_registration_of(row) for row in rows), key=_appserver_order)


def _appserver_registrations(owner):
    sql = f"SELECT {_APPSERVER_COLUMNS} FROM appserver_registrations"
    order = " ORDER BY owner, created_at, node"
    rows = yield (select(sql + order) if owner is None else select(sql + " WHERE owner = ?" + order, owner))
    return [_appserver_registration_of(row) for row in rows]


def _appserver_expire(unused_since):
    rows = yield select(
        f"DELETE FROM appserver_registrations WHERE {_APPSERVER_RECENT} < ? RETURNING {_APPSERVER_COLUMNS}",
        unused_since,
    )
    return sorted((_appserver_registration_of(row) for row in rows), key=_appserver_order)


def _count_appserver_registrations():
    rows = yield select("SELECT app, COUNT(*) FROM appserver_registrations GROUP BY app ORDER BY app")
    return {app: count for app, count in rows}


# -- XEP-0198 sessions across a graceful restart ------------------------------------

_RESUMABLE_COLUMNS = "resume_id, username, resource, handled, acked, remaining, details, saved_at"


@atomic
def _save_resumable_sessions(sessions):
    stored = 0
    for s in sessions:
        yield execute("DELETE FROM resumable_sessions WHERE resume_id = ?", s.resume_id)
        # INSERT ... SELECT ... WHERE EXISTS: a user deleted meanwhile is skipped, not an error for the batch.
        stored += yield execute(
            f"INSERT INTO resumable_sessions ({_RESUMABLE_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, ?"
            " WHERE EXISTS (SELECT 1 FROM users WHERE username = ?)",
            s.resume_id, s.username, s.resource, s.handled, s.acked, float(s.remaining), s.details,
            _timestamp_param(s.saved_at, "saved_at"), s.username,
        )
    return stored


@atomic
def _take_resumable_sessions():
    rows = yield select(f"SELECT {_RESUMABLE_COLUMNS} FROM resumable_sessions ORDER BY saved_at, resume_id")
    yield execute("DELETE FROM resumable_sessions")
    return [ResumableSession(resume_id, username, resource, handled, acked, remaining, details, _utc(saved_at))
            for resume_id, username, resource, handled, acked, remaining, details, saved_at in rows]


# -- XEP-0363 HTTP file upload ------------------------------------------------------

_UPLOAD_COLUMNS = "slot, username, filename, size, content_type, created_at, uploaded_at"


def _upload_slot_of(row: tuple) -> UploadSlot:
    slot, username, filename, size, content_type, created_at, uploaded_at = row
    return UploadSlot(slot, username, filename, size, content_type, _utc(created_at),
                      None if uploaded_at is None else _utc(uploaded_at))


@atomic
def _upload_reserve(slot, quota):
    # Lock the account's row first (and learn whether it exists): concurrent requests of one
    # account queue here on PostgreSQL, so the sum below sees what they committed.
    if not (yield select("UPDATE users SET roster_version = roster_version WHERE username = ? RETURNING username",
                         slot.username)):
        raise StorageError(f"upload_reserve: no such user {slot.username!r}")
    if quota:
        [(used,)] = yield select("SELECT COALESCE(SUM(size), 0) FROM uploads WHERE username = ?", slot.username)
        if used + slot.size > quota:
            return int(used)
    yield execute(
        f"INSERT INTO uploads ({_UPLOAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL)",
        slot.slot, slot.username, slot.filename, slot.size, slot.content_type,
        _timestamp_param(slot.created_at, "created_at"),
    )
    return None


def _upload_slot(slot):
    rows = yield select(f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE slot = ?", slot)
    return _upload_slot_of(rows[0]) if rows else None


def _upload_complete(slot, now):
    changed = yield execute("UPDATE uploads SET uploaded_at = ? WHERE slot = ? AND uploaded_at IS NULL", now, slot)
    return bool(changed)


def _upload_expire(stored_before, reserved_before):
    sql = "DELETE FROM uploads WHERE (uploaded_at IS NULL AND created_at < ?)"
    if stored_before is None:
        rows = yield select(sql + " RETURNING slot", reserved_before)
    else:
        rows = yield select(sql + " OR uploaded_at < ? RETURNING slot", reserved_before, stored_before)
    return sorted(slot for (slot,) in rows)


def _upload_known(slots):
    known = set()
    for placeholders, params in _in_lists(slots):
        rows = yield select(f"SELECT slot FROM uploads WHERE slot IN ({placeholders})", *params)
        known.update(slot for (slot,) in rows)
    return known


# -- PEP nodes and items -------------------------------------------------------------
# A publish locks its node's row (a no-op UPDATE) before touching items, so that concurrent
# publishes to one node on PostgreSQL take turns: the replace-by-id and the trim to
# max_items then never see each other half done.


def _positive(value: int, name: str) -> int:
    if operator.index(value) < 1:
        raise ValueError(f"{name} must be at least 1, not {value!r}")
    return value


def _pep_nodes(username):
    rows = yield select("SELECT node, config FROM pep_nodes WHERE username = ? ORDER BY node", username)
    return dict(rows)


def _pep_find_nodes(usernames, nodes):
    found = []
    for user_placeholders, user_batch in _in_lists(usernames):
        for node_placeholders, node_batch in _in_lists(nodes):
            rows = yield select(
                f"SELECT username, node, config FROM pep_nodes WHERE username IN ({user_placeholders})"
                f" AND node IN ({node_placeholders})",
                *user_batch, *node_batch,
            )
            found.extend(rows)
    return sorted(set(map(tuple, found)))


def _pep_create_node(username, node, config):
    created = yield execute(
        "INSERT INTO pep_nodes (username, node, config) VALUES (?, ?, ?) ON CONFLICT (username, node) DO NOTHING",
        username, node, config,
    )
    return bool(created)


def _pep_trim(username, node, max_items):
    yield execute(
        "DELETE FROM pep_items WHERE username = ? AND node = ? AND id NOT IN"
        " (SELECT id FROM pep_items WHERE username = ? AND node = ? ORDER BY id DESC LIMIT ?)",
        username, node, username, node, max_items,
    )


@atomic
def _pep_configure_node(username, node, config, max_items):
    if not (yield execute("UPDATE pep_nodes SET config = ? WHERE username = ? AND node = ?", config, username, node)):
        return False
    yield from _pep_trim(username, node, max_items)
    return True


def _pep_delete_node(username, node):
    deleted = yield execute("DELETE FROM pep_nodes WHERE username = ? AND node = ?", username, node)
    return bool(deleted)


@atomic
def _pep_publish(username, node, config, item_id, payload, publisher, published_at, max_items):
    created = yield from _pep_create_node(username, node, config)
    yield execute("UPDATE pep_nodes SET config = config WHERE username = ? AND node = ?", username, node)
    yield execute("DELETE FROM pep_items WHERE username = ? AND node = ? AND item_id = ?", username, node, item_id)
    yield execute(
        "INSERT INTO pep_items (username, node, item_id, payload, publisher, published_at) VALUES (?, ?, ?, ?, ?, ?)",
        username, node, item_id, payload, publisher, published_at,
    )
    yield from _pep_trim(username, node, max_items)
    return created


def _pep_items(username, node, item_ids, newest):
    sql = "SELECT item_id, payload, publisher, published_at FROM pep_items WHERE username = ? AND node = ?"
    params: list[Any] = [username, node]
    if item_ids is not None:
        if not item_ids:
            return []
        sql += f" AND item_id IN ({', '.join('?' * len(item_ids))})"
        params += item_ids
    sql += " ORDER BY id DESC"
    if newest is not None:
        sql += " LIMIT ?"
        params.append(newest)
    rows = yield select(sql, *params)
    return [PepItem(item_id, payload, publisher, _utc(published_at))
            for item_id, payload, publisher, published_at in reversed(rows)]


def _pep_retract(username, node, item_id):
    deleted = yield execute(
        "DELETE FROM pep_items WHERE username = ? AND node = ? AND item_id = ?", username, node, item_id
    )
    return bool(deleted)


def _pep_purge(username, node):
    return (yield execute("DELETE FROM pep_items WHERE username = ? AND node = ?", username, node))


# -- private XML storage ---------------------------------------------------------------


def _get_private_xml(username, namespace):
    rows = yield select("SELECT xml FROM private_xml WHERE username = ? AND namespace = ?", username, namespace)
    return rows[0][0] if rows else None


def _set_private_xml(username, namespace, xml):
    if xml is None:
        yield execute("DELETE FROM private_xml WHERE username = ? AND namespace = ?", username, namespace)
    else:
        yield execute(
            "INSERT INTO private_xml (username, namespace, xml) VALUES (?, ?, ?)"
            " ON CONFLICT (username, namespace) DO UPDATE SET xml = excluded.xml",
            username, namespace, xml,
        )


# -- block lists (XEP-0191) -------------------------------------------------------


def _get_blocklist(username):
    rows = yield select("SELECT jid FROM blocked_jids WHERE username = ? ORDER BY jid", username)
    return [jid for (jid,) in rows]


@atomic
def _block_jids(username, jids, max_items):
    present = set((yield from _get_blocklist(username)))
    new = sorted(set(jids) - present)
    if len(present) + len(new) > max_items:
        return None
    if new:
        yield execute_many("INSERT INTO blocked_jids (username, jid) VALUES (?, ?)", [(username, jid) for jid in new])
    return new


@atomic
def _unblock_jids(username, jids):
    present = yield from _get_blocklist(username)
    gone = present if jids is None else sorted(set(jids) & set(present))
    if jids is None:
        yield execute("DELETE FROM blocked_jids WHERE username = ?", username)
        return gone
    for placeholders, values in _in_lists(gone):
        yield execute(f"DELETE FROM blocked_jids WHERE username = ? AND jid IN ({placeholders})", username, *values)
    return gone


# -- XEP-0313 message archive --------------------------------------------------------
# seq is the primary key (unique across archives, see migrations.py); an account's rows are
# read through (owner, seq) or (owner, with_bare, seq), so a page is an index range scan
# however large the archive is.

_ARCHIVE_COLUMNS = "seq, tag, owner, with_bare, with_resource, stanza_xml"


@atomic
def _mam_append(rows):
    # Rows of accounts deleted meanwhile are skipped (the rest of the batch must not fail for
    # them); a seq stored already (a retried batch whose commit did happen) is skipped too.
    existing = set()
    for placeholders, batch in _in_lists(sorted({row.owner for row in rows})):
        found = yield select(f"SELECT username FROM users WHERE username IN ({placeholders})", *batch)
        existing.update(username for (username,) in found)
    kept = [row for row in rows if row.owner in existing]
    stored = 0
    start = 0
    for size in _chunk_sizes(len(kept)):
        chunk = kept[start : start + size]
        start += size
        params = [value for row in chunk
                  for value in (row.seq, row.tag, row.owner, row.with_bare, row.with_resource, row.stanza_xml)]
        stored += yield execute(
            f"INSERT INTO mam_archive ({_ARCHIVE_COLUMNS}) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?, ?)"] * size)
            + " ON CONFLICT (seq) DO NOTHING",
            *params,
        )
    return stored


def _archive_where(owner: str, where: ArchiveFilter) -> tuple[str, list[Any]]:
    clauses = ["owner = ?"]
    params: list[Any] = [owner]
    if where.with_bare is not None:
        clauses.append("with_bare = ?")
        params.append(where.with_bare)
        if where.with_resource is not None:
            clauses.append("with_resource = ?")
            params.append(where.with_resource)
    for column_test, value in (("seq >= ?", where.start), ("seq <= ?", where.end),
                               ("seq > ?", where.after), ("seq < ?", where.before)):
        if value is not None:
            clauses.append(column_test)
            params.append(value)
    if where.ids is not None:
        ids = sorted(set(where.ids)) or [-1]   # no ids: nothing matches
        ids += ids[-1:] * ((1 << (len(ids) - 1).bit_length()) - len(ids))   # few statement texts, as _in_lists
        clauses.append(f"seq IN ({', '.join('?' * len(ids))})")
        params.extend(ids)
    return " AND ".join(clauses), params


def _mam_query(owner, where, limit, backwards, offset, known):
    if known:
        wanted = sorted({seq for seq, _ in known})
        found = set()
        for placeholders, batch in _in_lists(wanted):
            rows = yield select(f"SELECT seq, tag FROM mam_archive WHERE owner = ? AND seq IN ({placeholders})",
                                owner, *batch)
            found.update(rows)
        if any((seq, tag) not in found for seq, tag in known):
            return None
    condition, params = _archive_where(owner, where)
    order = "DESC" if backwards else "ASC"
    sql = (f"SELECT seq, tag, with_bare, stanza_xml FROM mam_archive WHERE {condition}"
           f" ORDER BY seq {order} LIMIT ?")
    params.append(limit)
    if offset:
        sql += " OFFSET ?"
        params.append(offset)
    rows = yield select(sql, *params)
    return [ArchivedMessage(seq, tag, with_bare, stanza_xml) for seq, tag, with_bare, stanza_xml in rows]


def _mam_count(owner, where):
    condition, params = _archive_where(owner, where)
    [(count,)] = yield select(f"SELECT COUNT(*) FROM mam_archive WHERE {condition}", *params)
    return count


def _mam_bounds(owner):
    ends = []
    for order in ("ASC", "DESC"):
        rows = yield select(f"SELECT seq, tag, with_bare, stanza_xml FROM mam_archive WHERE owner = ?"
                            f" ORDER BY seq {order} LIMIT 1", owner)
        if not rows:
            return None
        ends.append(ArchivedMessage(*rows[0]))
    return ends[0], ends[1]


def _mam_prefs(username):
    rows = yield select(
        "SELECT p.default_mode, p.always_jids, p.never_jids FROM users u"
        " LEFT JOIN mam_prefs p ON p.username = u.username WHERE u.username = ?",
        username,
    )
    if not rows:
        return False, None
    default, always, never = rows[0]
    if default is None:
        return True, None
    return True, ArchivePrefs(default, tuple(always.split("\n")) if always else (),
                              tuple(never.split("\n")) if never else ())


def _mam_set_prefs(username, prefs):
    yield execute(
        "INSERT INTO mam_prefs (username, default_mode, always_jids, never_jids) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (username) DO UPDATE SET default_mode = excluded.default_mode,"
        " always_jids = excluded.always_jids, never_jids = excluded.never_jids",
        username, prefs.default, "\n".join(prefs.always), "\n".join(prefs.never),
    )


def _mam_expire(before_seq, limit):
    # A bounded batch through the primary key, so expiry never holds a long transaction
    # (or SQLite's one worker thread) on a big archive; the caller repeats while it is full.
    return (yield execute(
        "DELETE FROM mam_archive WHERE seq IN (SELECT seq FROM mam_archive WHERE seq < ? ORDER BY seq LIMIT ?)",
        before_seq, limit,
    ))


def _mam_last_seq():
    [(last,)] = yield select("SELECT MAX(seq) FROM mam_archive")
    return last or 0
