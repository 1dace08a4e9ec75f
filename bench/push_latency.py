"""Push latency: a message for a sleeping phone → the request at (fake) APNs, at a fixed rate.

Why: waking a phone is what xmppd is for (issue #4), and a push that arrives seconds late is a
missed call or a message read too late. Issue #7 sets the target: p99 ≤ 50 ms at 1,000 pushes/s.

What it does (one command, bounded in time, everything on loopback):
1. starts the fake APNs of tests/push_fakes.py in a thread of this process (real TLS + HTTP/2, it
   checks the JWT and the headers of every request and records its `time.monotonic()` on
   arrival) and an xmppd process (sqlite or postgresql) with offline, csi, stream_mgmt, push and
   the in-process appserver, [push] coalesce_window = 0 (so each message can be its own push),
   the appserver's per-device rate limit and c2s rate limits out of the way, log level info;
2. logs in N phones with stream management and resumption, enables Monal-style push (node = a
   unique 64-hex APNs token, pushModule), and drops their sockets: their sessions hibernate;
3. a few sender clients send chat messages at a fixed rate for S seconds, round-robin to the
   phones (each phone always hears from the same sender, so its messages stay in order); each
   body carries the phone's sequence number, and the sending time (`time.monotonic()`) is noted;
4. matches pushes to messages per token by `message-count` (xmppd counts a device's messages
   since it was last connected): message k of a phone is notified by the first push for that
   token whose count is ≥ k. latency = fake's arrival time − sender's send time, on one clock
   (CLOCK_MONOTONIC is system-wide on Linux and both ends are on this machine). A message whose
   push went out with a later one (xmppd merges what arrives while a push for the device is
   still under way, even with coalesce_window 0) counts as "merged"; one never notified as
   "missing".
5. reports CPU time of the xmppd process (/proc/<pid>/stat) and of this process (the load
   generator and the fake APNs thread, which is shown on its own) as a share of wall time.

The latency is measured from the sender's write, so it includes the sender's stanza crossing
the socket and xmppd parsing and routing it: slightly more than the issue's "stanza reaching the
hibernated session". The fake runs in this process, so GIL waits in this process add to it too.

    python -m bench.push_latency [--backend sqlite|postgresql] [--phones N] [--rate R] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.harness import XmppdProcess
from tests.lean_client import LeanClient
from tests.push_fakes import FakeAPNs
from xmppd.certs import generate_self_signed

TOPIC = "org.example.xmppd.bench"
PUSH_MODULE = "benchProdiOS"
APP_SERVER = "push.localhost"
TARGET_P99_MS = 50.0
LOGIN_CONCURRENCY = 50
DRAIN_TIMEOUT = 15.0        # after the last message: how long to wait for the last pushes
TICKS = os.sysconf("SC_CLK_TCK")


def server_toml(apns: FakeAPNs, key_file: Path, max_queue: int) -> str:
    """The [c2s] tail and the sections XmppdProcess does not write (tests/harness.py)."""
    return f"""require_encryption = false
max_bytes_per_second = 0
max_unauthenticated_per_address = 100000

[modules]
enabled = ["offline", "csi", "stream_mgmt", "push", "appserver"]

[stream_mgmt]
max_queue = {max_queue}

[push]
coalesce_window = 0

[appserver]
rate_limit = 1000
rate_burst = 1000

