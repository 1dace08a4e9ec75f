"""The scenarios of issue #7, each against one server that it restarts first (a Prosody that has
served thousands of sessions is slower than a fresh one, so every scenario starts equal).

Each returns a dict: one JSON line. Rates count what the receivers got, not what was sent. CPU is
utime + stime from /proc/<pid>/stat of the server process and of the generator's worker processes,
as a share of the wall time of the measured phase (1.0 = one core); `machine_busy` is the share of
all CPUs that were busy, so other work on the machine shows.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from array import array
from dataclasses import dataclass

from bench import push_latency
from bench.loadgen import Target, WorkerPool, split
from bench.push_latency import cpu_seconds, machine_cpu, percentile
from bench.servers import Server


@dataclass(frozen=True)
class Settings:
    """Sizes and durations; the defaults are issue #7's, `quick()` is for the smoke test."""
    workers: int = 2
    mechanism: str = "SCRAM-SHA-1"
    login_clients: int = 2000
    login_in_flight: int = 100
    clients: int = 200
    seconds: float = 30.0
    window: int = 5
    rate: float = 3000.0
    idle_sessions: int = 5000
    resume_phones: int = 20
    resume_rounds: int = 10
    resume_stanzas: int = 50
    push_phones: int = 500
    push_rate: float = 1000.0
    push_seconds: float = 10.0
    settle: float = 10.0    # seconds for a server to finish its work (and its garbage collector, in each
                            # of the three, to catch up) after a phase, before RSS is read

    @classmethod
    def quick(cls, workers: int = 2) -> "Settings":
        return cls(workers=workers, login_clients=100, login_in_flight=20, clients=20, seconds=2.0, rate=200.0,
                   idle_sessions=100, resume_phones=3, resume_rounds=3, push_phones=20, push_rate=50.0,
                   push_seconds=2.0, settle=1.0)

    def accounts(self) -> int:
        """Accounts every server needs: the largest client set, plus the resume phones and their sender."""
        return max(self.login_clients, self.clients, self.idle_sessions) + self.resume_phones + 1


def usernames(count: int) -> list[str]:
    return [f"bench{n}" for n in range(count)]


class Meter:
    """CPU of the server and of the generator's workers, and the wall time, over one phase."""

    def __init__(self, server: Server, pool: WorkerPool) -> None:
        self.server, self.pool = server, pool

    def _sample(self) -> tuple[float, float, float, tuple[int, int]]:
        generator = sum(cpu_seconds(f"/proc/{pid}/stat") for pid in self.pool.pids)
        return time.monotonic(), self.server.cpu_seconds(), generator, machine_cpu()

    def __enter__(self) -> "Meter":
        self.begin = self._sample()
        return self

    def __exit__(self, *exc) -> None:
        self.end = self._sample()

    @property
    def wall(self) -> float:
        return self.end[0] - self.begin[0]

    @property
    def server_cpu(self) -> float:
        return self.end[1] - self.begin[1]

    def shares(self) -> dict:
        (w0, s0, g0, (busy0, all0)), (w1, s1, g1, (busy1, all1)) = self.begin, self.end
        wall = w1 - w0
        return {"server": round((s1 - s0) / wall, 3), "generator": round((g1 - g0) / wall, 3),
                "machine_busy": round((busy1 - busy0) / max(1, all1 - all0), 3)}


def latency_ms(chunks: list[bytes]) -> dict:
    values = array("I")
    for chunk in chunks:
        values.frombytes(chunk)
    ordered = sorted(values)
    result = {f"p{p}": percentile(ordered, p) for p in (50, 90, 99)}
    result["max"] = ordered[-1] if ordered else None
    return {key: round(value / 1000, 2) if value is not None else None for key, value in result.items()}


