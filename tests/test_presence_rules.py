"""Presence, subscription and iq-routing rules driven without sockets, on both storage backends.

Each test builds a real Server on a fresh store (as tests/test_modules_unit.py does), binds sessions on fake
connections, and checks what every party received. Presence fan-out runs in background tasks; the `background`
fixture records them so that a test can wait until they are done and fail if one of them failed.
"""

from __future__ import annotations

import asyncio

import pytest
from lxml import etree

from tests.test_modules_unit import DOMAIN, add_user, backend, bind, error_of, make_iq, run, send  # noqa: F401
from xmppd import presence as presence_module
from xmppd import roster as roster_module
from xmppd.aio import settle
from xmppd.presence import UserLocks
from xmppd.stanza import make
from xmppd.storage.models import RosterItem

ROMEO, JULIET, NURSE = (f"{name}@{DOMAIN}" for name in ("romeo", "juliet", "nurse"))
PING = '<ping xmlns="urn:xmpp:ping"/>'


class Background:
    """Records the tasks presence.py starts with run_soon, to wait for them."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task] = []

    def run_soon(self, pending, what: str) -> None:
        if pending is not None:
            self.tasks.append(asyncio.ensure_future(pending))

    async def settle(self) -> None:
        while self.tasks:
            task = self.tasks.pop(0)
            await asyncio.wait_for(task, 5)  # raises what the task raised


@pytest.fixture
def background(monkeypatch) -> Background:
    recorder = Background()
    monkeypatch.setattr(presence_module, "run_soon", recorder.run_soon)
    return recorder


def make_presence(session, children: str = "", **attrs: str) -> etree._Element:
    """A presence as the stream hands it on: inside the stream's namespaces, 'from' stamped."""
    attrs = {"from": session.full, **{key.rstrip("_"): value for key, value in attrs.items()}}
    text = "".join(f' {key}="{value}"' for key, value in attrs.items())
    stream = '<stream:stream xmlns:stream="http://etherx.jabber.org/streams" xmlns="jabber:client">'
    return etree.fromstring(f"{stream}<presence{text}>{children}</presence></stream:stream>")[0]


async def send_presence(server, background: Background, session, children: str = "", **attrs: str) -> None:
    await settle(server.router.from_client(session, make_presence(session, children, **attrs)))
    await background.settle()


async def online(server, background: Background, username: str, resource: str = "phone"):
    """A session that fetched its roster (an interested resource) and sent initial presence."""
    session = bind(server, username, resource)
    await send(server, session, "get", '<query xmlns="jabber:iq:roster"/>')
    await send_presence(server, background, session)
    session.connection.written.clear()
    return session


def presences(session) -> list[tuple[str, str | None]]:
    """(from, type) of every presence the session received, in order."""
    return [(s.get("from"), s.get("type")) for s in session.connection.stanzas() if etree.QName(s).localname
            == "presence"]


async def befriend(server, a: str, b: str, subscription: str = "both") -> None:
    """Store a mutual subscription directly (a has `subscription` to b; b the mirror image)."""
    mirror = {"both": "both", "from": "to", "to": "from"}[subscription]
    await server.storage.set_roster_item(a.split("@")[0], RosterItem(jid=b, subscription=subscription))
    await server.storage.set_roster_item(b.split("@")[0], RosterItem(jid=a, subscription=mirror))


async def users(server, *names: str) -> None:
    for name in names:
        await add_user(server, name)


# ---------------------------------------------------------------- RFC 6121 §3.2.2: unsubscribed
def test_denying_a_request_reveals_no_presence(backend, tmp_path, background):
    async def test(server):
        await users(server, "romeo", "nurse")
        phone = await online(server, background, "romeo")
        await online(server, background, "romeo", "laptop")
        nurse = await online(server, background, "nurse")
        await send_presence(server, background, nurse, to=ROMEO, type="subscribe")
        nurse.connection.written.clear()

        await send_presence(server, background, phone, to=NURSE, type="unsubscribed")
        # The nurse learns of the denial, not that Romeo is online nor which resources he uses.
        assert presences(nurse) == [(ROMEO, "unsubscribed")]
        assert (await server.storage.get_roster_item("nurse", ROMEO)).ask is False

    run(backend, tmp_path, test)


def test_cancelling_a_subscription_sends_unavailable_first(backend, tmp_path, background):
    async def test(server):
        await users(server, "romeo", "juliet")
        await befriend(server, ROMEO, JULIET, "from")
        phone, laptop = await online(server, background, "romeo"), await online(server, background, "romeo", "laptop")
        juliet = await online(server, background, "juliet")
        juliet.connection.written.clear()

        await send_presence(server, background, phone, to=JULIET, type="unsubscribed")
        assert presences(juliet) == [(phone.full, "unavailable"), (laptop.full, "unavailable"),
                                     (ROMEO, "unsubscribed")]

    run(backend, tmp_path, test)