{apns.app_toml("ios", key_file, push_modules=[PUSH_MODULE])}"""


async def hibernate(port: int, jid: str, password: str, token: str) -> None:
    """A phone logs in with resumable stream management, enables push, and loses its connection."""
    phone = LeanClient(jid, password, port=port, auto_ack=False)
    await phone.login(sm=True)
    answer = await phone.iq(
        f"<iq type='set' id='{{id}}'><enable xmlns='urn:xmpp:push:0' jid='{APP_SERVER}' node='{token}'>"
        "<x xmlns='jabber:x:data' type='submit'>"
        "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
        f"<field var='pushModule'><value>{PUSH_MODULE}</value></field></x></enable></iq>")
    if answer.get("type") != "result":
        raise RuntimeError(f"{jid}: push not enabled")
    phone.abort()


async def send_load(senders: list[LeanClient], phones: list[str], rate: float, seconds: float
                    ) -> list[list[float]]:
    """Send rate messages/s for seconds, message i to phone i % N from sender (i % N) % S.
    Returns, per phone, the send time of its 1st, 2nd, … message."""
    sent: list[list[float]] = [[] for _ in phones]
    total = int(rate * seconds)
    start = time.monotonic()
    i = 0
    while i < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while i < due:
            phone = i % len(phones)
            seq = len(sent[phone]) + 1
            sent[phone].append(time.monotonic())
            senders[phone % len(senders)].send_message(phones[phone], f"bench {seq}")
            i += 1
        await asyncio.sleep(0.001)
    return sent


def match(sent: list[list[float]], tokens: list[str], pushes: list) -> tuple[list[float], int, int]:
    """(latencies in ms, messages merged into a later push, messages never notified)."""
    by_token: dict[str, list[tuple[float, int]]] = {}
    for push in pushes:
        if push.status == 200 and push.payload and push.payload.get("kind") == "message":
            by_token.setdefault(push.token, []).append((push.monotonic, push.payload["message-count"]))
    latencies, merged, missing = [], 0, 0
    for times, token in zip(sent, tokens):
        arrivals = sorted(by_token.get(token, []))
        for k, sent_at in enumerate(times, 1):
            first = next(((at, count) for at, count in arrivals if count >= k), None)
            if first is None:
                missing += 1
                continue
            latencies.append((first[0] - sent_at) * 1000)
            merged += first[1] != k
    return latencies, merged, missing


def percentile(values: list[float], p: float) -> float | None:
    """Nearest rank."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def cpu_seconds(stat_path: str) -> float:
    """utime + stime of a process or thread from /proc/…/stat."""
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a process's main thread (the event loop) and of its other threads (storage …)."""
    seconds = {"main": 0.0, "other": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            seconds["main" if task.name == str(pid) else "other"] += cpu_seconds(str(task / "stat"))
        except OSError:
            pass   # the thread ended meanwhile
    return seconds


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat (idle and iowait count as not busy)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


def start_profiler(pid: int, path: str, seconds: float) -> subprocess.Popen:
    """py-spy (from the venv or PATH) sampling the server for the load's duration."""
    py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if py_spy is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--format", "raw", "--output", path,
                             "--duration", str(max(1, int(seconds))), "--rate", "200"],
                            stdout=subprocess.DEVNULL)


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def scenario(server: XmppdProcess, apns: FakeAPNs, args: argparse.Namespace, phones: list[str],
                   contacts: list[str], password: str) -> dict:
    tokens = [secrets.token_hex(32) for _ in phones]

    gate = asyncio.Semaphore(LOGIN_CONCURRENCY)

    async def one(jid: str, token: str) -> None:
        async with gate:
            await hibernate(server.port, jid, password, token)

    await asyncio.gather(*(one(jid, token) for jid, token in zip(phones, tokens)))
    senders = [await LeanClient(jid, password, port=server.port).login() for jid in contacts]
    await asyncio.sleep(1.0)          # every dropped socket noticed: all sessions hibernated
    apns.clear()

    fake_thread = f"/proc/self/task/{apns._thread.native_id}/stat"   # the fake's own thread (private field)
    server_stat = f"/proc/{server.process.pid}/stat"
    threads0, machine0 = thread_cpu(server.process.pid), machine_cpu()
    wall0, server0, self0, fake0 = time.monotonic(), cpu_seconds(server_stat), self_cpu(), cpu_seconds(fake_thread)
    profiler = start_profiler(server.process.pid, args.profile, args.seconds) if args.profile else None
    sent = await send_load(senders, phones, args.rate, args.seconds)
    send_end = time.monotonic()
    total = sum(len(times) for times in sent)
    deadline = send_end + DRAIN_TIMEOUT
    while time.monotonic() < deadline:     # until every phone's last message is notified
        latest = {}
        for push in apns.requests:
            if push.payload and push.payload.get("kind") == "message":
                latest[push.token] = max(latest.get(push.token, 0), push.payload.get("message-count", 0))
        if all(latest.get(token, 0) >= len(times) for token, times in zip(tokens, sent)):
            break
        await asyncio.sleep(0.05)
    wall = time.monotonic() - wall0
    server_cpu = cpu_seconds(server_stat) - server0
    bench_cpu, fake_cpu = self_cpu() - self0, cpu_seconds(fake_thread) - fake0
    busy, jiffies = (now - then for now, then in zip(machine_cpu(), machine0))
    threads = {name: round((spent - threads0.get(name, 0.0)) / wall, 3)
               for name, spent in thread_cpu(server.process.pid).items()}
    for sender in senders:
        await sender.close()
    if profiler is not None:
        await asyncio.to_thread(profiler.wait)

    pushes = apns.requests
    latencies, merged, missing = match(sent, tokens, pushes)
    ok = [p for p in pushes if p.status == 200]
    arrivals = [p.monotonic for p in ok]
    push_span = (max(arrivals) - wall0) if arrivals else 0.0
    ms = {f"p{p}": percentile(latencies, p) for p in (50, 90, 99)}
    ms["max"] = max(latencies) if latencies else None
    return {
        "scenario": "push_latency",
        "server": "xmppd",
        "backend": args.backend,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cpus, {platform.machine()}, Python {platform.python_version()}",
        "phones": args.phones,
        "senders": args.senders,
        "coalesce_window": 0,
        "target_rate": args.rate,
        "seconds": args.seconds,
        "messages_sent": total,
        "send_rate": round(total / (send_end - wall0), 1),
        "pushes_ok": len(ok),
        "pushes_failed": len(pushes) - len(ok),
        "push_rate": round(len(ok) / push_span, 1) if push_span else 0.0,
        "messages_merged": merged,
        "messages_missing": missing,
        "fake_apns_violations": len(apns.violations),
        "latency_ms": {key: round(value, 2) if value is not None else None for key, value in ms.items()},
        "target_p99_ms": TARGET_P99_MS,
        "p99_met": ms["p99"] is not None and ms["p99"] <= TARGET_P99_MS and missing == 0,
        "wall_s": round(wall, 2),
        "xmppd_cpu_us_per_push": round(server_cpu / len(ok) * 1e6) if ok else None,
        "cpu_share": {"xmppd": round(server_cpu / wall, 3), "bench_process": round(bench_cpu / wall, 3),
                      "of_which_fake_apns": round(fake_cpu / wall, 3),
                      "machine_busy_of_all_cpus": round(busy / jiffies, 3)},
        "xmppd_threads_cpu_share": threads,
    }


