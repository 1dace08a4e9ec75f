"""What a push is, what became of it, and what every push service (APNs, FCM) offers.

The app server turns each XEP-0357 publish into one ``Notification`` and hands it to
the ``Provider`` of the registration's app. ``send()`` never raises for anything the
push service or the network does; it answers with a ``Result`` whose ``outcome`` tells
the app server what to answer the XMPP server:

=============== ============================================ ==========================
outcome         meaning                                      publish answered with
=============== ============================================ ==========================
"delivered"     the push service accepted the push            result
"unregistered"  the token is dead: delete the registration    <item-not-found/> cancel
"retry"         429, 5xx, network down, timeout: try later    <resource-constraint/> wait
"rejected"      any other error (bad request, bad credentials) <internal-server-error/>
=============== ============================================ ==========================

The fields every app receives (the same names on APNs and FCM, see apns.py and fcm.py
for where they sit in each payload) come from ``event_fields()``:

``kind``                        "message" | "call" | "call-ended"
``account``                     the registration's collapse_id (see below)
``message-count``               messages since the device was last connected (if known)
``pending-subscription-count``  subscription requests waiting (if known)
``sender``, ``body``            only when the XMPP server chose to include them
``call-id``, ``caller``         the XEP-0353 id and the caller's bare JID (calls only)

``account`` is the collapse_id: one value per account and device. For registrations
made the Conversations/p2 way the app server must use p2's device hash,
``sha1_hex(bare_jid + "\\0" + device_id)`` (lower-case hex), because that is what
Conversations compares the FCM ``account`` field with to know which account to wake.

When the client gave an encryption key, none of these fields is sent in clear: the
payload carries ``account`` plus ``encrypted`` and ``iv`` (encryption.py), and the
ciphertext holds ``encrypted_fields()``: the fields above plus the Tigase names
(``unread``, ``type``, ``sender``, ``message``, ``sid``) so that a client written for
Tigase's encrypted push format reads it too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "Notification", "Result", "Provider", "KINDS", "OUTCOMES", "DEFAULT_TTL", "MAX_BODY_BYTES",
    "ttl_for", "event_fields", "encrypted_fields", "collapse_key", "trim_utf8",
]

KINDS = ("message", "call", "call-ended")
OUTCOMES = ("delivered", "unregistered", "retry", "rejected")

# How long the push service may keep trying when the device is unreachable, by kind.
# A message is worth a day (the phone shows it when it comes back; the XMPP server
# still has it). A call that rang 30 s ago is over: a late push would ring for nothing.
# The push that ends a call lives a little longer than the one that started it, so
# that it cannot expire before the call push it cancels is delivered.
DEFAULT_TTL = {"message": 86400, "call": 30, "call-ended": 60}

# APNs allows 4096 bytes of payload (5120 for VoIP), FCM 4000 bytes of data. Body and
# sender are cut (at a UTF-8 boundary) so that a push fits even encrypted (base64 adds
# a third) with the body present twice (the Tigase alias).
MAX_BODY_BYTES = 800
MAX_JID_BYTES = 320


@dataclass(frozen=True, slots=True)
class Notification:
    token: str                  # APNs device token (hex) or FCM registration token
    kind: str                   # "message" (something that matters arrived), "call" (XEP-0353 propose),
                                # "call-ended" (XEP-0353 retract: stop the ringing)
    collapse_id: str            # one per account and device (the pubsub node): a newer push replaces an older
    message_count: int | None = None
    pending_subscriptions: int | None = None
    sender: str | None = None   # only when the XMPP server chose to include it (privacy default: None)
    body: str | None = None     # idem
    call_id: str | None = None  # XEP-0353 id, for kind "call"/"call-ended"
    caller: str | None = None   # bare JID of the caller, for kind "call"/"call-ended"
    encryption_key: bytes | None = None   # AES-128/256-GCM key from the client's publish-options
    expiration: float = 0       # seconds the provider may keep trying; 0 → the provider module's default

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown notification kind {self.kind!r} (one of {', '.join(KINDS)})")
        if not self.token:
            raise ValueError("a notification needs a device token")
        if self.expiration < 0:
            raise ValueError("expiration must not be negative")


@dataclass(frozen=True, slots=True)
class Result:
    outcome: str                # "delivered" | "unregistered" | "retry" | "rejected"
    reason: str = ""            # provider's reason text, for logs and metrics
    retry_after: float | None = None
    unregistered_at: float | None = None   # APNs 410 timestamp (seconds since epoch), if given


class Provider(Protocol):
    name: str                   # "apns" | "fcm"

    async def send(self, notification: Notification) -> Result: ...   # never raises for provider errors

    async def close(self) -> None: ...


def ttl_for(notification: Notification) -> int:
    """Whole seconds the push service may keep the push: the notification's own, else the kind's default."""
    if notification.expiration > 0:
        return max(1, int(notification.expiration))
    return DEFAULT_TTL[notification.kind]


def trim_utf8(text: str, max_bytes: int) -> str:
    """text cut to at most max_bytes of UTF-8, never inside a character."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", errors="ignore")


def collapse_key(value: str, suffix: str = "", max_bytes: int = 64) -> str:
    """A collapse id of at most max_bytes (APNs' limit is 64): value+suffix, or its SHA-256 if longer."""
    key = value + suffix
    if len(key.encode("utf-8")) <= max_bytes:
        return key
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:max_bytes]


def event_fields(notification: Notification) -> dict[str, Any]:
    """The fields that describe the event (JSON types; FCM turns them into strings)."""
    n = notification
    fields: dict[str, Any] = {"kind": n.kind, "account": n.collapse_id}
    if n.message_count is not None:
        fields["message-count"] = int(n.message_count)
    if n.pending_subscriptions is not None:
        fields["pending-subscription-count"] = int(n.pending_subscriptions)
    if n.sender:
        fields["sender"] = trim_utf8(n.sender, MAX_JID_BYTES)
    if n.body:
        fields["body"] = trim_utf8(n.body, MAX_BODY_BYTES)
    if n.kind != "message":
        if n.call_id is not None:
            fields["call-id"] = n.call_id
        if n.caller:
            fields["caller"] = trim_utf8(n.caller, MAX_JID_BYTES)
    return fields


def encrypted_fields(notification: Notification) -> dict[str, Any]:
    """What goes inside the ciphertext: event_fields() plus the Tigase encrypted-push names."""
    fields = event_fields(notification)
    n = notification
    if n.kind == "message":
        subscribe_only = not n.message_count and (n.pending_subscriptions or 0) > 0
        fields["type"] = "subscribe" if subscribe_only else "chat"
    else:
        fields["type"] = n.kind
        if n.call_id is not None:
            fields["sid"] = n.call_id
    fields["unread"] = int(n.message_count or 0)
    sender = fields.get("sender") or fields.get("caller")
    if sender:
        fields["sender"] = sender
    if "body" in fields:
        fields["message"] = fields["body"]
    return fields
