"""RFC 6121 Appendix A, row by row, plus the pre-approval rules of §3.4."""

from dataclasses import replace

import pytest

from xmppd.subscription import Outcome, SubState, inbound, outbound, roster_attributes

# The nine defined states of RFC 6121 A.1, by the RFC's own names.
STATES = {
    "None": SubState(),
    "None + Pending Out": SubState(pending_out=True),
    "None + Pending In": SubState(pending_in=True),
    "None + Pending Out+In": SubState(pending_out=True, pending_in=True),
    "To": SubState("to"),
    "To + Pending In": SubState("to", pending_in=True),
    "From": SubState("from"),
    "From + Pending Out": SubState("from", pending_out=True),
    "Both": SubState("both"),
}
SAME = None  # "no state change"

# (existing state, route?, new state, roster push?[, auto-reply]) — ROUTE/DELIVER and NEW STATE
# columns are transcribed from the RFC 6121 tables (MUST -> True; M.N., S.N. -> False); the push
# column is ours: the roster-visible part (subscription, ask, approved) changed. The auto-reply
# column comes from the tables' notes and is None when left out.

# RFC 6121 A.2.1, Table 2: outbound "subscribe"
OUT_SUBSCRIBE = [
    ("None", True, "None + Pending Out", True),
    ("None + Pending Out", True, SAME, False),
    ("None + Pending In", True, "None + Pending Out+In", True),
    ("None + Pending Out+In", True, SAME, False),
    ("To", True, SAME, False),
    ("To + Pending In", True, SAME, False),
    ("From", True, "From + Pending Out", True),
    ("From + Pending Out", True, SAME, False),
    ("Both", True, SAME, False),
]
# RFC 6121 A.2.2, Table 3: outbound "unsubscribe"
OUT_UNSUBSCRIBE = [
    ("None", True, SAME, False),
    ("None + Pending Out", True, "None", True),
    ("None + Pending In", True, SAME, False),
    ("None + Pending Out+In", True, "None + Pending In", True),
    ("To", True, "None", True),
    ("To + Pending In", True, "None + Pending In", True),
    ("From", True, SAME, False),
    ("From + Pending Out", True, "From", True),
    ("Both", True, "From", True),
]
# RFC 6121 A.2.3, Table 4: outbound "subscribed"; the "None", "None + Pending Out" and "To" rows are
# pre-approvals (§3.4, tested below), so only the rest are here.
OUT_SUBSCRIBED = [
    ("None + Pending In", True, "From", True),
    ("None + Pending Out+In", True, "From + Pending Out", True),
    ("To + Pending In", True, "Both", True),
    ("From", False, SAME, False),
    ("From + Pending Out", False, SAME, False),
    ("Both", False, SAME, False),
]
# RFC 6121 A.2.4, Table 5: outbound "unsubscribed"
OUT_UNSUBSCRIBED = [
    ("None", False, SAME, False),
    ("None + Pending Out", False, SAME, False),
    ("None + Pending In", True, "None", False),
    ("None + Pending Out+In", True, "None + Pending Out", False),
    ("To", False, SAME, False),
    ("To + Pending In", True, "To", False),
    ("From", True, "None", True),
    ("From + Pending Out", True, "None + Pending Out", True),
    ("Both", True, "To", True),
]
# RFC 6121 A.3.1, Table 6: inbound "subscribe" (the From/From + Pending Out/Both rows auto-reply,
# note [2], and pre-approval, note [1], are tested separately)
IN_SUBSCRIBE = [
    ("None", True, "None + Pending In", False),
    ("None + Pending Out", True, "None + Pending Out+In", False),
    ("None + Pending In", False, SAME, False),
    ("None + Pending Out+In", False, SAME, False),
    ("To", True, "To + Pending In", False),
    ("To + Pending In", False, SAME, False),
]
# RFC 6121 A.3.2, Table 7: inbound "unsubscribe"; note [1]: every MUST row SHOULD auto-reply
# "unsubscribed"
IN_UNSUBSCRIBE = [
    ("None", False, SAME, False),
    ("None + Pending Out", False, SAME, False),
    ("None + Pending In", True, "None", False, "unsubscribed"),
    ("None + Pending Out+In", True, "None + Pending Out", False, "unsubscribed"),
    ("To", False, SAME, False),
    ("To + Pending In", True, "To", False, "unsubscribed"),
    ("From", True, "None", True, "unsubscribed"),
    ("From + Pending Out", True, "None + Pending Out", True, "unsubscribed"),
    ("Both", True, "To", True, "unsubscribed"),
]
# RFC 6121 A.3.3, Table 8: inbound "subscribed"
IN_SUBSCRIBED = [
    ("None", False, SAME, False),
    ("None + Pending Out", True, "To", True),
    ("None + Pending In", False, SAME, False),
    ("None + Pending Out+In", True, "To + Pending In", True),
    ("To", False, SAME, False),
    ("To + Pending In", False, SAME, False),
    ("From", False, SAME, False),
    ("From + Pending Out", True, "Both", True),
    ("Both", False, SAME, False),
]
# RFC 6121 A.3.4, Table 9: inbound "unsubscribed"
IN_UNSUBSCRIBED = [
    ("None", False, SAME, False),
    ("None + Pending Out", True, "None", True),
    ("None + Pending In", False, SAME, False),
    ("None + Pending Out+In", True, "None + Pending In", True),
    ("To", True, "None", True),
    ("To + Pending In", True, "None + Pending In", True),
    ("From", False, SAME, False),
    ("From + Pending Out", True, "From", True),
    ("Both", True, "From", True),
]


