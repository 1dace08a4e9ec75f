"""Presence subscription state machine of RFC 6121 §3 and Appendix A, without I/O.

The state is the user's view of one contact (RFC 6121 A.1: nine defined states, plus the
pre-approval flag of §3.4). outbound() is the user's own subscription stanza on its way
out; inbound() is the contact's stanza arriving for the user. Both return the new state
and what the caller must do: route/deliver the stanza, push the roster, auto-reply.
Order (RFC 6121 §3.1.2, §3.1.5, §3.3.2: route, then push; §3.1.6, §3.2.3, §3.3.3: an
inbound stanza MUST be delivered before the roster push).
Side effects the caller derives from the state change itself, not from a flag here:
when 'from' is lost (outbound 'unsubscribed', inbound 'unsubscribe') the user's
resources send 'unavailable' to the contact (§3.2.2: before the 'unsubscribed' is
routed; §3.3.3); when it is gained they send their current presence (§3.1.5).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["SubState", "Outcome", "outbound", "inbound", "roster_attributes"]

_SUBSCRIPTIONS = ("none", "to", "from", "both")


@dataclass(frozen=True, slots=True)
class SubState:
    subscription: str = "none"  # none | to | from | both
    pending_out: bool = False  # we asked the contact ("ask='subscribe'")
    pending_in: bool = False  # the contact asked us and we have not answered
    approved: bool = False  # pre-approval (RFC 6121 §3.4)

    def __post_init__(self) -> None:
        if self.subscription not in _SUBSCRIPTIONS:
            raise ValueError(f"unknown subscription {self.subscription!r}")

    @property
    def to(self) -> bool:
        """The user receives the contact's presence."""
        return self.subscription in ("to", "both")

    @property
    def from_(self) -> bool:
        """The contact receives the user's presence."""
        return self.subscription in ("from", "both")


@dataclass(frozen=True, slots=True)
class Outcome:
    state: SubState
    route: bool  # outbound: forward the stanza to the contact; inbound: deliver it to the user
    roster_push: bool  # the state visible in the roster changed -> push to interested resources
    # inbound only: presence type the server sends back to the contact on the user's behalf,
    # from the user's bare JID ("subscribed": RFC 6121 §3.1.3, §3.4.2; "unsubscribed": A.3.2)
    auto_reply: str | None = None


def _with(state: SubState, *, to: bool, from_: bool, **flags: bool) -> SubState:
    subscription = _SUBSCRIPTIONS[(1 if to else 0) + (2 if from_ else 0)]
    return replace(state, subscription=subscription, **flags)


def _outcome(old: SubState, new: SubState, route: bool, auto_reply: str | None = None) -> Outcome:
    visible_changed = (roster_attributes(old), old.approved) != (roster_attributes(new), new.approved)
    return Outcome(new, route, visible_changed, auto_reply)


def outbound(state: SubState, kind: str) -> Outcome:
    """The user sends a subscription stanza of this kind to the contact (RFC 6121 A.2)."""
    s = state
    if kind == "subscribe":
        # RFC 6121 A.2.1 (Table 2), §3.1.2: routed from every state; "Pending Out" (ask) is
        # added unless the user already has 'to'.
        new = s if s.to else replace(s, pending_out=True)
        return _outcome(s, new, True)
    if kind == "unsubscribe":
        # RFC 6121 A.2.2 (Table 3), §3.3.2: routed from every state; drops 'to' and
        # "Pending Out", keeps "Pending In".
        return _outcome(s, _with(s, to=False, from_=s.from_, pending_out=False), True)
    if kind == "subscribed":
        # RFC 6121 A.2.3 (Table 4), §3.1.5, §3.4.2.
        if s.from_:  # From, From + Pending Out, Both: MUST NOT route, no change (§3.4.2 item 1)
            return _outcome(s, s, False)
        if s.pending_in:  # *+ Pending In: approval, MUST route (§3.4.2 item 2)
            return _outcome(s, _with(s, to=s.to, from_=True, pending_in=False, approved=False), True)
        # None, None + Pending Out, To: pre-approval, noted and pushed, MUST NOT route (§3.4.2 item 3)
        return _outcome(s, replace(s, approved=True), False)
    if kind == "unsubscribed":
        # RFC 6121 A.2.4 (Table 5), §3.2.2.
        if s.from_ or s.pending_in:  # cancel the subscription or deny the request: MUST route
            new = _with(s, to=s.to, from_=False, pending_in=False, approved=False)
            return _outcome(s, new, True)
        # None, None + Pending Out, To: SHOULD NOT route; only a pre-approval is removed
        # (Table 5 note [1], §3.2.2 item 2, §3.4.2)
        return _outcome(s, replace(s, approved=False), False)
    raise ValueError(f"not a subscription stanza type: {kind!r}")


def inbound(state: SubState, kind: str) -> Outcome:
    """The contact's subscription stanza of this kind arrives for the user (RFC 6121 A.3)."""
    s = state
    if kind == "subscribe":
        # RFC 6121 A.3.1 (Table 6), §3.1.3, §3.4.2.
        # From, From + Pending Out, Both: SHOULD NOT deliver; auto-reply (note [2], §3.1.3 item 2)
        if s.from_:
            return _outcome(s, s, False, "subscribed")
        if s.approved:  # pre-approved (note [1], §3.4.2): MUST NOT deliver, answer for the user;
            # the pre-approval is used up (allowed by the §3.4.2 implementation note)
            new = _with(s, to=s.to, from_=True, pending_in=False, approved=False)
            return _outcome(s, new, False, "subscribed")
        if s.pending_in:  # *+ Pending In: SHOULD NOT deliver, no change (request already stored)
            return _outcome(s, s, False)
        return _outcome(s, replace(s, pending_in=True), True)  # MUST deliver, add "Pending In"
    if kind == "unsubscribe":
        # RFC 6121 A.3.2 (Table 7), §3.3.3: if the state changes (the contact drops its
        # subscription or withdraws its request) MUST deliver and SHOULD auto-reply
        # "unsubscribed" (note [1]); otherwise no change and SHOULD NOT deliver. The user's own
        # pre-approval stays: only the user's "unsubscribed" or roster removal ends it (§3.4.2).
        if s.from_ or s.pending_in:
            new = _with(s, to=s.to, from_=False, pending_in=False)
            return _outcome(s, new, True, "unsubscribed")
        return _outcome(s, s, False)
    if kind == "subscribed":
        # RFC 6121 A.3.3 (Table 8), §3.1.6: only with "Pending Out" (None + Pending Out,
        # None + Pending Out+In, From + Pending Out) MUST change and deliver; otherwise
        # silently ignored (no change, not delivered, no push).
        if s.pending_out and not s.to:
            return _outcome(s, _with(s, to=True, from_=s.from_, pending_out=False), True)
        return _outcome(s, s, False)
    if kind == "unsubscribed":
        # RFC 6121 A.3.4 (Table 9), §3.2.3: with 'to' or "Pending Out" the contact cancels our
        # subscription or denies our request: MUST change and deliver; otherwise SHOULD NOT deliver.
        if s.to or s.pending_out:
            return _outcome(s, _with(s, to=False, from_=s.from_, pending_out=False), True)
        return _outcome(s, s, False)
    raise ValueError(f"not a subscription stanza type: {kind!r}")


def roster_attributes(state: SubState) -> tuple[str, bool]:
    """('none'|'to'|'from'|'both', ask) for a roster <item>; ask means ask='subscribe'."""
    return state.subscription, state.pending_out
