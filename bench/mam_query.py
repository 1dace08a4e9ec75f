"""Message archive queries: a page of 50 from a 1,000,000-message archive, over a socket and in storage.

Why: a phone that comes back reads what it missed from the archive (XEP-0313), and a client that
scrolls back pages through years of history. Issue #5 sets the target: a page of 50 in ≤ 20 ms on
both backends, however large the archive.

What it does (one command, bounded in time, everything on loopback):
1. fills one account's archive with N messages (default 1,000,000) with 1,000 correspondents, spread
   over the last year, directly through the storage layer (Storage.mam_append, 5,000 rows a call),
   then runs ANALYZE, as autovacuum would on a live PostgreSQL;
2. starts an xmppd process (sqlite or postgresql, module mam, log level info) on that store;
3. times each kind of query R times (default 200), each asking for a page of 50:
   latest (RSM <before/>), with (the latest page with one correspondent), time (a one-day window),
   after-id (50 after a random message) and ids (50 random ids),
   - through the iq path: a client (tests/lean_client.py) on a plain TCP socket sends the query and
     waits for the iq result, which the server sends after the 50 result messages;
   - through the storage call alone: mam.parse_query() and mam.read_page() on a store opened in this
     process, the module's own code without the socket, the XML and the event loop of the server;
4. prints p50 and p99 per kind and path, and one JSON line.

    python -m bench.mam_query [--backend sqlite|postgresql] [--messages N] [--repeat R]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import random
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

from lxml import etree

from tests.harness import XmppdProcess
from tests.lean_client import LeanClient
from xmppd.certs import generate_self_signed
from xmppd.mam import archive_id, parse_query, read_page, xep0082
from xmppd.storage import ArchiveRow, open_storage
from xmppd.storage.sql import execute

PAGE = 50
CORRESPONDENTS = 1000
FILL_BATCH = 5000
TARGET_MS = 20.0
KINDS = ("latest", "with", "time", "after-id", "ids")
MAM = "urn:xmpp:mam:2"
YEAR_US = 365 * 86400 * 1_000_000
DAY_US = 86400 * 1_000_000


def message_xml(n: int, owner: str, peer: str) -> str:
    """A typical archived chat message: ids, a body of about 100 characters, a receipt request."""
    outgoing = n % 2 == 0
    sender, recipient = (f"{owner}/phone", peer) if outgoing else (f"{peer}/laptop", owner)
    return (f"<message xmlns='jabber:client' from='{sender}' to='{recipient}' type='chat' id='m{n}'>"
            f"<body>message number {n}: the quick brown fox jumps over the lazy dog, again and again.</body>"
            f"<origin-id xmlns='urn:xmpp:sid:0' id='o{n}'/><request xmlns='urn:xmpp:receipts'/></message>")


async def fill(storage, owner: str, domain: str, count: int, first_seq: int) -> list[tuple[int, int]]:
    """Archive `count` messages for owner; returns every (seq, tag), oldest first."""
    step = max(1, YEAR_US // max(count, 1))
    keys = []
    started = time.monotonic()
    for start in range(0, count, FILL_BATCH):
        rows = []
        for n in range(start, min(count, start + FILL_BATCH)):
            seq, tag = first_seq + n * step, secrets.randbits(32)
            peer = f"contact{n % CORRESPONDENTS}@example.org"
            rows.append(ArchiveRow(seq, tag, owner, peer, "laptop" if n % 2 else "", message_xml(n, f"{owner}@{domain}",
                                                                                                 peer)))
            keys.append((seq, tag))
        await storage.mam_append(rows)
        if start and start % 100_000 == 0:
            print(f"  {start:,} archived ({start / (time.monotonic() - started):,.0f}/s)", file=sys.stderr)
    return keys


def analyze():
    yield execute("ANALYZE")


def query_xml(kind: str, keys: list[tuple[int, int]], rng: random.Random) -> str:
    """A query of one kind for a page of 50: the <query/> element as a client sends it."""
    fields, rsm = {}, f"<max>{PAGE}</max>"
    if kind == "latest":
        rsm += "<before/>"
    elif kind == "with":
        fields["with"] = [f"contact{rng.randrange(CORRESPONDENTS)}@example.org"]
        rsm += "<before/>"
    elif kind == "time":
        day = rng.randrange(keys[0][0], max(keys[0][0] + 1, keys[-1][0] - DAY_US))
        fields["start"] = [xep0082(datetime.datetime.fromtimestamp(day / 1e6, datetime.timezone.utc))]
        fields["end"] = [xep0082(datetime.datetime.fromtimestamp((day + DAY_US) / 1e6, datetime.timezone.utc))]
    elif kind == "after-id":
        seq, tag = keys[rng.randrange(max(1, len(keys) - PAGE))]
        rsm += f"<after>{archive_id(seq, tag)}</after>"
    elif kind == "ids":
        fields["ids"] = [archive_id(*keys[rng.randrange(len(keys))]) for _ in range(PAGE)]
    form = ""
    if fields:
        form = ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
                f"<value>{MAM}</value></field>"
                + "".join(f"<field var={quoteattr(var)}>" + "".join(f"<value>{v}</value>" for v in values)
                          + "</field>" for var, values in fields.items()) + "</x>")
    return f"<query xmlns='{MAM}' queryid='b'>{form}<set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set></query>"


def percentile(values: list[float], p: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(times: list[float], pages: list[int]) -> dict:
    return {"p50_ms": round(percentile(times, 50), 2), "p99_ms": round(percentile(times, 99), 2),
            "mean_page": round(sum(pages) / len(pages), 1)}


async def over_socket(server: XmppdProcess, jid: str, password: str, keys, repeat: int, seed: int) -> dict:
    client = await LeanClient(jid, password, port=server.port).login()
    results = {}
    try:
        for kind in KINDS:
            rng = random.Random(seed)
            times, pages = [], []
            for _ in range(repeat):
                query = query_xml(kind, keys, rng)
                before = len(client.received)
                started = time.perf_counter()
                answer = await client.iq(f"<iq type='set' id='{{id}}'>{query}</iq>", timeout=30)
                times.append((time.perf_counter() - started) * 1000)
                if answer.get("type") != "result":
                    raise RuntimeError(f"{kind}: {etree.tostring(answer).decode()}")
                pages.append(len(client.received) - before)
                del client.received[:]
            results[kind] = summary(times, pages)
    finally:
        await client.close()
    return results


async def in_storage(storage, owner: str, keys, repeat: int, seed: int) -> dict:
    results = {}
    for kind in KINDS:
        rng = random.Random(seed)
        times, pages = [], []
        for _ in range(repeat):
            element = etree.fromstring(query_xml(kind, keys, rng))
            started = time.perf_counter()
            page = await read_page(storage, owner, parse_query(element, 250))
            times.append((time.perf_counter() - started) * 1000)
            pages.append(len(page.messages))
        results[kind] = summary(times, pages)
    return results


def table(result: dict) -> str:
    lines = [f"backend {result['backend']}, {result['messages']:,} messages, {CORRESPONDENTS} correspondents, "
             f"page of {PAGE}, {result['repeat']} queries per kind (fill {result['fill_s']} s)",
             f"{'kind':<10} {'iq p50':>9} {'iq p99':>9} {'storage p50':>12} {'storage p99':>12} {'page':>6}"]
    for kind in KINDS:
        iq, st = result["iq"][kind], result["storage"][kind]
        lines.append(f"{kind:<10} {iq['p50_ms']:>7.2f}ms {iq['p99_ms']:>7.2f}ms {st['p50_ms']:>10.2f}ms "
                     f"{st['p99_ms']:>10.2f}ms {iq['mean_page']:>6}")
    lines.append(f"target: p50 of a page of 50 ≤ {TARGET_MS} ms through the iq path: "
                 + ("met" if result["target_met"] else "MISSED"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=200, help="queries per kind and path")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (xmppd's log) for a look")
    args = parser.parse_args(argv)
    if args.messages < PAGE or args.repeat < 1:
        parser.error(f"--messages must be at least {PAGE} and --repeat at least 1")

    workdir = Path(tempfile.mkdtemp(prefix="bench-mam-"))
    cert, key = str(workdir / "localhost.crt"), str(workdir / "localhost.key")
    generate_self_signed("localhost", cert, key, extra_names=("127.0.0.1",))
    server = XmppdProcess(workdir, args.backend, cert, key, "require_encryption = false\nmax_bytes_per_second = 0\n\n"
                          '[modules]\nenabled = ["mam"]\n')
    server.config_path.write_text(server.config_path.read_text().replace('level = "debug"', 'level = "info"'))
    password = secrets.token_urlsafe(12)
    owner = f"owner-{secrets.token_hex(3)}"

    async def prepare() -> tuple[list[tuple[int, int]], float]:
        storage = await open_storage(args.backend, **server.storage_kwargs)
        try:
            started = time.monotonic()
            first_seq = time.time_ns() // 1000 - YEAR_US - DAY_US
            keys = await fill(storage, owner, "localhost", args.messages, first_seq)
            await storage._run(analyze)
            return keys, time.monotonic() - started
        finally:
            await storage.close()

    async def measure(keys) -> tuple[dict, dict]:
        socket_results = await over_socket(server, f"{owner}@localhost", password, keys, args.repeat, args.seed)
        storage = await open_storage(args.backend, **server.storage_kwargs)
        try:
            return socket_results, await in_storage(storage, owner, keys, args.repeat, args.seed)
        finally:
            await storage.close()

    try:
        server.add_users([owner], password)
        keys, fill_seconds = asyncio.run(prepare())
        server.start()
        iq_results, storage_results = asyncio.run(asyncio.wait_for(measure(keys), 600 + args.repeat * 10))
    finally:
        server.cleanup()
        if args.keep:
            print(f"work directory: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "scenario": "mam_query",
        "server": "xmppd",
        "backend": args.backend,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cpus, {platform.machine()}, Python {platform.python_version()}",
        "messages": args.messages,
        "repeat": args.repeat,
        "fill_s": round(fill_seconds, 1),
        "iq": iq_results,
        "storage": storage_results,
        "target_ms": TARGET_MS,
        "target_met": all(r["p50_ms"] <= TARGET_MS for r in iq_results.values()),
    }
    print(json.dumps(result))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
