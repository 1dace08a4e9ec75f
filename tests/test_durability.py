"""Nothing acknowledged is lost (DESIGN.md invariant 1), checked from the outside.

Lean clients (tests/lean_client.py) with XEP-0198 record exactly which of their messages the server
acknowledged; then the server is killed with SIGKILL in the middle of traffic, or every client drops
its socket at once, and every acknowledged message must still reach its recipient. Duplicates are
allowed (a stanza delivered but not yet acknowledged by its recipient comes again) but are reported,
and each keeps its original id.

Set XMPPD_DURABILITY_SEED to replay a crash test's random kill moment.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import secrets
import time
from collections import Counter

import pytest

from tests.conftest import start_xmppd
from tests.harness import XmppdProcess, run
from tests.lean_client import ConnectionLost, LeanClient, messages_by_id
from tests.storage_fixtures import BACKENDS

CONFIG = """
require_encryption = false
max_bytes_per_second = 0
max_unauthenticated_per_address = 5000
max_resources_per_account = 10

[offline]
max_messages = 100000
"""

LOGINS_AT_ONCE = 100       # concurrent log-ins: the listen backlog is finite


def start(request, tmp_path_factory, certificate, backend: str, stream_mgmt: str = "") -> XmppdProcess:
    return start_xmppd(request, tmp_path_factory, certificate, backend,
                       CONFIG + ("\n[stream_mgmt]\n" + stream_mgmt if stream_mgmt else ""))


def accounts(server: XmppdProcess, prefix: str, count: int, password: str | None = None) -> tuple[list[str], str]:
    password = password or secrets.token_urlsafe(12)
    return server.add_users([f"{prefix}{n}-{secrets.token_hex(3)}" for n in range(count)], password), password


async def gather_limited(coroutines, limit: int = LOGINS_AT_ONCE):
    semaphore = asyncio.Semaphore(limit)

    async def one(coroutine):
        async with semaphore:
            return await coroutine

    return await asyncio.gather(*(one(c) for c in coroutines))


async def require_sm(client: LeanClient) -> None:
    if not client.offers_sm():
        raise AssertionError("the server does not offer <sm xmlns='urn:xmpp:sm:3'/> after authentication")


class Ledger:
    """Which message went where, and what came back."""

    def __init__(self) -> None:
        self.expected: dict[str, tuple[str, str, str]] = {}   # id -> (sender bare, recipient bare, body)

    def add(self, id: str, sender: str, recipient: str, body: str) -> None:
        self.expected[id] = (sender, recipient, body)

    def check(self, senders: list[LeanClient], recipients: list[LeanClient], label: str) -> dict:
        """Lost = acknowledged to its sender, never received by its recipient. Returns the numbers and
        asserts that every received message is one that was sent, to that recipient, with its body."""
        acked = {id for sender in senders for id in sender.acked_ids if id in self.expected}
        received = messages_by_id(recipients)
        wrong = []
        for recipient in recipients:
            for message in recipient.received:
                if message.id not in self.expected:
                    continue   # not a test message (none are expected)
                sender, to, body = self.expected[message.id]
                if (to != recipient.username + "@" + recipient.domain or body != message.body
                        or (message.from_ or "").split("/")[0] != sender):
                    wrong.append((recipient.username, message))
        lost = sorted(acked - received.keys())
        duplicated = {id: len(copies) for id, copies in received.items() if len(copies) > 1}
        numbers = {
            "sent": len(self.expected),
            "acknowledged": len(acked),
            "received": sum(1 for id in received if id in self.expected),
            "lost": len(lost),
            "duplicated": len(duplicated),
            "duplicate copies": sum(duplicated.values()) - len(duplicated),
            "received unacknowledged": len(received.keys() & self.expected.keys() - acked),
        }
        print(f"\n{label}: " + ", ".join(f"{key} {value}" for key, value in numbers.items()))
        assert not wrong, f"{label}: messages that arrived changed or misrouted: {wrong[:5]}"
        numbers["lost ids"] = lost
        return numbers


async def all_received(recipients: list[LeanClient], ledger: Ledger, ids: set[str], timeout: float) -> None:
    """Wait (all recipients at once, `timeout` in all) until each has every one of `ids` sent to it;
    what is still missing then is counted as lost by Ledger.check()."""
    by_recipient: dict[str, set[str]] = {}
    for id in ids:
        by_recipient.setdefault(ledger.expected[id][1], set()).add(id)

    async def one(c: LeanClient) -> None:
        mine = by_recipient.get(f"{c.username}@{c.domain}", set())
        try:
            await c.wait_until(lambda: mine <= {m.id for m in c.received}, timeout)
        except (asyncio.TimeoutError, ConnectionLost):
            pass

    await asyncio.gather(*(one(c) for c in recipients))


# ---------------------------------------------------------------- 1. SIGKILL in the middle of traffic
SENDERS = 20
PER_SENDER = 150           # 3,000 messages
ONLINE, HIBERNATED, OFFLINE = 5, 5, 5
WINDOW = 40                # unacknowledged messages a sender allows itself
ACK_EVERY = 10


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_killed_server_keeps_every_acknowledged_message(request, tmp_path_factory, certificate, backend):
    seed = int(os.environ.get("XMPPD_DURABILITY_SEED") or random.randrange(1 << 32))
    rng = random.Random(seed)
    total = SENDERS * PER_SENDER
    kill_after = rng.randint(total // 10, total // 2)     # acknowledged messages
    plan = [[rng.randrange(ONLINE + HIBERNATED + OFFLINE) for _ in range(PER_SENDER)] for _ in range(SENDERS)]
    print(f"\n[{backend}] seed {seed}: SIGKILL once {kill_after} of {total} messages are acknowledged "
          f"(XMPPD_DURABILITY_SEED={seed} replays it)")
    server = start(request, tmp_path_factory, certificate, backend)
    sender_jids, password = accounts(server, "sender", SENDERS)
    recipient_jids, _ = accounts(server, "recipient", ONLINE + HIBERNATED + OFFLINE, password)
    ledger = Ledger()

    def client(jid: str) -> LeanClient:
        return LeanClient(jid, password, port=server.port)

    async def scenario():
        senders = await gather_limited(client(jid).login(sm=True) for jid in sender_jids)
        await require_sm(senders[0])
        recipients = [client(jid) for jid in recipient_jids]
        online = recipients[:ONLINE]
        hibernated = recipients[ONLINE:ONLINE + HIBERNATED]
        await gather_limited(c.login(sm=True) for c in online + hibernated)
        for c in online + hibernated:
            assert c.sm_id is not None and c.sm_resume, f"{c.username}: <enabled/> without resumption"
            await c.ping()
        for c in hibernated:
            c.abort()
        await asyncio.sleep(0.2)   # the server notices the broken sockets

        sent = [0]
        killed = asyncio.Event()

        async def send_all(index: int, sender: LeanClient) -> None:
            for k in range(PER_SENDER):
                if killed.is_set() or not sender.connected:
                    return
                recipient = recipient_jids[plan[index][k]]
                id = f"c{index}-{k}"
                body = f"crash test {index}/{k} {secrets.token_hex(4)}"
                ledger.add(id, sender_jids[index], recipient, body)
                sender.send_message(recipient, body, id=id)
                sent[0] += 1
                if k % ACK_EVERY == ACK_EVERY - 1:
                    sender.request_ack()
                try:
                    if len(sender.unacked) >= WINDOW:
                        sender.request_ack()
                        await sender.wait_until(lambda: len(sender.unacked) < WINDOW // 2, 30)
                    else:
                        await asyncio.sleep(0)
                except ConnectionLost:
                    return
            try:
                await sender.wait_all_acked(30)
            except ConnectionLost:
                pass

        def kill_when_enough_acknowledged(_: LeanClient) -> None:
            # Right as an <a/> arrives: the messages it acknowledged are the newest, least settled ones.
            if not killed.is_set() and sum(len(s.acked_ids) for s in senders) >= kill_after:
                server.kill()
                killed.set()

        for s in senders:
            s.on_ack = kill_when_enough_acknowledged
        senders_done = asyncio.gather(*(send_all(i, s) for i, s in enumerate(senders)))
        try:
            await asyncio.wait_for(killed.wait(), 60)
        except asyncio.TimeoutError:
            raise AssertionError(f"fewer than {kill_after} messages acknowledged in 60 s") from None
        await asyncio.wait_for(senders_done, 30)
        started = time.monotonic()
        await asyncio.to_thread(server.restart)
        print(f"[{backend}] killed after {sent[0]} messages were sent; restarted in {time.monotonic() - started:.1f} s")
        await asyncio.sleep(0)
        for c in senders + online:
            assert not c.connected

        # Every recipient again: the old resumption ids are gone with the process.
        async def come_back(c: LeanClient) -> None:
            if c.sm_id is None:       # never logged in
                await c.login(sm=True)
                return
            await c.connect()
            outcome = await c.resume()
            assert not outcome.resumed and outcome.condition == "item-not-found", \
                f"{c.username}: resuming a session of the killed server: {outcome}"
            await c.bind()
            await c.enable_sm()
            c.send_presence()

        await gather_limited(come_back(c) for c in recipients)
        acked = {id for s in senders for id in s.acked_ids}
        await all_received(recipients, ledger, acked, 20)
        await asyncio.gather(*(c.wait_quiet(0.5, 10) for c in recipients))
        numbers = ledger.check(senders, recipients, f"[{backend}] crash test")
        for c in senders + recipients:
            assert not c.protocol_errors, f"{c.username}: {c.protocol_errors}"
        await asyncio.gather(*(c.close() for c in recipients))
        return numbers

    numbers = run(scenario(), timeout=100)
    assert numbers["acknowledged"] > 0
    assert numbers["lost"] == 0, (f"seed {seed}: {numbers['lost']} acknowledged messages lost, e.g. "
                                  f"{numbers['lost ids'][:10]}; server log in {server.log_path}")


# ---------------------------------------------------------------- 2. every client drops its socket
PAIRS = 500
PER_CLIENT = 10            # messages each client sends its partner: 10,000 in all


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thousand_clients_drop_their_sockets_and_lose_nothing(request, tmp_path_factory, certificate, backend):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 4 * PAIRS + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = start(request, tmp_path_factory, certificate, backend)
    jids, password = accounts(server, "pair", 2 * PAIRS)
    partner = {jids[n]: jids[n ^ 1] for n in range(len(jids))}
    ledger = Ledger()

    async def scenario():
        started = time.monotonic()
        clients = await gather_limited(LeanClient(jid, password, port=server.port).login(sm=True, presence=True)
                                       for jid in jids)
        await require_sm(clients[0])
        await gather_limited(c.ping() for c in clients)   # everyone's initial presence is handled
        print(f"\n[{backend}] {len(clients)} clients logged in in {time.monotonic() - started:.1f} s")

        next_k = [0] * len(clients)

        def send(index: int, c: LeanClient) -> None:
            k = next_k[index]
            next_k[index] += 1
            to = partner[jids[index]]
            id, body = f"f{index}-{k}", f"fault test {index}/{k}"
            ledger.add(id, jids[index], to, body)
            c.send_message(to, body, id=id)
            if k % 3 == 2:
                c.request_ack()

        def acknowledged() -> int:
            return sum(1 for c in clients for id in c.acked_ids if id in ledger.expected)

        dropped = asyncio.Event()

        async def talk(index: int, c: LeanClient) -> None:
            while next_k[index] < PER_CLIENT and not dropped.is_set():
                send(index, c)
                await asyncio.sleep(random.random() * 0.5)

        traffic = asyncio.gather(*(talk(i, c) for i, c in enumerate(clients)))
        # In the middle of traffic: once a third of all messages are acknowledged, every socket drops.
        deadline = time.monotonic() + 30
        while acknowledged() < len(clients) * PER_CLIENT // 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        dropped.set()
        for c in clients:
            c.abort()
        await traffic
        sent_before, acked_before = len(ledger.expected), acknowledged()
        unacked_at_drop = sum(len(c.unacked) for c in clients)   # messages, and earlier presence and pings

        outcomes = Counter()

        async def come_back(c: LeanClient) -> None:
            await c.connect(timeout=30)
            outcome = await c.resume(timeout=30)
            outcomes["resumed" if outcome.resumed else f"failed ({outcome.condition})"] += 1
            if not outcome.resumed:
                await c.bind(timeout=30)
                await c.enable_sm(timeout=30)
                c.send_presence()
                c.resend_unacked()

        started = time.monotonic()
        await gather_limited(come_back(c) for c in clients)
        print(f"[{backend}] dropped after {sent_before} messages, {acked_before} acknowledged "
              f"({unacked_at_drop} stanzas unacknowledged); back in {time.monotonic() - started:.1f} s: "
              f"{dict(outcomes)}")
        for index, c in enumerate(clients):
            while next_k[index] < PER_CLIENT:
                send(index, c)
        await gather_limited((c.wait_all_acked(30) for c in clients), limit=len(clients))
        await all_received(clients, ledger, set(ledger.expected), 20)
        await asyncio.sleep(0.5)       # late duplicates
        numbers = ledger.check(clients, clients, f"[{backend}] fault test")
        for c in clients:
            assert not c.protocol_errors, f"{c.username}: {c.protocol_errors}"
        await gather_limited((c.close() for c in clients), limit=len(clients))
        return numbers

    numbers = run(scenario(), timeout=100)
    assert numbers["acknowledged"] == 2 * PAIRS * PER_CLIENT   # every message was resent until acknowledged
    assert numbers["lost"] == 0, f"{numbers['lost']} acknowledged messages lost, e.g. {numbers['lost ids'][:10]}"