def table(result: dict) -> str:
    lat, cpu = result["latency_ms"], result["cpu_share"]
    rows = [
        ("backend", result["backend"]),
        ("phones / senders", f"{result['phones']} / {result['senders']}"),
        ("coalesce_window", "0 s (each message may be its own push)"),
        ("messages sent", f"{result['messages_sent']} at {result['send_rate']}/s (target {result['target_rate']}/s)"),
        ("pushes at fake APNs", f"{result['pushes_ok']} ok, {result['pushes_failed']} failed, "
                                f"{result['push_rate']}/s"),
        ("messages merged / missing", f"{result['messages_merged']} / {result['messages_missing']}"),
        ("latency p50/p90/p99/max", "/".join(f"{lat[k]}" for k in ("p50", "p90", "p99", "max")) + " ms"),
        ("target p99", f"≤ {result['target_p99_ms']} ms: {'met' if result['p99_met'] else 'MISSED'}"),
        ("CPU share of wall", f"xmppd {cpu['xmppd']:.0%}, bench process {cpu['bench_process']:.0%} "
                              f"(fake APNs {cpu['of_which_fake_apns']:.0%}); machine busy "
                              f"{cpu['machine_busy_of_all_cpus']:.0%} of {os.cpu_count()} CPUs"),
        ("xmppd CPU per push", f"{result['xmppd_cpu_us_per_push']} µs"),
        ("xmppd threads", "main (event loop) {main:.0%}, other {other:.0%}".format(**result["xmppd_threads_cpu_share"])),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--phones", type=int, default=500)
    parser.add_argument("--senders", type=int, default=5)
    parser.add_argument("--rate", type=float, default=1000.0, help="messages per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--profile", metavar="FILE",
                        help="record xmppd with py-spy while the load runs (collapsed stacks, for flamegraphs)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (xmppd's log) for a look")
    args = parser.parse_args(argv)
    if args.phones < 1 or args.senders < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("phones, senders, rate and seconds must be positive")

    workdir = Path(tempfile.mkdtemp(prefix="bench-push-"))
    cert, key = str(workdir / "localhost.crt"), str(workdir / "localhost.key")
    generate_self_signed("localhost", cert, key, extra_names=("127.0.0.1",))
    per_phone = int(args.rate * args.seconds / args.phones) + 1
    apns = FakeAPNs(topic=TOPIC)
    apns.start()
    server = None
    try:
        key_file = workdir / "apns.p8"
        server = XmppdProcess(workdir, args.backend, cert, key,
                              server_toml(apns, key_file, min(1000000, max(1000, 2 * per_phone))))
        # The harness logs at debug for tests; a benchmark runs at the production default.
        server.config_path.write_text(server.config_path.read_text().replace('level = "debug"', 'level = "info"'))
        server.start()
        password = secrets.token_urlsafe(12)    # add_users runs its own event loop: before ours
        phones = server.add_users([f"phone{n}-{secrets.token_hex(3)}" for n in range(args.phones)], password)
        contacts = server.add_users([f"sender{n}-{secrets.token_hex(3)}" for n in range(args.senders)], password)
        budget = 120 + args.phones / 20 + args.seconds + DRAIN_TIMEOUT
        result = asyncio.run(asyncio.wait_for(scenario(server, apns, args, phones, contacts, password), budget))
    finally:
        if server is not None:
            server.cleanup()
        apns.stop()
        if args.keep:
            print(f"work directory: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