class Run:
    """Scenarios against one server: it is restarted and a fresh worker pool is made for each."""

    def __init__(self, server: Server, settings: Settings, password: str) -> None:
        self.server, self.settings = server, settings
        self.target = Target("127.0.0.1", server.port, server.domain, password, settings.mechanism)
        self.accounts = usernames(settings.accounts())

    @contextlib.contextmanager
    def fresh(self, workers: int | None = None):
        self.server.start()
        pool = WorkerPool(workers or self.settings.workers)
        try:
            yield pool
        finally:
            pool.close()
            self.server.stop()

    def _login(self, pool: WorkerPool, names: list[str], in_flight: int, timeout: float, *, sm: bool = False
               ) -> list[dict]:
        parts = split(names, len(pool.pids))
        concurrency = max(1, in_flight // len(parts))
        results = pool.run("login", [{"target": self.target, "usernames": part, "concurrency": concurrency,
                                      "sm": sm} for part in parts], timeout)
        failed = sum(r["failed"] for r in results)
        if failed:
            errors = [e for r in results for e in r["errors"]]
            raise RuntimeError(f"{failed} of {len(names)} logins failed, e.g. {errors[:3]}")
        return results

    def login(self) -> dict:
        s = self.settings
        with self.fresh() as pool:
            with Meter(self.server, pool) as meter:
                results = self._login(pool, self.accounts[:s.login_clients], s.login_in_flight,
                                      60 + s.login_clients / 10)
            span = max(r["end"] for r in results) - min(r["start"] for r in results)
            pool.run("close", [{}] * len(pool.pids), 60)
        return {"scenario": "login", "clients": s.login_clients, "in_flight": s.login_in_flight,
                "logins": s.login_clients, "seconds": round(span, 3),
                "logins_per_s": round(s.login_clients / span, 1),
                "server_cpu_us_per_login": round(meter.server_cpu / s.login_clients * 1e6, 1),
                "cpu_share": meter.shares()}

    def throughput(self) -> dict:
        s = self.settings
        with self.fresh() as pool:
            self._login(pool, self.accounts[:s.clients], 100, 120)
            time.sleep(1.0)
            with Meter(self.server, pool) as meter:
                results = pool.run("closed_loop", [{"seconds": s.seconds, "window": s.window}] * len(pool.pids),
                                   s.seconds + 60)
            pool.run("close", [{}] * len(pool.pids), 60)
        received = sum(r["received"] for r in results)
        return {"scenario": "throughput", "clients": s.clients, "in_flight_per_sender": s.window,
                "seconds": s.seconds, "sent": sum(r["sent"] for r in results), "received": received,
                "received_per_s": round(received / s.seconds, 1),
                "latency_ms": latency_ms([r["latencies_us"] for r in results]),
                "server_cpu_us_per_message": round(meter.server_cpu / received * 1e6, 1) if received else None,
                "cpu_share": meter.shares()}

    def fixed_rate(self) -> dict:
        s = self.settings
        with self.fresh() as pool:
            self._login(pool, self.accounts[:s.clients], 100, 120)
            time.sleep(1.0)
            workers = len(pool.pids)
            with Meter(self.server, pool) as meter:
                results = pool.run("fixed_rate", [{"rate": s.rate / workers, "seconds": s.seconds}] * workers,
                                   s.seconds + 60)
            pool.run("close", [{}] * workers, 60)
        sent = sum(r["sent"] for r in results)
        span = max(r["end"] for r in results) - min(r["start"] for r in results)
        return {"scenario": "fixed_rate", "clients": s.clients, "target_rate": s.rate, "seconds": s.seconds,
                "sent": sent, "send_rate": round(sent / span, 1),
                "received": sum(r["received"] for r in results),
                "latency_ms": latency_ms([r["latencies_us"] for r in results]),
                "cpu_share": meter.shares()}

    def idle_memory(self) -> dict:
        return self._memory("idle_memory", hibernate=False)

    def hibernated_memory(self) -> dict:
        return self._memory("hibernated_memory", hibernate=True)

    def _memory(self, scenario: str, *, hibernate: bool) -> dict:
        """RSS above the freshly started server's, per session: idle sessions with initial presence,
        or (hibernate) resumable XEP-0198 sessions whose sockets were then cut."""
        s = self.settings
        with self.fresh() as pool:
            time.sleep(s.settle)
            start = self.server.rss_kib()
            self._login(pool, self.accounts[:s.idle_sessions], 100, 60 + s.idle_sessions / 10, sm=hibernate)
            time.sleep(s.settle)
            live = self.server.rss_kib()
            result = {"scenario": scenario, "sessions": s.idle_sessions, "rss_start_kib": start,
                      "rss_live_kib": live, "kib_per_live_session": round((live - start) / s.idle_sessions, 2)}
            if hibernate:
                pool.run("drop", [{}] * len(pool.pids), 60)
                time.sleep(s.settle)
                hibernated = self.server.rss_kib()
                result.update(rss_hibernated_kib=hibernated,
                              kib_per_hibernated_session=round((hibernated - start) / s.idle_sessions, 2))
            else:
                pool.run("close", [{}] * len(pool.pids), 60)
        return result

    def resume(self) -> dict:
        s = self.settings
        phones = self.accounts[-1 - s.resume_phones:-1]
        with self.fresh(workers=1) as pool:
            with Meter(self.server, pool) as meter:
                [result] = pool.run("resume_round_trips", [{
                    "target": self.target, "phones": phones, "sender": self.accounts[-1], "rounds": s.resume_rounds,
                    "stanzas": s.resume_stanzas}], 120 + s.resume_phones * s.resume_rounds)
            pool.run("close", [{}], 60)
        if result["failures"]:
            raise RuntimeError(f"resumption failed: {result['failures']}")
        return {"scenario": "resume", "phones": s.resume_phones, "rounds": s.resume_rounds,
                "stanzas_redelivered": s.resume_stanzas,
                "round_trip_ms": latency_ms([result["round_trips_us"]]), "cpu_share": meter.shares()}


def push(settings: Settings) -> dict:
    """bench/push_latency.py's scenario, as it runs on its own (its own xmppd and fake APNs)."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        push_latency.main(["--phones", str(settings.push_phones), "--rate", str(settings.push_rate),
                           "--seconds", str(settings.push_seconds)])
    result = json.loads(output.getvalue().splitlines()[0])
    result["scenario"] = "push"
    return result


# scenario name → the servers it runs against (None: every server asked for); the order is the run's
SCENARIOS = {
    "login": None,
    "throughput": None,
    "fixed_rate": None,
    "idle_memory": None,
    "hibernated_memory": ("xmppd",),
    "resume": ("xmppd",),
    "push": ("xmppd",),
}
