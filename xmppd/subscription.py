"""Presence subscription state machine of RFC 6121 §3 and Appendix A, without I/O.

The state is the user's view of one contact (RFC 6121 A.1: nine defined states, plus the
pre-approval flag of §3.4). outbound() is the user's own subscription stanza on its way
out; inbound() is the contact's stanza arriving for the user. Both return the new state
and what the caller must do: route/deliver the stanza, push the roster, auto-reply.
Side effects the caller derives from the state change itself, not from a flag here:
when 'from' is lost (outbound 'unsubscribed', inbound 'unsubscribe') the user's
resources send 'unavailable' to the contact (§3.2.2, §3.3.3); when it is gained they
send their current presence (§3.1.5).
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
    auto_reply: str | None = None  # inbound only: presence type the server answers by itself


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
        # A.2.1: always routed (the contact's server may have lost its state); ask only
        # while the user is not yet subscribed.
        new = s if s.to else replace(s, pending_out=True)
        return _outcome(s, new, True)
    if kind == "unsubscribe":
        # A.2.2: always routed; drops 'to' and any pending request.
        return _outcome(s, _with(s, to=False, from_=s.from_, pending_out=False), True)
    if kind == "subscribed":
        if s.from_:  # A.2.3 / §3.4 item 1: already approved, silently ignored
            return _outcome(s, s, False)
        if s.pending_in:  # A.2.3: approval of the contact's request
            return _outcome(s, _with(s, to=s.to, from_=True, pending_in=False, approved=False), True)
        # §3.4: no request to answer -> pre-approval, noted and not routed
        return _outcome(s, replace(s, approved=True), False)
    if kind == "unsubscribed":
        if s.from_ or s.pending_in:  # A.2.4: cancel the subscription or deny the request
            new = _with(s, to=s.to, from_=False, pending_in=False, approved=False)
            return _outcome(s, new, True)
        # §3.2.2 / §3.4: nothing to cancel except possibly a pre-approval; not routed
        return _outcome(s, replace(s, approved=False), False)
    raise ValueError(f"not a subscription stanza type: {kind!r}")


def inbound(state: SubState, kind: str) -> Outcome:
    """The contact's subscription stanza of this kind arrives for the user (RFC 6121 A.3)."""
    s = state
    if kind == "subscribe":
        if s.from_:  # A.3.1 footnote, §3.1.3: already subscribed -> answer for the user
            return _outcome(s, s, False, "subscribed")
        if s.approved:  # §3.4: pre-approved -> approve for the user, do not deliver
            new = _with(s, to=s.to, from_=True, pending_in=False, approved=False)
            return _outcome(s, new, False, "subscribed")
        if s.pending_in:  # A.3.1: duplicate request, already stored
            return _outcome(s, s, False)
        return _outcome(s, replace(s, pending_in=True), True)
    if kind == "subscribed":
        if s.pending_out and not s.to:  # A.3.2: the contact approved our request
            return _outcome(s, _with(s, to=True, from_=s.from_, pending_out=False), True)
        return _outcome(s, s, False)  # A.3.2: unsolicited approval, ignored
    if kind == "unsubscribe":
        if s.from_ or s.pending_in:  # A.3.3: contact stops its subscription or its request
            new = _with(s, to=s.to, from_=False, pending_in=False, approved=False)
            return _outcome(s, new, True)
        return _outcome(s, s, False)
    if kind == "unsubscribed":
        if s.to or s.pending_out:  # A.3.4: contact cancels our subscription or denies our request
            return _outcome(s, _with(s, to=False, from_=s.from_, pending_out=False), True)
        return _outcome(s, s, False)
    raise ValueError(f"not a subscription stanza type: {kind!r}")


def roster_attributes(state: SubState) -> tuple[str, bool]:
    """('none'|'to'|'from'|'both', ask) for a roster <item>; ask means ask='subscribe'."""
    return state.subscription, state.pending_out