def _rows(direction, kind, table):
    return [
        pytest.param(direction, kind, *row, *(None,) * (5 - len(row)),
                     id=f"{direction.__name__}-{kind}-{row[0]}")
        for row in table
    ]


ROWS = (
    _rows(outbound, "subscribe", OUT_SUBSCRIBE)
    + _rows(outbound, "unsubscribe", OUT_UNSUBSCRIBE)
    + _rows(outbound, "subscribed", OUT_SUBSCRIBED)
    + _rows(outbound, "unsubscribed", OUT_UNSUBSCRIBED)
    + _rows(inbound, "subscribe", IN_SUBSCRIBE)
    + _rows(inbound, "unsubscribe", IN_UNSUBSCRIBE)
    + _rows(inbound, "subscribed", IN_SUBSCRIBED)
    + _rows(inbound, "unsubscribed", IN_UNSUBSCRIBED)
)


@pytest.mark.parametrize("direction, kind, existing, route, new, push, auto_reply", ROWS)
def test_appendix_a(direction, kind, existing, route, new, push, auto_reply):
    state = STATES[existing]
    expected = state if new is SAME else STATES[new]
    assert direction(state, kind) == Outcome(expected, route, push, auto_reply)


def test_every_defined_state_and_stanza_is_covered():
    # Each RFC 6121 Appendix A table has one row per defined state (A.1); rows left out of the
    # parametrized tables above are covered by the pre-approval and auto-reply tests below.
    tables = {
        "OUT_SUBSCRIBE": OUT_SUBSCRIBE, "OUT_UNSUBSCRIBE": OUT_UNSUBSCRIBE,
        "OUT_UNSUBSCRIBED": OUT_UNSUBSCRIBED, "IN_UNSUBSCRIBE": IN_UNSUBSCRIBE,
        "IN_SUBSCRIBED": IN_SUBSCRIBED, "IN_UNSUBSCRIBED": IN_UNSUBSCRIBED,
    }
    for name, table in tables.items():
        assert [row[0] for row in table] == list(STATES), name
    assert {row[0] for row in OUT_SUBSCRIBED} | {"None", "None + Pending Out", "To"} == set(STATES)
    assert {row[0] for row in IN_SUBSCRIBE} | {"From", "From + Pending Out", "Both"} == set(STATES)


@pytest.mark.parametrize("existing", ["From", "From + Pending Out", "Both"])
def test_inbound_subscribe_when_already_subscribed_auto_replies(existing):
    # RFC 6121 A.3.1 (Table 6 note [2]) and §3.1.3 item 2: not delivered, no state change, the
    # contact's server answers "subscribed" itself.
    state = STATES[existing]
    assert inbound(state, "subscribe") == Outcome(state, False, False, "subscribed")


