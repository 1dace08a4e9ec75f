"""The benchmark command (python -m bench, issue #7) runs from the checkout and says what it measured.

No figure is checked against a speed: the machine running the tests is not a benchmark machine.
What is checked is that every scenario ran against a real xmppd, that its JSON line is well formed,
and that messages were actually received (a generator that counted what it sent would pass a speed
check and measure nothing). The load generator's byte counting is tested without sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import table
from bench.loadgen import Connection, split
from bench.scenarios import SCENARIOS

REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)
def test_quick_run_against_xmppd_reports_every_scenario():
    environment = {**os.environ, "PYTHONPATH": f"{REPOSITORY}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--servers", "xmppd"], cwd=REPOSITORY,
                          env=environment, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    results = {result["scenario"]: result for result in map(json.loads, lines)}
    assert sorted(results) == sorted(SCENARIOS) and len(lines) == len(SCENARIOS), done.stdout
    for result in results.values():
        assert result["server"] == "xmppd" and "error" not in result, result
        assert result["date"] and result["machine"] and result["version"].startswith("xmppd")

    login = results["login"]
    assert login["logins"] == login["clients"] > 0 and login["logins_per_s"] > 0
    throughput = results["throughput"]
    assert 0 < throughput["received"] <= throughput["sent"]
    assert throughput["latency_ms"]["p99"] is not None and throughput["server_cpu_us_per_message"] > 0
    fixed = results["fixed_rate"]
    assert fixed["received"] == fixed["sent"] == int(fixed["target_rate"] * fixed["seconds"])
    for name in ("login", "throughput", "fixed_rate", "resume"):
        shares = results[name]["cpu_share"]
        assert shares["server"] > 0 and shares["generator"] > 0, (name, shares)
    assert results["idle_memory"]["rss_live_kib"] > results["idle_memory"]["rss_start_kib"] > 0
    assert results["hibernated_memory"]["rss_hibernated_kib"] > 0
    assert results["resume"]["round_trip_ms"]["p50"] is not None
    assert results["push"]["pushes_ok"] > 0 and results["push"]["messages_missing"] == 0
    assert "xmppd" in done.stdout.split("\n\n")[-1] and "logins/s" in done.stdout   # the table


def test_connection_counts_messages_split_across_reads_and_answers_ack_requests():
    async def scenario():
        connection = Connection()
        written = []
        connection.write = written.append
        seen = []
        connection.on_message = lambda sender, sent_ns, now_ns: seen.append((sender, sent_ns))
        connection.streaming = True
        stream = (b"<message from='a@localhost/r' type='chat'><body>3 123456</body></message>"
                  b"<presence/><message><body xml:lang='en'>7 99</body></message>"
                  b"<message><body>not a benchmark body</body></message>")
        for cut in range(0, len(stream), 7):          # the stream arrives in 7-byte pieces
            connection.data_received(stream[cut:cut + 7])
        assert (connection.messages, seen) == (3, [(3, 123456), (7, 99)])
        connection.sm_requests = True
        connection.data_received(b"<r xmlns='urn:xmpp:sm:3'/>")
        assert written == [b"<a xmlns='urn:xmpp:sm:3' h='3'/>"]

    asyncio.run(scenario())


def test_split_keeps_conversation_pairs_in_one_worker():
    parts = split(list(range(10)), 3)
    assert [len(part) for part in parts] == [2, 4, 4] and sum(parts, []) == list(range(10))
    assert all(len(part) % 2 == 0 for part in split(list(range(200)), 4))


def test_table_shows_the_median_of_repetitions_and_xmppds_ratio():
    results = [{"scenario": "throughput", "server": server, "received_per_s": rate,
                "cpu_share": {"server": 0.5, "generator": 0.25}}
               for server, rate in (("xmppd", 300.0), ("ejabberd", 100.0), ("xmppd", 100.0), ("ejabberd", 50.0),
                                    ("xmppd", 200.0), ("ejabberd", 400.0))]
    results.append({"scenario": "login", "server": "ejabberd", "error": "RuntimeError: boom"})
    lines = table(results, ["xmppd", "ejabberd"]).splitlines()[1:]

    def row(scenario: str, label: str) -> str:
        return next(line for line in lines if line.startswith(scenario + " ") and label in line)

    assert row("throughput", "messages received/s").split()[-3:] == ["200.0", "100.0", "2.00"]
    assert "0.5 / 0.25" in row("throughput", "CPU share server / generator")
    assert row("login", "logins/s").split()[-1] == "error"
