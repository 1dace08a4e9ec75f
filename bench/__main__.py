"""python -m bench: every scenario of issue #7 against xmppd, Prosody and ejabberd, in one run on
one machine; one JSON line per scenario and server, then a table with xmppd's ratios.

    python -m bench [--servers xmppd,prosody,ejabberd] [--scenarios login,throughput,…] [--quick]
                    [--seconds S] [--clients N] [--rate R] [--login-clients N] [--sessions N] [--workers N]

bench/README.md says what it installs and how to read the output; docs/performance.md has the method.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import platform
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

from bench.scenarios import SCENARIOS, Run, Settings, push
from bench.servers import REPOSITORY, SERVERS, ServerUnavailable

INSTALLERS = {"prosody": "scripts/ensure-prosody.sh", "ejabberd": "scripts/ensure-ejabberd.sh"}
FILES_NEEDED = 3 * 5000            # 5,000 sessions: a socket each in the server, more in the generator

# (scenario, label, path in the result, what is better) — the table's rows
ROWS = [
    ("login", "logins/s", ("logins_per_s",), "higher"),
    ("login", "server CPU µs per login", ("server_cpu_us_per_login",), "lower"),
    ("login", "CPU share server / generator", ("cpu_share",), None),
    ("throughput", "messages received/s", ("received_per_s",), "higher"),
    ("throughput", "server CPU µs per message", ("server_cpu_us_per_message",), "lower"),
    ("throughput", "latency p50 ms", ("latency_ms", "p50"), "lower"),
    ("throughput", "latency p99 ms", ("latency_ms", "p99"), "lower"),
    ("throughput", "CPU share server / generator", ("cpu_share",), None),
    ("fixed_rate", "sent / received", ("sent", "received"), None),
    ("fixed_rate", "latency p50 ms", ("latency_ms", "p50"), "lower"),
    ("fixed_rate", "latency p99 ms", ("latency_ms", "p99"), "lower"),
    ("fixed_rate", "CPU share server / generator", ("cpu_share",), None),
    ("idle_memory", "KiB per idle session", ("kib_per_live_session",), "lower"),
    ("hibernated_memory", "KiB per hibernated session", ("kib_per_hibernated_session",), "lower"),
    ("resume", "round trip p50 ms", ("round_trip_ms", "p50"), "lower"),
    ("resume", "round trip p99 ms", ("round_trip_ms", "p99"), "lower"),
    ("push", "pushes/s", ("push_rate",), "higher"),
    ("push", "latency p50 ms", ("latency_ms", "p50"), "lower"),
    ("push", "latency p99 ms", ("latency_ms", "p99"), "lower"),
]


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    memory = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    return (f"{os.cpu_count()} CPUs ({model}), {memory} GiB, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def raise_file_limit() -> None:
    """Thousands of sessions need thousands of descriptors, in the server and in each generator process
    (they inherit the limit). The hard limit is raised where that is allowed (root outside a container)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < FILES_NEEDED:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (FILES_NEEDED, FILES_NEEDED))
            return
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < FILES_NEEDED // 2:
        print(f"bench: only {hard} open files allowed (ulimit -Hn); the memory scenarios may fail", file=sys.stderr)


def ensure_installed(name: str) -> None:
    if name in INSTALLERS and shutil.which("prosody" if name == "prosody" else "ejabberdctl") is None:
        print(f"bench: installing {name} from Debian ({INSTALLERS[name]})", file=sys.stderr)
        subprocess.run(["bash", str(REPOSITORY / INSTALLERS[name])], check=True)


def pick(result: dict, path: tuple[str, ...]):
    if path == ("cpu_share",):
        share = result.get("cpu_share") or {}
        return f"{share.get('server', '?')} / {share.get('generator', '?')}" if share else None
    if path == ("sent", "received"):
        return f"{result.get('sent')} / {result.get('received')}"
    value = result
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def median_of(values):
    """The median of a figure over the repetitions (--repeat); a text cell is the first run's."""
    values = [value for value in values if value is not None]
    if not values:
        return None
    if not all(isinstance(value, (int, float)) for value in values):
        return values[0]
    return round(statistics.median(values), 2)