# ---------------------------------------------------------------- roster size
def test_subscriptions_cannot_overfill_the_roster(backend, tmp_path, background, monkeypatch):
    monkeypatch.setattr(roster_module, "MAX_ROSTER_SIZE", 2)

    async def test(server):
        await users(server, "romeo", "juliet", "nurse")
        for contact in ("tybalt", "mercutio"):
            await server.storage.set_roster_item("romeo", RosterItem(jid=f"{contact}@{DOMAIN}"))
        romeo, juliet = await online(server, background, "romeo"), await online(server, background, "juliet")
        juliet.connection.written.clear()

        # A subscription request and a pre-approval would each add an item.
        for to, kind in ((JULIET, "subscribe"), (NURSE, "subscribed")):
            romeo.connection.written.clear()
            await send_presence(server, background, romeo, to=to, type=kind)
            [error] = romeo.connection.stanzas()
            assert etree.QName(error).localname == "presence" and error.get("from") == to
            assert error_of(error) == ("cancel", "not-allowed")
            assert await server.storage.get_roster_item("romeo", to) is None
        assert presences(juliet) == []
        # The same limit as for a roster set; contacts already there are not affected.
        reply = await send(server, romeo, "set", f'<query xmlns="jabber:iq:roster"><item jid="{JULIET}"/></query>')
        assert error_of(reply) == ("cancel", "not-allowed")
        romeo.connection.written.clear()
        await send_presence(server, background, romeo, to=f"tybalt@{DOMAIN}", type="subscribe")
        assert (await server.storage.get_roster_item("romeo", f"tybalt@{DOMAIN}")).ask is True

    run(backend, tmp_path, test)


# ---------------------------------------------------------------- directed presence and presence size
def test_directed_presence_targets_are_capped(backend, tmp_path, background, monkeypatch):
    monkeypatch.setattr(presence_module, "MAX_DIRECTED_PRESENCES", 3)

    async def test(server):
        await users(server, "romeo")
        romeo = await online(server, background, "romeo")
        targets = [f"someone{i}@{DOMAIN}/x" for i in range(4)]
        for target in targets[:3]:
            await send_presence(server, background, romeo, to=target)
        assert romeo.connection.stanzas() == []
        await send_presence(server, background, romeo, to=targets[3])
        [error] = romeo.connection.take()
        assert error.get("from") == targets[3] and error_of(error) == ("modify", "policy-violation")
        assert romeo.directed == set(targets[:3])
        # Again to a JID already remembered is fine; so is a new one once another was told 'unavailable'.
        await send_presence(server, background, romeo, to=targets[0])
        await send_presence(server, background, romeo, to=targets[0], type="unavailable")
        await send_presence(server, background, romeo, to=targets[3])
        assert romeo.connection.stanzas() == []
        assert romeo.directed == set(targets[1:])

    run(backend, tmp_path, test)


def test_oversized_presence_is_refused(backend, tmp_path, background):
    async def test(server):
        await users(server, "romeo", "juliet")
        await befriend(server, ROMEO, JULIET)
        romeo, juliet = await online(server, background, "romeo"), await online(server, background, "juliet")
        romeo.connection.written.clear()
        juliet.connection.written.clear()
        first = romeo.presence

        status = f"<status>{'x' * presence_module.MAX_PRESENCE_BYTES}</status>"
        for attrs in ({}, {"to": juliet.full}, {"to": JULIET, "type": "subscribe"}):
            await send_presence(server, background, romeo, status, **attrs)
            [error] = romeo.connection.take()
            assert error_of(error) == ("modify", "not-acceptable")
        assert presences(juliet) == [] and romeo.presence is first and romeo.directed == set()
        # An ordinary one goes through.
        await send_presence(server, background, romeo, "<status>in the orchard</status>")
        assert presences(juliet) == [(romeo.full, None)]

    run(backend, tmp_path, test)


# ---------------------------------------------------------------- no account-existence oracle
@pytest.mark.parametrize("type_, payload", [
    ("get", PING),
    ("get", '<query xmlns="jabber:iq:roster"/>'),
    ("set", f'<query xmlns="jabber:iq:roster"><item jid="{ROMEO}"/></query>'),
    ("set", '<vCard xmlns="vcard-temp"><FN>Villain</FN></vCard>'),
    ("get", '<query xmlns="http://jabber.org/protocol/disco#info"/>'),
    ("get", '<query xmlns="http://jabber.org/protocol/disco#items"/>'),
    ("get", '<query xmlns="jabber:iq:register"/>'),
    ("get", '<query xmlns="jabber:iq:version"/>'),
    ("set", '<session xmlns="urn:ietf:params:xml:ns:xmpp-session"/>'),
], ids=["ping", "roster-get", "roster-set", "vcard-set", "disco-info", "disco-items", "register", "version",
        "legacy-session"])
