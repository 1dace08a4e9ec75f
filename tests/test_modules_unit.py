"""The optional modules (version, vcard, register) driven without sockets, on both storage backends.

Each test builds a real Server on a fresh store and talks to it through the router (as a bound client
would) or through Register.before_auth (as a connection that has not logged in would).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import platform

import pytest
from lxml import etree

from tests.fakes import FakeClock, FakeConnection
from tests.storage_fixtures import BACKENDS, make_storage
from xmppd import __version__
from xmppd.aio import settle
from xmppd.config import parse_config
from xmppd.register import RecentRegistrations, Register
from xmppd.sasl import derive_credentials
from xmppd.server import CORE_MODULES, SCOPE_SERVER, Server
from xmppd.stanza import NS_STANZAS
from xmppd.storage.models import RosterItem

DOMAIN = "localhost"
PASSWORD = "correct horse"
BASE_TOML = """
[c2s]
port = 0
direct_tls_port = 0
require_encryption = false
[auth]
scram_iterations = 4096
"""


# ---------------------------------------------------------------- harness
@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


def run(backend, tmp_path, test, toml: str = "", clock: FakeClock | None = None) -> None:
    """Run `await test(server)` against a Server with every module loaded, on a fresh store."""
    async def main() -> None:
        storage, cleanup = await make_storage(backend, tmp_path)
        try:
            config = parse_config(BASE_TOML + toml)
            server = Server(config, storage)
            server.modules["register"] = Register(server, clock=clock or FakeClock())
            server.load_modules(CORE_MODULES + ("version", "vcard"))
            await test(server)
        finally:
            await cleanup()

    asyncio.run(main())


def make_iq(type_: str, payload: str, *, to: str | None = None, from_: str | None = None,
            id_: str = "q1") -> etree._Element:
    attrs = f' type="{type_}"' + (f' id="{id_}"' if id_ else "")
    attrs += f' to="{to}"' if to else ""
    attrs += f' from="{from_}"' if from_ else ""
    # Declared as on a real stream, where every stanza inherits the stream's namespace declarations.
    stream = '<stream:stream xmlns:stream="http://etherx.jabber.org/streams" xmlns="jabber:client">'
    return etree.fromstring(f"{stream}<iq{attrs}>{payload}</iq></stream:stream>")[0]


async def send(server: Server, session, type_: str, payload: str, to: str | None = None) -> etree._Element:
    """Send an iq from a bound session; return the one reply it got."""
    session.connection.written.clear()
    await settle(server.router.from_client(session, make_iq(type_, payload, to=to, from_=session.full)))
    replies = session.connection.take()
    assert len(replies) == 1, replies
    return replies[0]


async def add_user(server: Server, username: str, password: str = PASSWORD) -> None:
    assert await server.storage.create_user(username, derive_credentials(password, 4096))


def bind(server: Server, username: str, resource: str = "phone"):
    return server.bind(FakeConnection(), username, resource)


def error_of(reply: etree._Element) -> tuple[str, str]:
    """(error type, defined condition) of an error reply."""
    assert reply.get("type") == "error", etree.tostring(reply)
    error = reply.find("{jabber:client}error")
    conditions = [etree.QName(c).localname for c in error if etree.QName(c).namespace == NS_STANZAS
                  and etree.QName(c).localname != "text"]
    return error.get("type"), conditions[0]


async def password_matches(server: Server, username: str, password: str) -> bool:
    """Check the stored SCRAM-SHA-256 keys against a password (RFC 5802 §3)."""
    stored = await server.storage.get_credentials(username, "SCRAM-SHA-256")
    if stored is None:
        return False
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), stored.salt, stored.iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return hashlib.sha256(client_key).digest() == stored.stored_key


# ---------------------------------------------------------------- XEP-0092 version
VERSION_QUERY = '<query xmlns="jabber:iq:version"/>'


def test_version_answers_name_and_version_without_os(backend, tmp_path):
    async def test(server):
        await add_user(server, "romeo")
        session = bind(server, "romeo")
        reply = await send(server, session, "get", VERSION_QUERY, to=DOMAIN)
        assert reply.get("type") == "result" and reply.get("from") == DOMAIN and reply.get("to") == session.full
        query = reply.find("{jabber:iq:version}query")
        assert query.findtext("{jabber:iq:version}name") == "xmppd"
        assert query.findtext("{jabber:iq:version}version") == __version__
        assert query.find("{jabber:iq:version}os") is None
        assert "jabber:iq:version" in server.features(SCOPE_SERVER)

    run(backend, tmp_path, test)


def test_version_shows_os_when_configured(backend, tmp_path):
    async def test(server):
        await add_user(server, "romeo")
        reply = await send(server, bind(server, "romeo"), "get", VERSION_QUERY, to=DOMAIN)
        os_text = reply.find("{jabber:iq:version}query").findtext("{jabber:iq:version}os")
        assert os_text == f"{platform.system()} {platform.release()}".strip()

    run(backend, tmp_path, test, "[version]\nshow_os = true\n")


def test_version_set_is_bad_request_and_accounts_do_not_answer(backend, tmp_path):
    async def test(server):
        await add_user(server, "romeo")
        session = bind(server, "romeo")
        assert error_of(await send(server, session, "set", VERSION_QUERY, to=DOMAIN)) == ("modify", "bad-request")
        # The server answers for itself only; an account's bare JID has no software version.
        reply = await send(server, session, "get", VERSION_QUERY, to=f"romeo@{DOMAIN}")
        assert error_of(reply) == ("cancel", "service-unavailable")

    run(backend, tmp_path, test)


# ---------------------------------------------------------------- XEP-0054 vcard-temp
VCARD = '<vCard xmlns="vcard-temp"><FN>Romeo Montague</FN><NICKNAME>romeo</NICKNAME></vCard>'


def test_vcard_own_empty_then_set_and_get(backend, tmp_path):
    async def test(server):
        await add_user(server, "romeo")
        session = bind(server, "romeo")
        reply = await send(server, session, "get", '<vCard xmlns="vcard-temp"/>')
        assert reply.get("type") == "result"
        empty = reply.find("{vcard-temp}vCard")
        assert empty is not None and len(empty) == 0

        reply = await send(server, session, "set", VCARD)
        assert reply.get("type") == "result" and len(reply) == 0
        stored = await server.storage.get_vcard("romeo")
        assert "Romeo Montague" in stored and "etherx" not in stored and "jabber:client" not in stored

        # A get to one's own bare JID is the same as one without 'to'.
        reply = await send(server, session, "get", '<vCard xmlns="vcard-temp"/>', to=f"romeo@{DOMAIN}")
        vcard = reply.find("{vcard-temp}vCard")
        assert vcard.findtext("{vcard-temp}FN") == "Romeo Montague"
        assert vcard.findtext("{vcard-temp}NICKNAME") == "romeo"
        assert "vcard-temp" in server.features(SCOPE_SERVER)

    run(backend, tmp_path, test)


def test_vcard_of_another_user(backend, tmp_path):
    async def test(server):
        await add_user(server, "romeo")
        await add_user(server, "juliet")
        romeo, juliet = bind(server, "romeo"), bind(server, "juliet")
        # No vCard yet: others get service-unavailable, as for an account that does not exist.
        reply = await send(server, juliet, "get", '<vCard xmlns="vcard-temp"/>', to=f"romeo@{DOMAIN}")
        assert error_of(reply) == ("cancel", "service-unavailable")
        reply = await send(server, juliet, "get", '<vCard xmlns="vcard-temp"/>', to=f"nobody@{DOMAIN}")
        assert error_of(reply) == ("cancel", "service-unavailable")

        await send(server, romeo, "set", VCARD)
        reply = await send(server, juliet, "get", '<vCard xmlns="vcard-temp"/>', to=f"romeo@{DOMAIN}")
        assert reply.get("type") == "result" and reply.get("from") == f"romeo@{DOMAIN}"
        assert reply.find("{vcard-temp}vCard").findtext("{vcard-temp}FN") == "Romeo Montague"

        # The owner need not be online.
        server.unbind(romeo)
        reply = await send(server, juliet, "get", '<vCard xmlns="vcard-temp"/>', to=f"romeo@{DOMAIN}")
        assert reply.find("{vcard-temp}vCard").findtext("{vcard-temp}FN") == "Romeo Montague"

        # Nobody may set another user's vCard; the answer is the one for an account that does not exist.
        reply = await send(server, juliet, "set", '<vCard xmlns="vcard-temp"><FN>Villain</FN></vCard>',
                           to=f"romeo@{DOMAIN}")
        assert error_of(reply) == ("cancel", "service-unavailable")
        assert "Romeo Montague" in await server.storage.get_vcard("romeo")

    run(backend, tmp_path, test)


def test_vcard_size_limit_and_clearing(backend, tmp_path):
    async def test(server):
        await add_user(server, "romeo")
        session = bind(server, "romeo")
        await send(server, session, "set", VCARD)
        too_big = f'<vCard xmlns="vcard-temp"><DESC>{"x" * (64 * 1024)}</DESC></vCard>'
        assert error_of(await send(server, session, "set", too_big)) == ("modify", "not-acceptable")
        assert "Romeo Montague" in await server.storage.get_vcard("romeo")

        just_fits = '<vCard xmlns="vcard-temp"><DESC></DESC></vCard>'
        padding = 64 * 1024 - len(just_fits)
        reply = await send(server, session, "set", just_fits.replace("<DESC>", "<DESC>" + "y" * padding))
        assert reply.get("type") == "result"
        assert len((await server.storage.get_vcard("romeo")).encode()) == 64 * 1024

        # XEP-0054 as servers implement it: an empty <vCard/> removes the stored one.
        assert (await send(server, session, "set", '<vCard xmlns="vcard-temp"/>')).get("type") == "result"
        assert await server.storage.get_vcard("romeo") is None

    run(backend, tmp_path, test)


# ---------------------------------------------------------------- XEP-0077 before authentication
REGISTER_GET = '<query xmlns="jabber:iq:register"/>'


def register_set(username: str | None = "romeo", password: str | None = PASSWORD) -> str:
    fields = ""
    if username is not None:
        fields += f"<username>{username}</username>"
    if password is not None:
        fields += f"<password>{password}</password>"
    return f'<query xmlns="jabber:iq:register">{fields}</query>'


async def pre_auth(server: Server, connection: FakeConnection, type_: str, payload: str, **attrs) -> etree._Element:
    """An iq from a connection that has not logged in; return the one reply written to it."""
    connection.written.clear()
    await server.modules["register"].before_auth(connection, make_iq(type_, payload, **attrs))
    replies = connection.take()
    assert len(replies) == 1, replies
    return replies[0]


def test_pre_auth_form(backend, tmp_path):
    async def test(server):
        # A 'from' the client made up must not come back as 'to': the client has no address yet.
        reply = await pre_auth(server, FakeConnection(), "get", REGISTER_GET, to=DOMAIN, from_="x@elsewhere")
        assert reply.get("type") == "result" and reply.get("id") == "q1"
        assert reply.get("to") is None and reply.get("from") == DOMAIN
        query = reply.find("{jabber:iq:register}query")
        assert query.findtext("{jabber:iq:register}instructions")
        assert query.find("{jabber:iq:register}username") is not None
        assert query.find("{jabber:iq:register}password") is not None
        assert query.find("{jabber:iq:register}registered") is None
        assert "jabber:iq:register" in server.features(SCOPE_SERVER)

    run(backend, tmp_path, test)


def test_pre_auth_registration_creates_the_account(backend, tmp_path, caplog):
    async def test(server):
        connection = FakeConnection("198.51.100.7")
        with caplog.at_level(logging.INFO, logger="xmppd.register"):
            reply = await pre_auth(server, connection, "set", register_set("Romeo"))
        assert reply.get("type") == "result" and reply.get("to") is None and len(reply) == 0
        assert await server.storage.user_exists("romeo")  # stored under the normalized localpart
        assert await password_matches(server, "romeo", PASSWORD)
        assert not await password_matches(server, "romeo", "something else")
        assert await server.storage.get_credentials("romeo", "SCRAM-SHA-1") is not None
        lines = [r.getMessage() for r in caplog.records if r.name == "xmppd.register"]
        assert len(lines) == 1
        assert "198.51.100.7:40000" in lines[0] and f"romeo@{DOMAIN}" in lines[0]
        assert PASSWORD not in caplog.text

    run(backend, tmp_path, test)


def test_pre_auth_conflict(backend, tmp_path):
    async def test(server):
        await add_user(server, "romeo", "the old password")
        reply = await pre_auth(server, FakeConnection(), "set", register_set("romeo"))
        assert error_of(reply) == ("cancel", "conflict")
        assert reply.get("to") is None
        assert await password_matches(server, "romeo", "the old password")

    run(backend, tmp_path, test)


@pytest.mark.parametrize("payload", [
    register_set(username=None),
    register_set(password=None),
    register_set(username=""),
    register_set(password=""),
    register_set(username="romeo@montague"),    # '@' is not allowed in a localpart
    register_set(username="romeo montague"),    # nor is a space
    register_set(password="short"),             # min_password_length is 8
    register_set(password="private\ue000use"),  # SASLprep prohibits private-use characters
], ids=["no-username", "no-password", "empty-username", "empty-password", "at-sign", "space",
        "short-password", "prohibited-character"])
def test_pre_auth_not_acceptable(backend, tmp_path, payload):
    async def test(server):
        connection = FakeConnection()
        assert error_of(await pre_auth(server, connection, "set", payload)) == ("modify", "not-acceptable")
        assert await server.storage.count_users() == 0
        # A refused attempt does not use up the address's registration.
        assert (await pre_auth(server, connection, "set", register_set())).get("type") == "result"

    run(backend, tmp_path, test)


def test_pre_auth_minimum_password_length_is_configurable(backend, tmp_path):
    async def test(server):
        connection = FakeConnection()
        assert error_of(await pre_auth(server, connection, "set", register_set(password="a" * 11)))[1] == \
            "not-acceptable"
        assert (await pre_auth(server, connection, "set", register_set(password="a" * 12))).get("type") == "result"

    run(backend, tmp_path, test, "[register]\nmin_password_length = 12\n")


def test_pre_auth_rate_limit_per_address(backend, tmp_path):
    clock = FakeClock()

    async def test(server):
        first = FakeConnection("203.0.113.5")
        assert (await pre_auth(server, first, "set", register_set("alice"))).get("type") == "result"
        # Another connection from the same address, 299 s later.
        clock.now += 299
        reply = await pre_auth(server, FakeConnection("203.0.113.5"), "set", register_set("bob"))
        assert error_of(reply) == ("wait", "resource-constraint")
        assert not await server.storage.user_exists("bob")
        # Another address is not affected.
        assert (await pre_auth(server, FakeConnection("203.0.113.6"), "set", register_set("carol"))
                ).get("type") == "result"
        # Once min_interval has passed, the first address may register again.
        clock.now += 1
        assert (await pre_auth(server, FakeConnection("203.0.113.5"), "set", register_set("bob"))
                ).get("type") == "result"

    run(backend, tmp_path, test, "[register]\nmin_interval = 300\n", clock)


def test_pre_auth_rate_limit_counts_ipv6_per_64(backend, tmp_path):
    async def test(server):
        assert (await pre_auth(server, FakeConnection("2001:db8:1:2::1"), "set", register_set("alice"))
                ).get("type") == "result"
        reply = await pre_auth(server, FakeConnection("2001:db8:1:2::ffff"), "set", register_set("bob"))
        assert error_of(reply) == ("wait", "resource-constraint")
        assert (await pre_auth(server, FakeConnection("2001:db8:1:3::1"), "set", register_set("bob"))
                ).get("type") == "result"

    run(backend, tmp_path, test)


def test_pre_auth_failed_registration_does_not_count(backend, tmp_path):
    async def test(server):
        await add_user(server, "romeo")
        connection = FakeConnection()
        assert error_of(await pre_auth(server, connection, "set", register_set("romeo")))[1] == "conflict"
        assert (await pre_auth(server, connection, "set", register_set("romeo2"))).get("type") == "result"
        assert error_of(await pre_auth(server, connection, "set", register_set("romeo3")))[1] == \
            "resource-constraint"

    run(backend, tmp_path, test)


def test_pre_auth_concurrent_attempts_from_one_address(backend, tmp_path):
    async def test(server):
        connection = FakeConnection()
        register = server.modules["register"]
        await asyncio.gather(*(register.before_auth(connection, make_iq("set", register_set(f"user{i}"), id_=f"r{i}"))
                               for i in range(3)))
        outcomes = sorted(r.get("type") if r.get("type") == "result" else error_of(r)[1]
                          for r in connection.stanzas())
        assert outcomes == ["resource-constraint", "resource-constraint", "result"]
        assert await server.storage.count_users() == 1

    run(backend, tmp_path, test)


def test_pre_auth_no_rate_limit_when_interval_is_zero(backend, tmp_path):
    async def test(server):
        connection = FakeConnection()
        for name in ("alice", "bob", "carol"):
            assert (await pre_auth(server, connection, "set", register_set(name))).get("type") == "result"
        assert len(server.modules["register"].recent) == 0

    run(backend, tmp_path, test, "[register]\nmin_interval = 0\n")


def test_recent_registrations_memory_is_bounded():
    clock = FakeClock()
    recent = RecentRegistrations(300, clock, max_entries=3)
    for i in range(5):
        assert recent.reserve(f"192.0.2.{i}")
        clock.now += 1
    assert len(recent) == 3
    # The oldest were evicted to make room, so they may register again; the newest may not.
    assert recent.reserve("192.0.2.0")
    assert not recent.reserve("192.0.2.4")
    clock.now += 300
    assert len(recent) == 0


def test_pre_auth_encryption_required(backend, tmp_path):
    async def test(server):
        plain = FakeConnection(require_encryption=True)
        for type_, payload in (("get", REGISTER_GET), ("set", register_set())):
            assert error_of(await pre_auth(server, plain, type_, payload)) == ("cancel", "not-allowed")
        assert not await server.storage.user_exists("romeo")
        encrypted = FakeConnection(tls=True, require_encryption=True)
        assert (await pre_auth(server, encrypted, "set", register_set())).get("type") == "result"

    run(backend, tmp_path, test)


def test_pre_auth_odd_requests(backend, tmp_path):
    async def test(server):
        connection = FakeConnection()
        remove = '<query xmlns="jabber:iq:register"><remove/></query>'
        assert error_of(await pre_auth(server, connection, "set", remove)) == ("auth", "registration-required")
        assert error_of(await pre_auth(server, connection, "get", REGISTER_GET, id_=None))[1] == "bad-request"
        # Results and errors are never answered.
        for type_ in ("result", "error"):
            await server.modules["register"].before_auth(connection, make_iq(type_, REGISTER_GET))
        assert connection.written == []

    run(backend, tmp_path, test)


# ---------------------------------------------------------------- XEP-0077 after authentication
def test_registered_account_get(backend, tmp_path):
    async def test(server):
        await add_user(server, "romeo")
        session = bind(server, "romeo")
        for to in (None, DOMAIN, f"romeo@{DOMAIN}"):
            reply = await send(server, session, "get", REGISTER_GET, to=to)
            query = reply.find("{jabber:iq:register}query")
            assert query.find("{jabber:iq:register}registered") is not None
            assert query.findtext("{jabber:iq:register}username") == "romeo"
            assert not query.findtext("{jabber:iq:register}password")

    run(backend, tmp_path, test)


def test_change_password(backend, tmp_path, caplog):
    async def test(server):
        await add_user(server, "romeo", "the old password")
        session, other = bind(server, "romeo", "phone"), bind(server, "romeo", "laptop")
        with caplog.at_level(logging.INFO, logger="xmppd.register"):
            reply = await send(server, session, "set", register_set("romeo", "the new password"), to=DOMAIN)
        assert reply.get("type") == "result" and reply.get("to") == session.full
        assert await password_matches(server, "romeo", "the new password")
        assert not await password_matches(server, "romeo", "the old password")
        # The other session logged in with the old password; it is ended, this one stays.
        assert other.connection.closed == ("reset", "the password was changed") and other.closed
        assert session.connection.closed is None and not session.closed
        assert "the new password" not in caplog.text and f"romeo@{DOMAIN}" in caplog.text

        # Without 'to' works as well.
        reply = await send(server, session, "set", register_set("romeo", "a third password"))
        assert reply.get("type") == "result"
        assert await password_matches(server, "romeo", "a third password")

    run(backend, tmp_path, test)


@pytest.mark.parametrize("payload, expected", [
    (register_set("romeo", ""), ("modify", "not-acceptable")),
    (register_set("romeo", "short"), ("modify", "not-acceptable")),
    (register_set("romeo", None), ("modify", "bad-request")),
    (register_set(None, "a long new password"), ("modify", "bad-request")),
    (register_set("juliet", "a long new password"), ("modify", "bad-request")),
    (register_set("ro@meo", "a long new password"), ("modify", "bad-request")),
], ids=["empty", "short", "no-password", "no-username", "other-user", "invalid-username"])
def test_change_password_refused(backend, tmp_path, payload, expected):
    async def test(server):
        await add_user(server, "romeo")
        await add_user(server, "juliet")
        session = bind(server, "romeo")
        assert error_of(await send(server, session, "set", payload)) == expected
        assert await password_matches(server, "romeo", PASSWORD)
        assert await password_matches(server, "juliet", PASSWORD)

    run(backend, tmp_path, test)


def test_another_accounts_registration_is_not_visible(backend, tmp_path):
    async def test(server):
        await add_user(server, "romeo")
        await add_user(server, "juliet")
        session = bind(server, "romeo")
        for type_, payload in (("get", REGISTER_GET), ("set", register_set("juliet", "a long new password")),
                               ("set", '<query xmlns="jabber:iq:register"><remove/></query>')):
            reply = await send(server, session, type_, payload, to=f"juliet@{DOMAIN}")
            assert error_of(reply) == ("cancel", "service-unavailable")
        assert await password_matches(server, "juliet", PASSWORD)

    run(backend, tmp_path, test)


def test_remove_account(backend, tmp_path, caplog):
    async def test(server):
        await add_user(server, "romeo")
        await add_user(server, "juliet")
        await add_user(server, "nurse")
        storage = server.storage
        # romeo and juliet are subscribed both ways; the nurse asked romeo for a subscription.
        await storage.set_roster_item("romeo", RosterItem(jid=f"juliet@{DOMAIN}", subscription="both"))
        await storage.set_roster_item("juliet", RosterItem(jid=f"romeo@{DOMAIN}", subscription="both"))
        await storage.set_roster_item("nurse", RosterItem(jid=f"romeo@{DOMAIN}", ask=True))
        await storage.add_pending_subscription(
            "romeo", f"nurse@{DOMAIN}", f"<presence xmlns='jabber:client' type='subscribe' from='nurse@{DOMAIN}'/>")
        await storage.set_vcard("romeo", VCARD)
        deleted = []
        server.on("account-deleted", deleted.append)
        session, other = bind(server, "romeo", "phone"), bind(server, "romeo", "laptop")

        with caplog.at_level(logging.INFO, logger="xmppd.register"):
            reply = await send(server, session, "set", '<query xmlns="jabber:iq:register"><remove/></query>')
        assert reply.get("type") == "result" and reply.get("to") == session.full
        assert not await storage.user_exists("romeo")
        assert await storage.get_vcard("romeo") is None
        assert deleted == ["romeo"]
        assert f"romeo@{DOMAIN}" in caplog.text
        # XEP-0077 §3.2: every session of the account ends with <not-authorized/>.
        for s in (session, other):
            assert s.closed and s.connection.closed[0] == "not-authorized"
        assert server.sessions_of(f"romeo@{DOMAIN}") == {}
        # The contacts learnt that the subscriptions are gone.
        juliet_item = await storage.get_roster_item("juliet", f"romeo@{DOMAIN}")
        assert juliet_item.subscription == "none"
        nurse_item = await storage.get_roster_item("nurse", f"romeo@{DOMAIN}")
        assert nurse_item.subscription == "none" and not nurse_item.ask

    run(backend, tmp_path, test)


def test_remove_must_be_alone(backend, tmp_path):
    async def test(server):
        await add_user(server, "romeo")
        session = bind(server, "romeo")
        payload = '<query xmlns="jabber:iq:register"><remove/><username>romeo</username></query>'
        assert error_of(await send(server, session, "set", payload)) == ("modify", "bad-request")
        assert await server.storage.user_exists("romeo") and not session.closed

    run(backend, tmp_path, test)
