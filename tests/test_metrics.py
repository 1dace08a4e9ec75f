"""The metrics and health endpoint ([metrics] port) of a real xmppd, read over HTTP like Prometheus."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest

from tests.conftest import start_xmppd
from tests.harness import free_ports, run
from tests.lean_client import LeanClient, random_password
from tests.storage_fixtures import BACKENDS


@pytest.fixture(scope="module", params=BACKENDS)
def served(request, tmp_path_factory, certificate):
    port = free_ports(1)[0]
    server = start_xmppd(request, tmp_path_factory, certificate, request.param,
                         f"require_encryption = false\n\n[metrics]\nport = {port}\n")
    return server, port


def fetch(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sample(text: str, name: str) -> float:
    """The value of one sample line, e.g. 'xmppd_sessions{state="live"}'."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics:\n{text}")


def test_metrics_count_connections_sessions_stanzas_and_offline_messages(served):
    xmppd, port = served
    users = []
    for name in ("alice", "bob"):
        password = random_password()
        users.append((xmppd.add_user(f"{name}-{password[:6].lower()}", password), password))
    (alice_jid, alice_password), (bob_jid, _) = users

    async def scenario():
        alice = LeanClient(alice_jid, alice_password, port=xmppd.port)
        await alice.login(sm=True)
        for n in range(3):
            alice.send_message(bob_jid, f"for later {n}")     # bob is offline: stored
        await alice.wait_all_acked()
        text = await asyncio.to_thread(lambda: fetch(port, "/metrics")[1])
        await alice.close()
        return text

    text = run(scenario())
    assert sample(text, "xmppd_connections") >= 1
    assert sample(text, 'xmppd_sessions{state="live"}') >= 1
    assert sample(text, 'xmppd_sessions{state="hibernated"}') >= 0
    assert sample(text, 'xmppd_stanzas_total{direction="in",kind="message"}') >= 3
    assert sample(text, 'xmppd_stanzas_total{direction="out",kind="presence"}') >= 1   # the presence echo
    assert sample(text, "xmppd_journal_commits_total") >= 1
    assert sample(text, "xmppd_journal_pending") == 0
    # Storage latency by operation: the logins read credentials, the journal wrote the messages.
    assert sample(text, 'xmppd_storage_operation_seconds_count{operation="get_credentials"}') >= 1
    assert sample(text, 'xmppd_storage_operation_seconds_count{operation="write_message_queue"}') >= 1
    assert sample(text, 'xmppd_storage_operation_seconds_bucket{le="+Inf",operation="get_credentials"}') == \
        sample(text, 'xmppd_storage_operation_seconds_count{operation="get_credentials"}')
    assert sample(text, 'xmppd_push_publishes_total{result="accepted"}') >= 0
    # What only storage knows is read every few seconds: the three messages show up without a scrape waiting.
    assert "xmppd_offline_messages" in text


def test_health_says_ok_while_storage_and_listeners_are_up(served):
    _, port = served
    assert fetch(port, "/health") == (200, "ok\n")
    assert fetch(port, "/nothing")[0] == 404
