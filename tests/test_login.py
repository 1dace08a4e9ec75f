"""Logging in over real TCP+TLS with slixmpp: every SASL mechanism, both TLS modes, failures, conflicts."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import AuthFailed, Client, Disconnected, run


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
@pytest.mark.parametrize("direct_tls", [False, True], ids=["starttls", "direct-tls"])
def test_every_mechanism_logs_in(xmppd, account, mechanism, direct_tls):
    jid, password = account()

    async def scenario():
        client = await Client(xmppd, jid, password, mechanism=mechanism, direct_tls=direct_tls).login()
        assert client.boundjid.bare == jid
        assert client.boundjid.resource  # the server chose one
        await client.close()

    run(scenario())
    assert f"authenticated as {jid} ({mechanism})" in xmppd.log()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
def test_wrong_password_and_unknown_user_fail_alike(xmppd, account, mechanism):
    jid, password = account()

    async def attempt(who: str, secret: str):
        with pytest.raises(AuthFailed):
            await Client(xmppd, who, secret, mechanism=mechanism).login()

    run(attempt(jid, password + "x"))
    run(attempt("nobody-here@localhost", password))
    async def succeed():
        await (await Client(xmppd, jid, password).login()).close()

    run(succeed())   # a success clears 127.0.0.1's failure record, so later tests are not slowed
    log = xmppd.log()
    user = jid.split("@")[0]
    assert f"authentication failed for '{user}' ({mechanism}): not-authorized" in log
    assert f"authentication failed for 'nobody-here' ({mechanism}): not-authorized" in log
    assert password not in log


def test_repeated_failures_are_slowed_down_for_known_and_unknown_accounts(request, tmp_path_factory, certificate):
    """On a server of its own: the per-address record would slow down the other tests' logins."""
    from tests.conftest import start_xmppd

    xmppd = start_xmppd(request, tmp_path_factory, certificate, "sqlite")
    jid, password = xmppd.add_user("victim", "the-password"), "the-password"
    victim = "victim"

    async def fail(who: str):
        with pytest.raises(AuthFailed):
            await Client(xmppd, who, "not-the-password", mechanism="PLAIN").login(timeout=30)

    async def succeed():
        # A success clears the address's record, so the rest of the module's tests are not slowed.
        await (await Client(xmppd, jid, password).login(timeout=30)).close()

    async def scenario():
        for _ in range(4):
            await fail(jid)
        await succeed()
        for _ in range(4):
            await fail("no-such-account@localhost")
        await succeed()

    run(scenario())
    log = xmppd.log()
    assert f"login attempt for '{victim}' held 1.0 s after repeated failures" in log
    assert "login attempt for 'no-such-account' held 1.0 s after repeated failures" in log


def test_requested_resource_and_conflict(xmppd, account):
    jid, password = account()

    async def scenario():
        first = await Client(xmppd, f"{jid}/phone", password).login()
        assert str(first.boundjid) == f"{jid}/phone"
        gone = asyncio.get_running_loop().create_future()
        first.add_event_handler("disconnected", lambda *_: gone.done() or gone.set_result(True))
        second = await Client(xmppd, f"{jid}/phone", password).login()
        assert str(second.boundjid) == f"{jid}/phone"
        await asyncio.wait_for(gone, 5)
        assert [e["condition"] for e in first.stream_errors] == ["conflict"]
        # The new session is the one that gets the stanzas now.
        reply = await second.plugin["xep_0199"].ping(jid=None, timeout=5)
        await second.close()
        return reply

    run(scenario())
    assert "replaced by a new connection" in xmppd.log()


def test_server_chosen_resources_differ(xmppd, account):
    jid, password = account()

    async def scenario():
        a = await Client(xmppd, jid, password).login()
        b = await Client(xmppd, jid, password).login()
        assert a.boundjid.resource != b.boundjid.resource
        await a.close()
        await b.close()

    run(scenario())


def _scram_plus_over_direct_tls(xmppd, username: str, password: str, binding_data=None) -> bytes:
    """SCRAM-SHA-256-PLUS with tls-server-end-point, by hand: slixmpp has no channel binding."""
    import base64
    import hashlib
    import socket
    import ssl

    from scramp import ScramClient

    from tests.harness import read_until

    context = ssl.create_default_context(cafile=xmppd.cert)
    with context.wrap_socket(socket.create_connection(("127.0.0.1", xmppd.tls_port), timeout=10),
                             server_hostname="localhost") as sock:
        sock.sendall(b"<stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
                     b"xmlns:stream='http://etherx.jabber.org/streams'>")
        features = read_until(sock, b"</stream:features>")
        assert b"<mechanism>SCRAM-SHA-256-PLUS</mechanism>" in features
        assert b'<channel-binding type="tls-server-end-point"/>' in features
        if binding_data is None:
            binding_data = hashlib.sha256(sock.getpeercert(binary_form=True)).digest()
        client = ScramClient(["SCRAM-SHA-256-PLUS"], username, password,
                             channel_binding=("tls-server-end-point", binding_data))
        first = base64.b64encode(client.get_client_first().encode()).decode()
        sock.sendall(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256-PLUS'>"
                     f"{first}</auth>".encode())
        challenge = read_until(sock, b"</challenge>")
        server_first = challenge.split(b">", 1)[1].split(b"<", 1)[0]
        client.set_server_first(base64.b64decode(server_first).decode())
        final = base64.b64encode(client.get_client_final().encode()).decode()
        sock.sendall(f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{final}</response>".encode())
        answer = b""
        while b"</success>" not in answer and b"</failure>" not in answer:
            answer += read_until(sock, b">")
        if b"<success" in answer:
            server_final = answer.split(b">", 1)[1].split(b"<", 1)[0]
            client.set_server_final(base64.b64decode(server_final).decode())  # checks the server's proof
        return answer


def test_scram_plus_with_channel_binding(xmppd, account):
    jid, password = account()
    username = jid.split("@")[0]
    assert b"<success" in _scram_plus_over_direct_tls(xmppd, username, password)
    # The same exchange bound to another certificate (a man in the middle) fails.
    refused = _scram_plus_over_direct_tls(xmppd, username, password, binding_data=b"\x00" * 32)
    assert b"<not-authorized/>" in refused
    assert f"authenticated as {jid} (SCRAM-SHA-256-PLUS)" in xmppd.log()


def test_plaintext_only_when_the_operator_allows_it(request, tmp_path_factory, certificate):
    """require_encryption = false: STARTTLS is optional, SCRAM works in clear text, PLAIN never does."""
    from tests.conftest import start_xmppd

    server = start_xmppd(request, tmp_path_factory, certificate, "sqlite", "require_encryption = false\n")
    jid = server.add_user("clear", "clear-password")

    async def scenario():
        client = await Client(server, jid, "clear-password", mechanism="SCRAM-SHA-256", plaintext=True).login()
        await client.close()
        # The client would send PLAIN in clear text, but the server does not offer it without TLS.
        with pytest.raises(AuthFailed):
            await Client(server, jid, "clear-password", mechanism="PLAIN", plaintext=True).login(timeout=10)

    run(scenario())
    assert f"authenticated as {jid} (SCRAM-SHA-256)" in server.log()