def table(results: list[dict], servers: list[str]) -> str:
    """One row per figure, one column per server (the median over repetitions), and xmppd's ratios."""
    others = [name for name in servers if name != "xmppd"]
    header = ["scenario", "figure", *servers, *(f"xmppd÷{name}" for name in others if "xmppd" in servers)]
    lines = [header]
    for scenario, label, path, better in ROWS:
        by_server: dict[str, list[dict]] = {}
        for result in results:
            if result["scenario"] == scenario and "error" not in result:
                by_server.setdefault(result["server"], []).append(result)
        failed = {r["server"] for r in results if r["scenario"] == scenario and "error" in r}
        if not by_server and not failed:
            continue
        cells = [scenario, label + (f" ({better} is better)" if better else "")]
        values = {}
        for name in servers:
            if name in failed:
                cells.append("error")
            elif name in by_server:
                values[name] = median_of(pick(result, path) for result in by_server[name])
                cells.append("–" if values[name] is None else str(values[name]))
            else:
                cells.append("–")
        if "xmppd" in servers:
            for name in others:
                mine, theirs = values.get("xmppd"), values.get(name)
                numbers = isinstance(mine, (int, float)) and isinstance(theirs, (int, float)) and theirs
                cells.append(f"{mine / theirs:.2f}" if better and numbers else "")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="xmppd,prosody,ejabberd",
                        help="comma-separated, from: " + ", ".join(SERVERS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated, from: " + ", ".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 s phases (a smoke test)")
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes")
    parser.add_argument("--mechanism", choices=("SCRAM-SHA-1", "PLAIN"), default="SCRAM-SHA-1",
                        help="SASL mechanism; with PLAIN every server runs PBKDF2 on each login (all store SCRAM keys)")
    parser.add_argument("--seconds", type=float, help="duration of the throughput and fixed-rate phases")
    parser.add_argument("--clients", type=int, help="clients of the throughput and fixed-rate scenarios")
    parser.add_argument("--rate", type=float, help="messages/s of the fixed-rate scenario")
    parser.add_argument("--login-clients", type=int, help="accounts that log in in the login scenario")
    parser.add_argument("--sessions", type=int, help="sessions of the memory scenarios")
    parser.add_argument("--push-seconds", type=float, help="duration of the push scenario")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each scenario this many times per server, alternating servers; the table "
                             "shows medians")
    parser.add_argument("--xmppd-modules", metavar="LIST",
                        help="xmppd's [modules] enabled, comma-separated (default: its defaults), e.g. without "
                             "mam to compare with servers that archive nothing")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (servers' logs)")
    args = parser.parse_args(argv)
    servers = [name for name in args.servers.split(",") if name]
    scenarios = [name for name in args.scenarios.split(",") if name]
    for name in servers:
        if name not in SERVERS:
            parser.error(f"--servers: unknown server {name!r}; choose from {', '.join(SERVERS)}")
    for name in scenarios:
        if name not in SCENARIOS:
            parser.error(f"--scenarios: unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    settings = Settings.quick(args.workers) if args.quick else Settings(workers=args.workers)
    changes = {"mechanism": args.mechanism, "seconds": args.seconds, "clients": args.clients, "rate": args.rate,
               "login_clients": args.login_clients, "idle_sessions": args.sessions,
               "push_seconds": args.push_seconds}
    settings = dataclasses.replace(settings, **{k: v for k, v in changes.items() if v is not None})
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if min(settings.workers, settings.clients, settings.login_clients, settings.idle_sessions) < 1 or \
            settings.seconds <= 0 or settings.rate <= 0 or settings.clients % 2 or \
            settings.clients < 2 * settings.workers:
        parser.error("sizes must be positive; --clients even and at least 2 per worker")
    args.servers, args.scenarios = servers, scenarios
    return args, settings


def main(argv: list[str] | None = None) -> int:
    args, settings = parse_args(argv)
    raise_file_limit()
    workdir = Path(tempfile.mkdtemp(prefix="xmppd-bench-"))
    password = secrets.token_urlsafe(12)
    stamp = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "machine": machine()}
    servers, runs, results, failed = {}, {}, [], False
    try:
        for name in args.servers:
            try:
                ensure_installed(name)
                options = ({"modules": tuple(m for m in args.xmppd_modules.split(",") if m)}
                           if name == "xmppd" and args.xmppd_modules is not None else {})
                server = servers[name] = SERVERS[name](workdir, **options)
                server.setup([f"bench{n}" for n in range(settings.accounts())], password)
                runs[name] = Run(server, settings, password)
            except (ServerUnavailable, subprocess.CalledProcessError, RuntimeError) as error:
                print(f"bench: {name} cannot run: {error}", file=sys.stderr)
                failed = True
        # Repetitions alternate between the servers, so that a burst of other work on the machine
        # does not land on one server's only run.
        for scenario, repetition, name in itertools.product(args.scenarios, range(args.repeat), args.servers):
            if name not in runs or (SCENARIOS[scenario] is not None and name not in SCENARIOS[scenario]):
                continue
            try:
                result = push(settings) if scenario == "push" else getattr(runs[name], scenario)()
            except Exception as error:       # one scenario's failure must not hide the others' figures
                traceback.print_exc(file=sys.stderr)
                result = {"scenario": scenario, "error": f"{type(error).__name__}: {error}"}
                failed = True
            labelled = {"scenario": scenario, "server": name, "version": servers[name].version(),
                        "repetition": repetition + 1, **stamp}
            result = {**labelled, **{key: value for key, value in result.items() if key not in labelled}}
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        for server in servers.values():
            server.cleanup()
        if args.keep:
            print(f"bench: work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"{stamp['date']}  {stamp['machine']}")
    print(table(results, [name for name in args.servers if name in runs]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