def test_other_accounts_answer_as_if_they_did_not_exist(backend, tmp_path, type_, payload):
    async def test(server):
        await users(server, "romeo", "juliet")
        juliet = bind(server, "juliet")
        answers = []
        for to in (ROMEO, f"nobody@{DOMAIN}"):
            reply = await send(server, juliet, type_, payload, to=to)
            answers.append(etree.tostring(reply.find("{jabber:client}error")))
            assert error_of(reply) == ("cancel", "service-unavailable")
        assert answers[0] == answers[1]
        # Romeo online changes nothing.
        bind(server, "romeo")
        reply = await send(server, juliet, type_, payload, to=ROMEO)
        assert etree.tostring(reply.find("{jabber:client}error")) == answers[1]

    run(backend, tmp_path, test)


def test_ping_is_answered_for_the_server_and_for_the_owner(backend, tmp_path):
    async def test(server):
        await users(server, "romeo")
        romeo = bind(server, "romeo")
        for to in (DOMAIN, ROMEO, None):
            assert (await send(server, romeo, "get", PING, to=to)).get("type") == "result"

    run(backend, tmp_path, test)


# ---------------------------------------------------------------- roster and account removal (RFC 6121 §2.5.2)
def test_roster_remove_sends_unavailable_before_unsubscribed(backend, tmp_path, background):
    async def test(server):
        await users(server, "romeo", "juliet")
        await befriend(server, ROMEO, JULIET)
        phone, laptop = await online(server, background, "romeo"), await online(server, background, "romeo", "laptop")
        juliet = await online(server, background, "juliet")
        juliet.connection.written.clear()

        remove = f'<query xmlns="jabber:iq:roster"><item jid="{JULIET}" subscription="remove"/></query>'
        await settle(server.router.from_client(phone, make_iq("set", remove, from_=phone.full)))
        await background.settle()
        assert presences(juliet) == [(ROMEO, "unsubscribe"), (phone.full, "unavailable"),
                                     (laptop.full, "unavailable"), (ROMEO, "unsubscribed")]
        assert (await server.storage.get_roster_item("juliet", ROMEO)).subscription == "none"
        assert len(server.modules["presence"].locks) == 0

    run(backend, tmp_path, test)


def test_account_removal_tells_subscribers_it_is_gone(backend, tmp_path, background):
    async def test(server):
        await users(server, "romeo", "juliet")
        await befriend(server, ROMEO, JULIET)
        phone = await online(server, background, "romeo")
        juliet = await online(server, background, "juliet")
        juliet.connection.written.clear()

        remove = make_iq("set", '<query xmlns="jabber:iq:register"><remove/></query>', from_=phone.full)
        await settle(server.router.from_client(phone, remove))
        await background.settle()
        assert not await server.storage.user_exists("romeo")
        received = presences(juliet)
        assert (phone.full, "unavailable") in received
        assert received.index((phone.full, "unavailable")) < received.index((ROMEO, "unsubscribed"))

    run(backend, tmp_path, test)


# ---------------------------------------------------------------- concurrent changes of one roster item
def slow_writes(server, delay: float = 0.05) -> None:
    """Make every roster write wait a while first, so that concurrent handlers all read before any writes."""
    original = server.storage.set_roster_item

    async def slow(*args):
        await asyncio.sleep(delay)
        return await original(*args)

    server.storage.set_roster_item = slow


def test_roster_set_and_subscription_approval_at_once_lose_nothing(backend, tmp_path, background):
    async def test(server):
        await users(server, "romeo", "juliet")
        romeo = await online(server, background, "romeo")
        await send_presence(server, background, romeo, to=JULIET, type="subscribe")
        slow_writes(server)

        # Romeo renames Juliet while her approval arrives: both read the item, then both write it.
        rename = make_iq("set", f'<query xmlns="jabber:iq:roster"><item jid="{JULIET}" name="Juliet"/></query>',
                         from_=romeo.full)
        approval = make("presence", {"type": "subscribed", "from": JULIET, "to": ROMEO})
        await asyncio.gather(settle(server.router.from_client(romeo, rename)),
                             settle(server.router.route(approval, romeo.bare_jid)))
        await background.settle()
        item = await server.storage.get_roster_item("romeo", JULIET)
        assert (item.name, item.subscription, item.ask) == ("Juliet", "to", False)
        assert len(server.modules["presence"].locks) == 0

    run(backend, tmp_path, test)


