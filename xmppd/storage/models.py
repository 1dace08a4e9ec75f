"""Plain records that cross the storage boundary.

They carry no behaviour so that both backends, the protocol modules and the
tests can share them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

SCRAM_MECHANISMS = ("SCRAM-SHA-1", "SCRAM-SHA-256")
SUBSCRIPTIONS = ("none", "to", "from", "both")


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    """What the server keeps of a password for one SCRAM hash (RFC 5802 §3).

    The password itself is never stored; PLAIN logins are checked by deriving
    the StoredKey from the offered password with the stored salt/iterations.
    """

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


@dataclass(slots=True)
class RosterItem:
    """One contact in a user's roster (RFC 6121 §2.1.2).

    ``subscription`` is one of SUBSCRIPTIONS; ``ask`` is True while an
    outbound subscription request is pending ("Pending Out");
    ``approved`` records a pre-approval (RFC 6121 §3.4). The inbound
    "Pending In" half of the state lives in the pending-subscription table,
    because it exists also for contacts that are not in the roster.
    """

    jid: str
    name: str | None = None
    subscription: str = "none"
    ask: bool = False
    approved: bool = False
    groups: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PushRegistration:
    """One XEP-0357 registration of an account (push_xep0357.py): where to publish when a device sleeps.

    ``jid`` and ``node`` are the app server's JID and node the client gave in
    <enable/>; ``options_xml`` is the serialised publish-options form (<x/>) to
    send back with every publish, None if the client gave none. Times are aware
    UTC datetimes; ``strikes`` counts failed pushes in a row.
    """

    username: str
    jid: str
    node: str
    options_xml: str | None
    created_at: datetime
    last_success_at: datetime | None
    strikes: int


@dataclass(frozen=True, slots=True)
class AppServerRegistration:
    """One device known to the push app server (xmppd/appserver): a pubsub node that leads to a token.

    Two kinds, told apart by ``secret``:
    - registered with the Conversations/p2 ad-hoc commands (register-push-fcm,
      register-push-apns): ``node`` and ``secret`` were made by the app server,
      ``owner`` is the bare JID that registered, ``device_id`` the client's
      android-id/device-id, ``muc`` the room for a group-chat registration;
      every publish must carry the secret;
    - Monal/fpush style: no registration; the node *is* the device token, the
      app comes from the publish-option pushModule, ``secret`` and
      ``device_id`` are None and ``owner`` is the JID that first published.
      Such a row is written after the first successful push, for the operator.

    ``updated_at`` is when the token was last set (APNs' "unregistered at"
    timestamp is compared with it); ``last_used_at`` is the last push the
    provider accepted (updated at most about once an hour). Times are aware UTC.
    """

    node: str
    app: str
    token: str
    owner: str
    secret: str | None = None
    device_id: str | None = None
    muc: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_used_at: datetime | None = None

    @property
    def style(self) -> str:
        """"p2" (registered with an ad-hoc command, has a secret) or "module" (Monal/fpush pushModule)."""
        return "module" if self.secret is None else "p2"


@dataclass(frozen=True, slots=True)
class ResumableSession:
    """A XEP-0198 session saved by a graceful stop, to be resumable after the restart.

    ``handled`` is the count of the client's stanzas (h in), ``acked`` the client's last h (the
    queue follows it); ``remaining`` the seconds it may still be resumed; ``details`` JSON that
    stream_mgmt.py writes and reads (the unacknowledged queue, presence, push device).
    """

    resume_id: str
    username: str
    resource: str
    handled: int
    acked: int
    remaining: float
    details: str
    saved_at: datetime


@dataclass(frozen=True, slots=True)
class UploadSlot:
    """One XEP-0363 upload slot (upload.py): a file an account announced, and once PUT, stored.

    ``slot`` is the random, unguessable first part of the file's URL and its
    name on disk; ``filename`` (sanitised), ``size`` and ``content_type`` are what
    the slot request said, and the PUT must match them. ``uploaded_at`` is None
    until the file is complete. Times are aware UTC datetimes.
    """

    slot: str
    username: str
    filename: str
    size: int
    content_type: str
    created_at: datetime
    uploaded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PepItem:
    """One item of a PEP node (pep.py): its id, the serialised payload element, who published it
    (a full JID of the owner) and when (aware UTC)."""

    item_id: str
    payload: str
    publisher: str
    published_at: datetime


# -- XEP-0313 message archive (mam.py) ------------------------------------------------

ARCHIVE_DEFAULTS = ("always", "never", "roster")


@dataclass(frozen=True, slots=True)
class ArchivedMessage:
    """One message in an account's archive.

    ``seq`` orders the archive and is unique across all archives: the time the
    server took the message, in microseconds since the epoch, bumped so that it
    never repeats. ``tag`` is random; mam.py makes the public id from both, so
    that ids cannot be guessed. ``with_jid`` is the other party's bare JID.
    """

    seq: int
    tag: int
    with_jid: str
    stanza_xml: str


@dataclass(frozen=True, slots=True)
class ArchiveRow:
    """A message to archive for one account (mam_append)."""

    seq: int
    tag: int
    owner: str            # username
    with_bare: str        # the other party's bare JID
    with_resource: str    # its resource, "" if none
    stanza_xml: str


@dataclass(frozen=True, slots=True)
class ArchiveFilter:
    """Which messages of one archive a query reads; None means no limit. Bounds are seqs."""

    with_bare: str | None = None
    with_resource: str | None = None   # only with with_bare
    start: int | None = None           # seq >= start
    end: int | None = None             # seq <= end
    after: int | None = None           # seq > after
    before: int | None = None          # seq < before
    ids: tuple[int, ...] | None = None  # seq in ids


@dataclass(frozen=True, slots=True)
class ArchivePrefs:
    """An account's archiving preferences (XEP-0441): the default, and bare or full JIDs always/never archived."""

    default: str                  # one of ARCHIVE_DEFAULTS
    always: tuple[str, ...] = ()
    never: tuple[str, ...] = ()
