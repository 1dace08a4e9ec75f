"""Plain records that cross the storage boundary.

They carry no behaviour so that both backends, the protocol modules and the
tests can share them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