@pytest.mark.parametrize("existing", ["None", "None + Pending Out", "To"])
def test_outbound_subscribed_without_request_is_preapproval(existing):
    # RFC 6121 A.2.3 (Table 4 "pre-approval" rows, M.N. route) and §3.4.2 item 3: noted, pushed
    # with approved='true', and not routed.
    preapproved = replace(STATES[existing], approved=True)
    assert outbound(STATES[existing], "subscribed") == Outcome(preapproved, False, True, None)
    # Pre-approving twice changes nothing.
    assert outbound(preapproved, "subscribed") == Outcome(preapproved, False, False, None)


@pytest.mark.parametrize(
    "existing, result",
    [("None", "From"), ("None + Pending Out", "From + Pending Out"), ("To", "Both")],
)
def test_inbound_subscribe_when_preapproved(existing, result):
    # RFC 6121 A.3.1 (Table 6 note [1]) and §3.4.2: auto-approved with "subscribed", not delivered,
    # roster pushed; the pre-approval is used up (left to the server by the §3.4.2 note).
    state = replace(STATES[existing], approved=True)
    assert inbound(state, "subscribe") == Outcome(STATES[result], False, True, "subscribed")


@pytest.mark.parametrize("existing", ["None", "None + Pending Out", "To"])
def test_outbound_unsubscribed_cancels_preapproval(existing):
    # RFC 6121 A.2.4 (Table 5 note [1], S.N. route), §3.2.2 item 2: the pre-approval is removed
    # and pushed, the stanza is not routed.
    state = replace(STATES[existing], approved=True)
    assert outbound(state, "unsubscribed") == Outcome(STATES[existing], False, True, None)


@pytest.mark.parametrize(
    "existing, result", [("From", "None"), ("From + Pending Out", "None + Pending Out"), ("Both", "To")]
)
def test_inbound_unsubscribe_keeps_the_users_preapproval(existing, result):
    # RFC 6121 §3.4.2 implementation notes: a server that keeps the 'approved' record keeps it
    # until the user sends "unsubscribed" or removes the contact, not when the contact unsubscribes.
    state = replace(STATES[existing], approved=True)
    expected = replace(STATES[result], approved=True)
    assert inbound(state, "unsubscribe") == Outcome(expected, True, True, "unsubscribed")


def test_approved_survives_unrelated_transitions():
    state = SubState(approved=True)
    outcome = outbound(state, "subscribe")
    assert outcome.state == SubState(pending_out=True, approved=True)
    outcome = inbound(outcome.state, "subscribed")
    assert outcome.state == SubState("to", approved=True)


@pytest.mark.parametrize(
    "name, attributes",
    [
        ("None", ("none", False)),
        ("None + Pending Out", ("none", True)),
        ("None + Pending In", ("none", False)),
        ("None + Pending Out+In", ("none", True)),
        ("To", ("to", False)),
        ("To + Pending In", ("to", False)),
        ("From", ("from", False)),
        ("From + Pending Out", ("from", True)),
        ("Both", ("both", False)),
    ],
)
def test_roster_attributes(name, attributes):
    # RFC 6121 A.1: how each defined state shows in the user's roster.
    assert roster_attributes(STATES[name]) == attributes


def test_full_handshake_between_two_users():
    # Romeo subscribes to Juliet, Juliet approves and subscribes back (RFC 6121 §3.1).
    romeo, juliet = SubState(), SubState()
    out = outbound(romeo, "subscribe")
    romeo = out.state
    assert out.route
    inc = inbound(juliet, "subscribe")
    juliet = inc.state
    assert inc.route and juliet.pending_in
    out = outbound(juliet, "subscribed")
    juliet = out.state
    assert out.route and juliet == SubState("from")
    inc = inbound(romeo, "subscribed")
    romeo = inc.state
    assert inc.route and romeo == SubState("to")
    romeo = outbound(romeo, "subscribed").state  # no pending request: pre-approval
    assert romeo == SubState("to", approved=True)
    juliet = outbound(juliet, "subscribe").state
    inc = inbound(romeo, "subscribe")
    assert inc.auto_reply == "subscribed" and not inc.route
    romeo = inc.state
    juliet = inbound(juliet, "subscribed").state
    assert romeo == SubState("both") and juliet == SubState("both")


@pytest.mark.parametrize("function", [outbound, inbound])
def test_unknown_kind_is_rejected(function):
    with pytest.raises(ValueError):
        function(SubState(), "probe")


def test_unknown_subscription_is_rejected():
    with pytest.raises(ValueError):
        SubState("sideways")
