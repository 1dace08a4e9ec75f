"""Bad input over real sockets: each gets the stream error RFC 6120 names, and the server keeps serving."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import Client, raw_connect, read_until, run

HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams'>")


def stream_error_of(data: bytes) -> str | None:
    from lxml import etree

    start = data.find(b"<stream:error>")
    if start < 0:
        return None
    end = data.find(b"</stream:error>", start)
    fragment = data[start:end + len(b"</stream:error>")].replace(
        b"<stream:error>", b"<stream:error xmlns:stream='http://etherx.jabber.org/streams'>", 1)
    error = etree.fromstring(fragment)
    for child in error:
        if child.tag.startswith("{urn:ietf:params:xml:ns:xmpp-streams}") and not child.tag.endswith("}text"):
            return child.tag.split("}")[1]
    return None


def exchange(xmppd, payload: bytes) -> bytes:
    with raw_connect(xmppd) as sock:
        sock.sendall(payload)
        return read_until(sock, b"</stream:stream>")


@pytest.mark.parametrize("payload, condition", [
    (HEADER + b"<message><body>x</message>", "not-well-formed"),
    (HEADER + b"<message><!-- hidden --></message>", "restricted-xml"),
    (HEADER + b"<?evil instruction?>", "restricted-xml"),
    (b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY boom 'aaaa'>]>" + HEADER[21:], "restricted-xml"),
    (HEADER + b"<message><body>&boom;</body></message>", "restricted-xml"),
    (HEADER.replace(b"to='localhost'", b"to='elsewhere.example'"), "host-unknown"),
    (HEADER.replace(b"xmlns:stream='http://etherx.jabber.org/streams'",
                    b"xmlns:stream='urn:wrong'"), "invalid-namespace"),
    (HEADER.replace(b"xmlns='jabber:client'", b"xmlns='jabber:server'"), "invalid-namespace"),
    (HEADER.replace(b"version='1.0'", b"version='0.9'"), "unsupported-version"),
    (HEADER + b"<message to='someone@localhost'><body>before login</body></message>", "not-authorized"),
], ids=["unclosed", "comment", "pi", "dtd", "entity", "host", "stream-ns", "content-ns", "version",
        "stanza-before-auth"])
def test_bad_streams_get_their_stream_error(xmppd, payload, condition):
    data = exchange(xmppd, payload)
    assert stream_error_of(data) == condition, data
    assert data.endswith(b"</stream:stream>")


def test_plaintext_auth_is_refused_before_tls(xmppd):
    with raw_connect(xmppd) as sock:
        sock.sendall(HEADER)
        features = read_until(sock, b"</stream:features>")
        assert b"<required/>" in features and b"mechanisms" not in features
        sock.sendall(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>")
        answer = read_until(sock, b"</failure>")
        assert b"<encryption-required/>" in answer


def test_endless_stanza_is_cut_off_while_others_chat(xmppd, account):
    """10 MB without closing a tag: <policy-violation/> after the limit; other clients are unaffected."""
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        a = await Client(xmppd, alice, pa).login()
        b = await Client(xmppd, bob, pb).login()
        a.send_presence()
        b.send_presence()
        loop = asyncio.get_running_loop()

        def flood() -> tuple[int, bytes]:
            sent = 0
            with raw_connect(xmppd) as sock:
                sock.sendall(HEADER + b"<message><body>")
                chunk = b"a" * 65536
                try:
                    while sent < 10 * 1024 * 1024:
                        sock.sendall(chunk)
                        sent += len(chunk)
                except OSError:
                    pass   # the server hung up on us: that is the point
                try:
                    return sent, read_until(sock, b"</stream:stream>", timeout=5)
                except OSError:
                    return sent, b""

        flooding = loop.run_in_executor(None, flood)
        for n in range(20):
            a.send_message(mto=bob, mbody=f"still here {n}", mtype="chat")
            message = await b.next_message()
            assert message["body"] == f"still here {n}"
        sent, answer = await flooding
        assert sent < 10 * 1024 * 1024 or b"policy-violation" in answer
        await a.close()
        await b.close()

    run(scenario())
    assert "stream error policy-violation" in xmppd.log()


def test_spoofed_from_ends_the_stream(xmppd, account):
    (alice, pa), (bob, _) = account("alice"), account("bob")

    async def scenario():
        a = await Client(xmppd, alice, pa).login()
        gone = asyncio.get_running_loop().create_future()
        a.add_event_handler("disconnected", lambda *_: gone.done() or gone.set_result(True))
        a.send_raw(f"<message from='{bob}/x' to='{alice}' type='chat'><body>forged</body></message>")
        await asyncio.wait_for(gone, 5)
        assert [e["condition"] for e in a.stream_errors] == ["invalid-from"]

    run(scenario())


def test_server_survives_garbage_and_half_open_sockets(xmppd, account):
    alice, pa = account("alice")
    sockets = []
    for garbage in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GET / HTTP/1.1\r\n\r\n", b"\xff\xfe\x00<",
                    HEADER[:30]):
        sock = raw_connect(xmppd)
        sock.sendall(garbage)
        sockets.append(sock)

    async def scenario():
        client = await Client(xmppd, alice, pa).login()
        await client.plugin["xep_0199"].ping(jid="localhost", timeout=5)
        await client.close()

    run(scenario())
    for sock in sockets:
        sock.close()
