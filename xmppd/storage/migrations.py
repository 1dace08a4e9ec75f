"""Versioned schema migrations: one ordered list, each written once for both SQL dialects.

A migration's statements use a few upper-case words in braces where SQLite
and PostgreSQL spell a type differently; DIALECT_WORDS fills them in. So the
two schemas are the same text, differing only in that table:

  {KEY}        text that is compared and sorted: byte-wise (code point order)
               on both, so ORDER BY agrees between backends and with Python
  {BYTES}      binary data
  {SERIAL}     an integer primary key that new rows get in increasing order
               (SQLite may reuse the id of the newest row once it is deleted)
  {COUNTER}    the same, but an id is never given out twice, even after its
               row is deleted (an id handed to a client stays unambiguous)
  {BIGKEY}     a 64-bit integer primary key the application assigns (SQLite's
               rowid, so the table is ordered by it without another index)
  {TIMESTAMP}  a point in time (SQLite has no such type and stores text; see
               sql._timestamp_param for the one format written, which sorts
               in time order as text)

The store applies all pending migrations in one transaction when it opens
(DDL is transactional on both), recording each in schema_version; a database
newer than this code is refused rather than touched.

To change the schema, append a Migration with the next version; never edit
one that has shipped. Write a literal brace as {{ or }}. Tables holding a
user's data reference users (username) ON DELETE CASCADE, so delete_user
stays one statement.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import StorageError
from .sql import atomic, execute, select

DIALECT_WORDS = {
    "sqlite": {
        "KEY": "TEXT",  # SQLite's default BINARY collation compares the UTF-8 bytes
        "BYTES": "BLOB",
        "SERIAL": "INTEGER PRIMARY KEY",  # the rowid: a new row gets max(rowid) + 1
        "COUNTER": "INTEGER PRIMARY KEY AUTOINCREMENT",  # the rowid, above any it ever had (sqlite_sequence)
        "TIMESTAMP": "TEXT",
        "BIGKEY": "INTEGER PRIMARY KEY",
    },
    "postgresql": {
        "KEY": 'TEXT COLLATE "C"',  # not the database's locale
        "BYTES": "BYTEA",
        "SERIAL": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "COUNTER": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",  # a sequence never goes back
        "TIMESTAMP": "TIMESTAMPTZ",
        "BIGKEY": "BIGINT PRIMARY KEY",
    },
}

# Arbitrary but fixed: the ASCII of "xmppd". Held for the migration transaction,
# so two processes starting on one PostgreSQL database migrate one after the other.
ADVISORY_LOCK_KEY = 0x786D707064


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]

    def sql(self, dialect: str) -> list[str]:
        return [statement.format_map(DIALECT_WORDS[dialect]) for statement in self.statements]


MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "accounts, rosters, pending subscriptions, vCards, settings",
        (
            """CREATE TABLE users (
                username {KEY} PRIMARY KEY,
                roster_version BIGINT NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE scram_credentials (
                username {KEY} NOT NULL REFERENCES users (username) ON DELETE CASCADE,
                mechanism {KEY} NOT NULL,
                salt {BYTES} NOT NULL,
                iterations INTEGER NOT NULL,
                stored_key {BYTES} NOT NULL,
                server_key {BYTES} NOT NULL,
                PRIMARY KEY (username, mechanism)
            )""",
            """CREATE TABLE roster_items (
                username {KEY} NOT NULL REFERENCES users (username) ON DELETE CASCADE,
                jid {KEY} NOT NULL,
                name TEXT,
                subscription TEXT NOT NULL CHECK (subscription IN ('none', 'to', 'from', 'both')),
                ask BOOLEAN NOT NULL,
                approved BOOLEAN NOT NULL,
                PRIMARY KEY (username, jid)
            )""",
            """CREATE TABLE roster_groups (
                username {KEY} NOT NULL,
                jid {KEY} NOT NULL,
                group_name {KEY} NOT NULL,
                PRIMARY KEY (username, jid, group_name),
                FOREIGN KEY (username, jid) REFERENCES roster_items (username, jid) ON DELETE CASCADE
            )""",
            """CREATE TABLE pending_subscriptions (
                id {SERIAL},
                username {KEY} NOT NULL REFERENCES users (username) ON DELETE CASCADE,
                from_jid {KEY} NOT NULL,
                stanza_xml TEXT NOT NULL,
                UNIQUE (username, from_jid)
            )""",
            """CREATE TABLE vcards (
                username {KEY} PRIMARY KEY REFERENCES users (username) ON DELETE CASCADE,
                xml TEXT NOT NULL
            )""",
            """CREATE TABLE settings (
                key {KEY} PRIMARY KEY,
                value TEXT NOT NULL
            )""",
        ),
    ),
    Migration(
        2,
        "offline messages (XEP-0160)",
        (
            """CREATE TABLE offline_messages (
                id {COUNTER},
                username {KEY} NOT NULL REFERENCES users (username) ON DELETE CASCADE,
                stanza_xml TEXT NOT NULL,
                stored_at {TIMESTAMP} NOT NULL DEFAULT CURRENT_TIMESTAMP
            )""",
            "CREATE INDEX offline_messages_username_id ON offline_messages (username, id)",
        ),
    ),
    Migration(
        3,
        "push: XEP-0357 registrations of accounts, and the push app server's devices",
        (
            # The account side (push_xep0357.py): where to publish for a sleeping device.
            """CREATE TABLE push_registrations (
                username {KEY} NOT NULL REFERENCES users (username) ON DELETE CASCADE,
                jid {KEY} NOT NULL,
                node {KEY} NOT NULL,
                options_xml TEXT,
                created_at {TIMESTAMP} NOT NULL,
                last_success_at {TIMESTAMP},
                strikes INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (username, jid, node)
            )""",
            # The app server (xmppd/appserver): node -> device token. Owners may be accounts of
            # other servers (the app server also runs on its own), so no foreign key to users;
            # unused rows expire instead. muc is '' (not NULL) for a registration without a
            # room, so that the UNIQUE constraint finds the row to update on re-registration;
            # Monal-style rows have no device_id (NULL), so they never collide there.
            """CREATE TABLE appserver_registrations (
                node {KEY} PRIMARY KEY,
                app {KEY} NOT NULL,
                token TEXT NOT NULL,
                owner {KEY} NOT NULL,
                secret TEXT,
                device_id {KEY},
                muc {KEY} NOT NULL DEFAULT '',
                created_at {TIMESTAMP} NOT NULL,
                updated_at {TIMESTAMP} NOT NULL,
                last_used_at {TIMESTAMP},
                UNIQUE (app, owner, device_id, muc)
            )""",
            "CREATE INDEX appserver_registrations_owner ON appserver_registrations (owner, created_at)",
        ),
    ),
    Migration(
        4,
        "XEP-0198 sessions kept resumable across a graceful restart",
        (
            # Written by a graceful stop, read and deleted at the next start (stream_mgmt.py): one row per
            # resumable session. details is JSON the module owns (unacknowledged queue, presence, push device);
            # the queue's messages stay rows of offline_messages, referenced by id.
            """CREATE TABLE resumable_sessions (
                resume_id {KEY} PRIMARY KEY,
                username {KEY} NOT NULL REFERENCES users (username) ON DELETE CASCADE,
                resource TEXT NOT NULL,
                handled BIGINT NOT NULL,
                acked BIGINT NOT NULL,
                remaining DOUBLE PRECISION NOT NULL,
                details TEXT NOT NULL,
                saved_at {TIMESTAMP} NOT NULL
            )""",
        ),
    ),
    Migration(
        5,
        "HTTP file upload (XEP-0363): slots and stored files",
        (
            # A slot's file lives at <[upload] directory>/<slot>; its size counts against the
            # account's quota from the slot request on. uploaded_at is NULL until the PUT is complete.
            """CREATE TABLE uploads (
                slot {KEY} PRIMARY KEY,
                username {KEY} NOT NULL REFERENCES users (username) ON DELETE CASCADE,
                filename TEXT NOT NULL,
                size BIGINT NOT NULL,
                content_type TEXT NOT NULL,
                created_at {TIMESTAMP} NOT NULL,
                uploaded_at {TIMESTAMP}
            )""",
            "CREATE INDEX uploads_username ON uploads (username)",
            "CREATE INDEX uploads_created_at ON uploads (created_at)",
        ),
    ),
    Migration(
        6,
        "PEP (XEP-0163) nodes and items; private XML storage (XEP-0049)",
        (
            # config is the node's configuration as JSON ({"pubsub#max_items": "1", ...}).
            """CREATE TABLE pep_nodes (
                username {KEY} NOT NULL REFERENCES users (username) ON DELETE CASCADE,
                node {KEY} NOT NULL,
                config TEXT NOT NULL,
                PRIMARY KEY (username, node)
            )""",
            # id orders a node's items by publication; a re-published item id gets a new row.
            """CREATE TABLE pep_items (
                id {COUNTER},
                username {KEY} NOT NULL,
                node {KEY} NOT NULL,
                item_id {KEY} NOT NULL,
                payload TEXT NOT NULL,
                publisher {KEY} NOT NULL,
                published_at {TIMESTAMP} NOT NULL,
                UNIQUE (username, node, item_id),
                FOREIGN KEY (username, node) REFERENCES pep_nodes (username, node) ON DELETE CASCADE
            )""",
            "CREATE INDEX pep_items_node_id ON pep_items (username, node, id)",
            """CREATE TABLE private_xml (
                username {KEY} NOT NULL REFERENCES users (username) ON DELETE CASCADE,
                namespace {KEY} NOT NULL,
                xml TEXT NOT NULL,
                PRIMARY KEY (username, namespace)
            )""",
        ),
    ),
    Migration(
        7,
        "XEP-0191 block lists",
        (
            # One row per blocked JID (user@domain/resource, user@domain, domain/resource or domain).
            """CREATE TABLE blocked_jids (
                username {KEY} NOT NULL REFERENCES users (username) ON DELETE CASCADE,
                jid {KEY} NOT NULL,
                PRIMARY KEY (username, jid)
            )""",
        ),
    ),
    Migration(
        8,
        "message archive (XEP-0313) and archiving preferences",
        (
            # seq: microseconds since the epoch when the server took the message, made unique (mam.py);
            # it orders every archive, bounds time queries and lets expiry delete by the primary key.
            """CREATE TABLE mam_archive (
                seq {BIGKEY},
                tag BIGINT NOT NULL,
                owner {KEY} NOT NULL REFERENCES users (username) ON DELETE CASCADE,
                with_bare {KEY} NOT NULL,
                with_resource {KEY} NOT NULL,
                stanza_xml TEXT NOT NULL
            )""",
            "CREATE INDEX mam_archive_owner ON mam_archive (owner, seq)",
            "CREATE INDEX mam_archive_owner_with ON mam_archive (owner, with_bare, seq)",
            # JID lists are newline-separated (a JID holds no newline).
            """CREATE TABLE mam_prefs (
                username {KEY} PRIMARY KEY REFERENCES users (username) ON DELETE CASCADE,
                default_mode TEXT NOT NULL CHECK (default_mode IN ('always', 'never', 'roster')),
                always_jids TEXT NOT NULL,
                never_jids TEXT NOT NULL
            )""",
        ),
    ),
]

_SCHEMA_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied_at {TIMESTAMP} NOT NULL DEFAULT CURRENT_TIMESTAMP
)"""


@atomic
def migrate(dialect: str):
    """Script (see sql.py) bringing the schema up to date; returns the versions it applied.

    On SQLite the backend opens this transaction with BEGIN IMMEDIATE, which
    holds the database's write lock from the start; on PostgreSQL the advisory
    lock plays that part.
    """
    if dialect == "postgresql":
        yield execute("SELECT pg_advisory_xact_lock(?)", ADVISORY_LOCK_KEY)
    yield execute(_SCHEMA_VERSION_TABLE.format_map(DIALECT_WORDS[dialect]))
    [(current,)] = yield select("SELECT COALESCE(MAX(version), 0) FROM schema_version")
    latest = MIGRATIONS[-1].version
    if current > latest:
        raise StorageError(
            f"the database schema is version {current}, newer than this xmppd knows ({latest});"
            " run a newer xmppd or restore a backup"
        )
    applied = []
    for migration in MIGRATIONS:
        if migration.version > current:
            for statement in migration.sql(dialect):
                yield execute(statement)
            yield execute("INSERT INTO schema_version (version) VALUES (?)", migration.version)
            applied.append(migration.version)
    return applied
