"""The one storage interface the server codes against.

Every method is an asyncio coroutine. Under Twisted's asyncio reactor a caller
bridges with ``Deferred.fromFuture(asyncio.ensure_future(storage.x(...)))``.
Backend failures (lost connection, disk full, unknown user on a write) surface
as StorageError, never as a driver exception, so callers need one ``except``.

Usernames are normalized JID localparts; contact JIDs are normalized bare JIDs.
Writes that concern a user who does not exist raise StorageError, except where
the return value already reports it (set_credentials).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime

from .models import (AppServerRegistration, ArchiveFilter, ArchivePrefs, ArchiveRow, ArchivedMessage, PepItem,
                     PushRegistration, ResumableSession, RosterItem, ScramCredentials, UploadSlot)


class StorageError(Exception):
    """The store could not be opened or an operation failed; the message is meant for the operator."""


class Storage(abc.ABC):
    """Accounts, rosters, pending subscriptions, vCards, offline messages, push registrations and settings."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date (open_storage() calls this)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads; the object is unusable afterwards."""

    # -- accounts ---------------------------------------------------------

    @abc.abstractmethod
    async def create_user(self, username: str, credentials: dict[str, ScramCredentials]) -> bool:
        """Create an account with credentials keyed by SCRAM mechanism name; False if it exists."""

    @abc.abstractmethod
    async def set_credentials(self, username: str, credentials: dict[str, ScramCredentials]) -> bool:
        """Replace all of the user's credentials (a password change); False if there is no such user."""

    @abc.abstractmethod
    async def get_credentials(self, username: str, mechanism: str) -> ScramCredentials | None:
        """The user's keys for one SCRAM mechanism, None if the user or the mechanism is unknown."""

    @abc.abstractmethod
    async def user_exists(self, username: str) -> bool:
        """Whether the account exists."""

    @abc.abstractmethod
    async def delete_user(self, username: str) -> bool:
        """Delete the account and everything stored for it, atomically; False if it did not exist."""

    @abc.abstractmethod
    async def list_users(self) -> list[str]:
        """All usernames, sorted by code point."""

    @abc.abstractmethod
    async def count_users(self) -> int:
        """Number of accounts."""

    # -- roster (RFC 6121) --------------------------------------------------

    @abc.abstractmethod
    async def get_roster(self, username: str) -> tuple[int, list[RosterItem]]:
        """(roster version, items sorted by jid); (0, []) for a user with no roster changes yet."""

    @abc.abstractmethod
    async def get_roster_item(self, username: str, jid: str) -> RosterItem | None:
        """One roster item, None if the contact is not in the roster."""

    @abc.abstractmethod
    async def set_roster_item(self, username: str, item: RosterItem) -> int:
        """Insert or replace an item including its groups; returns the new roster version.

        Groups are a set: duplicates collapse and they come back sorted.
        """

    @abc.abstractmethod
    async def set_roster_items(self, username: str, items: Sequence[RosterItem]) -> int:
        """set_roster_item for many items in one transaction and one version bump (xmppctl import); returns
        the new roster version (the current one for no items)."""

    @abc.abstractmethod
    async def delete_roster_item(self, username: str, jid: str) -> int | None:
        """Remove an item; returns the new roster version, None if there was no such item."""

    @abc.abstractmethod
    async def get_roster_version(self, username: str) -> int:
        """The current roster version: bumped by one on every change, 0 before the first."""

    # -- pending inbound subscription requests (RFC 6121 §3.1.3) ------------

    @abc.abstractmethod
    async def add_pending_subscription(self, username: str, from_jid: str, stanza_xml: str) -> None:
        """Keep a <presence type='subscribe'/> until the user answers; replaces an earlier one.

        A replaced request keeps its place in the queue: the contact has been
        waiting since the first one.
        """

    @abc.abstractmethod
    async def remove_pending_subscription(self, username: str, from_jid: str) -> bool:
        """Forget a pending request (answered or cancelled); False if there was none."""

    @abc.abstractmethod
    async def list_pending_subscriptions(self, username: str) -> list[tuple[str, str]]:
        """(from_jid, stanza_xml) of every pending request, oldest first."""

    # -- vcard-temp (XEP-0054) ------------------------------------------------

    @abc.abstractmethod
    async def get_vcard(self, username: str) -> str | None:
        """The serialized <vCard/>, None if the user never set one."""

    @abc.abstractmethod
    async def set_vcard(self, username: str, xml: str | None) -> None:
        """Store the serialized <vCard/>; None deletes it."""

    # -- offline messages (XEP-0160) and the message queue (journal.py) ----------------
    # One table, written in group commits: one row per message per recipient account,
    # deleted once the recipient has the message. A row nobody is delivering is an
    # offline message. Ids are positive, increase in the order rows were stored and
    # are never given out again, even after deletion, so an id read earlier names one row.

    @abc.abstractmethod
    async def count_offline(self, username: str | None = None) -> int:
        """Number of messages kept for the user (for everyone with None: the queue depth in metrics)."""

    @abc.abstractmethod
    async def write_message_queue(
        self, appends: Sequence[tuple[str, str, datetime, int | None]], deletes: Sequence[int]
    ) -> list[int | None]:
        """One transaction: delete the rows with these ids, then add each (username, stanza_xml, received_at, max_messages).

        Deleted ids may be any user's; unknown ones are ignored. Appends are
        inserted in order, and the returned list gives each one's new id
        (increasing in append order), or None where the append was refused,
        storing nothing: the user does not exist (deleted meanwhile; the rest of
        the batch must not fail for it), or max_messages is not None and the user
        has that many rows already, counting those added earlier in this call.
        Counting and inserting are atomic: concurrent calls never take a user
        past max_messages. received_at is an aware datetime; it comes back as
        UTC with its microseconds. Either everything is committed or, with
        StorageError, nothing is.
        """

    @abc.abstractmethod
    async def list_queued(
        self, username: str, *, after: int = 0, limit: int | None = None
    ) -> list[tuple[int, str, datetime]]:
        """(id, stanza_xml, received_at) of the user's rows with ids above `after`, oldest first; at most limit.

        received_at is an aware UTC datetime. Databases may still hold rows
        written by older versions of the server, before the message queue: for
        those it is the time the database stored them, to the second.
        """

    # -- server-wide settings -------------------------------------------------

    @abc.abstractmethod
    async def get_setting(self, key: str) -> str | None:
        """A server-wide value, None if unset."""

    @abc.abstractmethod
    async def set_setting(self, key: str, value: str) -> None:
        """Store a server-wide value, replacing any earlier one."""

    @abc.abstractmethod
    async def set_setting_if_absent(self, key: str, value: str) -> str:
        """Store value unless the key is set; returns what is stored now (atomic across processes)."""

    # -- XEP-0357 push registrations of accounts (push_xep0357.py) -------------------
    # One row per (account, app server JID, node); deleted with the account. Times are
    # aware datetimes; they come back as UTC with their microseconds.

    @abc.abstractmethod
    async def push_enable(
        self, username: str, jid: str, node: str, options_xml: str | None, now: datetime, max_registrations: int
    ) -> list[PushRegistration]:
        """Insert or replace the registration (username, jid, node), atomically.

        Replacing one sets its options, resets its strikes and makes created_at
        now (last_success_at is kept). If the account then has more than
        max_registrations, the least recently used ones (oldest max(created_at,
        last_success_at)) are deleted and returned; the one just enabled never is.
        Concurrent calls for one account never leave more than max_registrations.
        StorageError if the user does not exist.
        """

    @abc.abstractmethod
    async def push_disable(self, username: str, jid: str, node: str | None) -> list[PushRegistration]:
        """Delete the registration (username, jid, node), or with node None all of the account's at jid; returns them."""

    @abc.abstractmethod
    async def push_registrations(self, username: str) -> list[PushRegistration]:
        """The account's registrations, oldest (created_at) first."""

    @abc.abstractmethod
    async def push_record_success(self, username: str, jid: str, node: str, now: datetime) -> None:
        """A push went through: strikes = 0, last_success_at = now (nothing if the registration is gone)."""

    @abc.abstractmethod
    async def push_record_failure(self, username: str, jid: str, node: str) -> int:
        """A push failed: strikes + 1; returns the new count, 0 if the registration is gone."""

    @abc.abstractmethod
    async def push_expire(self, unused_since: datetime) -> list[PushRegistration]:
        """Delete and return every registration whose max(created_at, last_success_at) is before unused_since."""

    @abc.abstractmethod
    async def count_push_registrations(self) -> int:
        """Number of registrations of all accounts."""

    # -- the push app server's devices (xmppd/appserver) --------------------------------
    # Node -> device token, for the app server hosted in-process and for the one run on
    # its own (which opens its own store). Owners are bare JIDs, possibly of other servers,
    # so rows are not tied to accounts: unused ones expire (appserver_expire).

    @abc.abstractmethod
    async def appserver_register(
        self, registration: AppServerRegistration, now: datetime, max_per_owner: int
    ) -> tuple[AppServerRegistration, list[AppServerRegistration]]:
        """A Conversations/p2-style registration (secret and device_id set), atomically.

        If (app, owner, device_id, muc) is registered already, only its token is
        replaced (updated_at = now) and it keeps its node, secret and created_at,
        so the client's <enable/> stays valid; otherwise the registration is
        inserted with created_at = updated_at = now. Returns (what is stored now,
        registrations of the owner deleted because it has more than
        max_per_owner of this kind: the least recently used go, never this one).
        On PostgreSQL two concurrent calls for one owner may leave one more than
        max_per_owner until the next call.
        """

    @abc.abstractmethod
    async def appserver_registration(self, node: str) -> AppServerRegistration | None:
        """The registration of a node, None if there is none."""

    @abc.abstractmethod
    async def appserver_unregister(
        self, app: str, owner: str, device_id: str, muc: str | None
    ) -> list[AppServerRegistration]:
        """Delete the owner's p2-style registrations of one device: the one for muc, or with muc None every one
        (with or without a room); returns them."""

    @abc.abstractmethod
    async def appserver_remove(self, node: str, token: str) -> bool:
        """Delete the node's registration if it still leads to this token (a dead token: a registration
        that meanwhile got a new token stays); whether one was deleted."""

    @abc.abstractmethod
    async def appserver_touch(self, node: str, now: datetime) -> None:
        """Record a push the provider accepted: last_used_at = now (nothing if the node is unknown)."""

    @abc.abstractmethod
    async def appserver_seen(self, node: str, app: str, owner: str, now: datetime) -> None:
        """Record a push the provider accepted for a Monal-style device (node = token): insert it with
        created_at = updated_at = last_used_at = now, or set last_used_at (and app) of the row there is.
        A p2-style row of the same node is left alone."""

    @abc.abstractmethod
    async def appserver_delete_owner(self, owner: str) -> list[AppServerRegistration]:
        """Delete every registration of this owner (both kinds; an account that was deleted); returns them."""

    @abc.abstractmethod
    async def appserver_registrations(self, owner: str | None = None) -> list[AppServerRegistration]:
        """Registrations of one owner, or of everyone, sorted by owner then created_at (then node)."""

    @abc.abstractmethod
    async def appserver_expire(self, unused_since: datetime) -> list[AppServerRegistration]:
        """Delete and return registrations whose max(updated_at, last_used_at) is before unused_since."""

    @abc.abstractmethod
    async def count_appserver_registrations(self) -> dict[str, int]:
        """Number of registrations per app (apps without any are left out)."""

    # -- XEP-0198 sessions across a graceful restart (stream_mgmt.py) ---------------------

    @abc.abstractmethod
    async def save_resumable_sessions(self, sessions: Sequence[ResumableSession]) -> int:
        """Store the sessions (replacing rows with the same resume_id) in one transaction; those of
        users that no longer exist are skipped. Returns how many were stored."""

    @abc.abstractmethod
    async def take_resumable_sessions(self) -> list[ResumableSession]:
        """Return every saved session and delete them, in one transaction (a session is restored once)."""

    # -- XEP-0363 HTTP file upload (upload.py) ------------------------------------------
    # One row per slot, stored file or not yet; deleted with the account (its files are
    # then swept from disk by the upload module's expiry job).

    @abc.abstractmethod
    async def upload_reserve(self, slot: UploadSlot, quota: int) -> int | None:
        """Insert the slot unless the account's slots (stored files and slots not yet used)
        would then hold more than quota bytes (0: no quota), atomically: concurrent requests
        of one account cannot together pass the quota. Returns None when inserted, else the
        bytes the account holds already. StorageError if the user does not exist."""

    @abc.abstractmethod
    async def upload_slot(self, slot: str) -> UploadSlot | None:
        """The slot, None if there is no such slot (never made, expired, or its account deleted)."""

    @abc.abstractmethod
    async def upload_complete(self, slot: str, now: datetime) -> bool:
        """Mark the slot's file as stored; False if it is gone or was completed already."""

    @abc.abstractmethod
    async def upload_expire(self, stored_before: datetime | None, reserved_before: datetime) -> list[str]:
        """Delete and return (sorted) the slots whose file was stored before stored_before (None:
        stored files never expire) and those reserved before reserved_before but never used."""

    @abc.abstractmethod
    async def upload_known(self, slots: Sequence[str]) -> set[str]:
        """Which of these slots exist."""

    # -- PEP (XEP-0163) nodes and items (pep.py) ----------------------------------------
    # A node belongs to an account and goes with it; its items go with the node. config is
    # the node's configuration as a JSON text, opaque here. Items come back oldest first;
    # re-publishing an item id makes it the newest.

    @abc.abstractmethod
    async def pep_nodes(self, username: str) -> dict[str, str]:
        """node -> config of every node of the account."""

    @abc.abstractmethod
    async def pep_find_nodes(self, usernames: Sequence[str], nodes: Sequence[str]) -> list[tuple[str, str, str]]:
        """(username, node, config) of every node with one of these names of one of these accounts, sorted."""

    @abc.abstractmethod
    async def pep_create_node(self, username: str, node: str, config: str) -> bool:
        """Create a node; False if it exists. StorageError if the user does not exist."""

    @abc.abstractmethod
    async def pep_configure_node(self, username: str, node: str, config: str, max_items: int) -> bool:
        """Replace the node's config and keep only its max_items newest items; False if there is no node."""

    @abc.abstractmethod
    async def pep_delete_node(self, username: str, node: str) -> bool:
        """Delete the node and its items; False if there was none."""

    @abc.abstractmethod
    async def pep_publish(self, username: str, node: str, config: str, item: PepItem, max_items: int) -> bool:
        """Store an item, atomically: the node is created with config if it does not exist (True is
        returned then), an item with the same id is replaced, and only the max_items newest are kept."""

    @abc.abstractmethod
    async def pep_items(
        self, username: str, node: str, *, item_ids: Sequence[str] | None = None, newest: int | None = None
    ) -> list[PepItem]:
        """The node's items with these ids (all with None), of those the `newest` newest; oldest first."""

    @abc.abstractmethod
    async def pep_retract(self, username: str, node: str, item_id: str) -> bool:
        """Delete one item; False if there was no such item."""

    @abc.abstractmethod
    async def pep_purge(self, username: str, node: str) -> int:
        """Delete every item of the node; returns how many."""

    # -- private XML storage (XEP-0049, private_xml.py) -----------------------------------

    @abc.abstractmethod
    async def get_private_xml(self, username: str, namespace: str) -> str | None:
        """The serialised element stored under its namespace, None if none is."""

    @abc.abstractmethod
    async def set_private_xml(self, username: str, namespace: str, xml: str | None) -> None:
        """Store (or with None delete) the element for its namespace. StorageError for an unknown user."""

    # -- block lists (XEP-0191) ----------------------------------------------------

    @abc.abstractmethod
    async def get_blocklist(self, username: str) -> list[str]:
        """The JIDs the user blocks, sorted."""

    @abc.abstractmethod
    async def block_jids(self, username: str, jids: list[str], max_items: int) -> list[str] | None:
        """Add JIDs to the block list (ones already there are fine); returns those that were new, or
        None, changing nothing, if the list would then hold more than max_items."""

    @abc.abstractmethod
    async def unblock_jids(self, username: str, jids: list[str] | None) -> list[str]:
        """Remove these JIDs (None: all of them) from the block list; returns those that were there."""

    # -- XEP-0313 message archives (mam.py) ---------------------------------------------
    # One row per message per account archiving it; deleted with the account. Rows are
    # written in batches by mam.ArchiveWriter and read a page at a time.

    @abc.abstractmethod
    async def mam_append(self, rows: Sequence[ArchiveRow]) -> int:
        """Archive the rows in one transaction; returns how many were stored.

        A row whose owner does not exist (deleted meanwhile) is skipped, and so
        is one whose seq is stored already (a batch retried after a failure that
        happened after its commit), so the call can be repeated safely.
        """

    @abc.abstractmethod
    async def mam_query(
        self, owner: str, where: ArchiveFilter, *, limit: int, backwards: bool = False, offset: int = 0,
        known: Sequence[tuple[int, int]] = (),
    ) -> list[ArchivedMessage] | None:
        """Up to `limit` messages of the owner's archive matching `where`, after skipping `offset`.

        Oldest first; with backwards, newest first (the caller reverses a page read backwards).
        None if one of the `known` (seq, tag) pairs, ids the client named, is not in this archive.
        """

    @abc.abstractmethod
    async def mam_count(self, owner: str, where: ArchiveFilter) -> int:
        """How many messages of the owner's archive match `where`."""

    @abc.abstractmethod
    async def mam_bounds(self, owner: str) -> tuple[ArchivedMessage, ArchivedMessage] | None:
        """The oldest and the newest message of the archive; None if it is empty."""

    @abc.abstractmethod
    async def mam_prefs(self, username: str) -> tuple[bool, ArchivePrefs | None]:
        """(whether the account exists, its stored preferences or None if it never set any)."""

    @abc.abstractmethod
    async def mam_set_prefs(self, username: str, prefs: ArchivePrefs) -> None:
        """Store the account's preferences, replacing earlier ones; StorageError if there is no such user."""

    @abc.abstractmethod
    async def mam_expire(self, before_seq: int, limit: int) -> int:
        """Delete at most `limit` of the oldest messages (of all archives) with seq below before_seq;
        returns how many. The caller repeats while it gets `limit`."""

    @abc.abstractmethod
    async def mam_last_seq(self) -> int:
        """The largest seq ever stored and still present (0 if none): new seqs start above it."""