def test_two_users_subscribing_to_each_other_at_once_do_not_deadlock(backend, tmp_path, background):
    async def test(server):
        await users(server, "romeo", "juliet")
        romeo, juliet = await online(server, background, "romeo"), await online(server, background, "juliet")
        slow_writes(server)
        await asyncio.wait_for(asyncio.gather(
            send_presence(server, background, romeo, to=JULIET, type="subscribe"),
            send_presence(server, background, juliet, to=ROMEO, type="subscribe")), 10)
        for user, contact in (("romeo", JULIET), ("juliet", ROMEO)):
            assert (await server.storage.get_roster_item(user, contact)).ask is True
        assert {jid for jid, _ in await server.storage.list_pending_subscriptions("romeo")} == {JULIET}
        assert len(server.modules["presence"].locks) == 0

    run(backend, tmp_path, test)


def test_user_locks_exclude_reenter_and_are_forgotten():
    async def main():
        locks = UserLocks()
        order = []

        async def worker(name: str, *usernames: str) -> None:
            async with locks.hold(*usernames):
                order.append(f"{name} in")
                async with locks.hold(usernames[0]):  # the same task passes through
                    await asyncio.sleep(0.01)
                order.append(f"{name} out")

        await asyncio.gather(worker("a", "romeo", "juliet"), worker("b", "juliet"), worker("c", "nurse"))
        assert order.index("a out") < order.index("b in") and len(locks) == 0

        # A task cancelled while waiting leaves nothing behind.
        holder_in, release = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with locks.hold("romeo"):
                holder_in.set()
                await release.wait()

        held = asyncio.ensure_future(holder())
        await holder_in.wait()
        waiter = asyncio.ensure_future(worker("d", "romeo"))
        await asyncio.sleep(0.01)
        waiter.cancel()
        release.set()
        await held
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert len(locks) == 0

    asyncio.run(main())


# ---------------------------------------------------------------- results and errors are never answered
def test_results_and_errors_are_never_answered(backend, tmp_path):
    async def test(server):
        await users(server, "romeo")
        romeo = bind(server, "romeo")
        remote = "x@elsewhere.example"
        for type_, id_, to in (("result", None, None), ("result", None, DOMAIN), ("result", "r1", remote),
                               ("error", "r2", remote), ("error", None, None)):
            await settle(server.router.from_client(romeo, make_iq(type_, "", to=to, from_=romeo.full, id_=id_)))
        assert romeo.connection.written == []
        # A request to a remote domain is still answered.
        reply = await send(server, romeo, "get", PING, to=remote)
        assert error_of(reply) == ("cancel", "remote-server-not-found")

    run(backend, tmp_path, test)


# ---------------------------------------------------------------- sessions that end while presence is handled
def gate_first_roster_read(server) -> asyncio.Event:
    """Hold the next get_roster until the returned event is set; later reads pass."""
    original, gate, calls = server.storage.get_roster, asyncio.Event(), []

    async def gated(username):
        calls.append(username)
        if len(calls) == 1:
            await gate.wait()
        return await original(username)

    server.storage.get_roster = gated
    return gate


def test_a_session_that_ends_during_initial_presence_does_not_stay_online(backend, tmp_path, background):
    async def test(server):
        await users(server, "romeo", "juliet")
        await befriend(server, ROMEO, JULIET)
        juliet = await online(server, background, "juliet")
        romeo = bind(server, "romeo")
        juliet.connection.written.clear()

        gate = gate_first_roster_read(server)
        available = asyncio.ensure_future(settle(server.router.from_client(romeo, make_presence(romeo))))
        await asyncio.sleep(0.01)
        server.unbind(romeo)         # the connection drops while the roster is being read
        await background.settle()    # the unavailable broadcast is done
        gate.set()
        await available
        await background.settle()
        received = presences(juliet)
        assert received == [] or received[-1] == (romeo.full, "unavailable")

    run(backend, tmp_path, test)


@pytest.mark.parametrize("successor_online", [True, False])
def test_a_replaced_session_does_not_unannounce_its_successor(backend, tmp_path, background, successor_online):
    async def test(server):
        await users(server, "romeo", "juliet")
        await befriend(server, ROMEO, JULIET)
        juliet = await online(server, background, "juliet")
        old = await online(server, background, "romeo")
        juliet.connection.written.clear()

        gate = gate_first_roster_read(server)
        new = bind(server, "romeo", "phone")   # same full JID: the old session is closed with <conflict/>
        assert old.closed and old.connection.closed[0] == "conflict"
        await asyncio.sleep(0.01)              # the old session's unavailable broadcast waits for storage
        if successor_online:
            await settle(server.router.from_client(new, make_presence(new)))
        gate.set()
        await background.settle()
        received = presences(juliet)
        # Juliet's last word about romeo/phone matches whether a session there is online.
        assert received[-1] == (new.full, None if successor_online else "unavailable")

    run(backend, tmp_path, test)
