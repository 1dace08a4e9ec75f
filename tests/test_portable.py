"""XEP-0227 import/export (xmppd/portable.py, `xmppctl import/export`), on SQLite and PostgreSQL.

- A round trip: accounts on one xmppd are exported, imported into an empty xmppd, and are the same there
  (exporting them again gives the same bytes); the user logs in with the old password and gets the offline
  messages in order with their original stamps, and the pending subscription request.
- A file written by a real Prosody: accounts made with prosodyctl (a private config in a temporary
  directory), a roster and a vCard written by Prosody's own storage library, then prosody-migrator's
  xep0227 driver. Prosody exports SCRAM-SHA-1 keys only: SCRAM-SHA-1 and PLAIN logins work afterwards,
  SCRAM-SHA-256 cannot. Prosody 0.12's xep0227 driver writes no offline messages.
- And back: `xmppctl export --one-file-per-account`, prosody-migrator into Prosody's own storage, and a
  real Prosody (started on that data) lets the user log in and gives the roster and vCard.
- ejabberd's piefxis layout (a main file that XIncludes the host file) from a HAND-WRITTEN fixture,
  tests/data/ejabberd-piefxis/, written after the output of ejabberd_piefxis.erl (export_user,
  format_scram_password, get_offline, get_roster): romeo has ejabberd's SCRAM-SHA-1 keys (its default
  password format), juliet a plaintext password (the "plain" format), so both forms are covered.
- Bad input: not well-formed, DTDs and entities, the wrong root, includes that leave the directory, other
  domains, unknown elements, broken keys; accounts that exist already.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.conftest import start_xmppd
from tests.harness import AuthFailed, Client, drain_messages, free_ports, listening, run
from tests.lean_client import LeanClient
from tests.test_appserver_prosody import stop_process
from tests.storage_fixtures import run as run_on_fixture_loop
from tests.test_xmppctl import xmppctl
from xmppd.portable import Notes, PortableError, Summary, import_accounts, read_files
from xmppd.storage import open_storage
from xmppd.storage.models import RosterItem

EJABBERD_FIXTURE = Path(__file__).parent / "data" / "ejabberd-piefxis" / "20260105-101500.xml"
PROSODY = shutil.which("prosody")
PROSODYCTL = shutil.which("prosodyctl")
PROSODY_MIGRATOR = shutil.which("prosody-migrator")
LUA = shutil.which("lua5.4")
PROSODY_LIB = Path("/usr/lib/prosody")


@pytest.fixture
def empty_xmppd(xmppd, request, tmp_path_factory, certificate):
    """A second server on the same backend, with no accounts: where the import goes."""
    return start_xmppd(request, tmp_path_factory, certificate, xmppd.backend)


async def with_storage(server, work):
    storage = await open_storage(server.backend, **server.storage_kwargs)
    try:
        return await work(storage)
    finally:
        await storage.close()


def on_storage(server, work):
    return asyncio.run(with_storage(server, work))


async def snapshot(storage, usernames):
    """Everything the import should carry, per account."""
    state = {}
    for username in usernames:
        state[username] = (
            (await storage.get_roster(username))[1],
            await storage.list_pending_subscriptions(username),
            await storage.get_vcard(username),
            [(xml, received_at) for _, xml, received_at in await storage.list_queued(username)],
        )
    return state


def stamp_of(message) -> datetime:
    stamp = message.xml.find("{urn:xmpp:delay}delay").get("stamp")
    return datetime.fromisoformat(stamp).astimezone(timezone.utc)


# ---------------------------------------------------------------------------------------------- round trip

def test_round_trip_into_an_empty_server(xmppd, empty_xmppd, tmp_path):
    tag = secrets.token_hex(3)
    alice, bob, bystander = f"rt-alice-{tag}", f"rt-bob-{tag}", f"rt-other-{tag}"
    passwords = {alice: secrets.token_urlsafe(12), bob: secrets.token_urlsafe(12)}
    for name, password in passwords.items():
        xmppd.add_user(name, password)
    xmppd.add_user(bystander, "not exported")

    async def seed(storage):
        await storage.set_roster_item(alice, RosterItem(f"{bob}@localhost", "Bob", "both", groups=["Friends", "Work"]))
        await storage.set_roster_item(alice, RosterItem("carol@remote.example", None, "none", ask=True))
        await storage.set_roster_item(alice, RosterItem("dave@remote.example", "Dave", "to", approved=True))
        # Serialised as xmppd itself stores them (presence.py, vcard.py: lxml's quoting).
        await storage.add_pending_subscription(
            alice, "eve@remote.example", '<presence xmlns="jabber:client" from="eve@remote.example" '
            f'to="{alice}@localhost" type="subscribe"><status>It is Eve</status></presence>')
        await storage.set_vcard(alice, '<vCard xmlns="vcard-temp"><FN>Alice</FN><NICKNAME>al</NICKNAME></vCard>')
        await storage.set_roster_item(bob, RosterItem(f"{alice}@localhost", "Alice", "both"))

    on_storage(xmppd, seed)

    async def bob_writes_to_offline_alice():
        client = await Client(xmppd, f"{bob}@localhost", passwords[bob]).login()
        for n in range(3):
            client.send_message(mto=f"{alice}@localhost", mbody=f"offline {n}", mtype="chat")
            await asyncio.sleep(0.01)   # distinct stamps
        await client.plugin["xep_0199"].ping(jid="localhost", timeout=5)
        await client.close()
        for _ in range(100):   # the journal commits in the background
            if await with_storage(xmppd, lambda storage: storage.count_offline(alice)) == 3:
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the offline messages were not stored")

    run(bob_writes_to_offline_alice())
    before = on_storage(xmppd, lambda storage: snapshot(storage, [alice, bob]))

    exported = tmp_path / "export.xml"
    done = xmppctl(xmppd.config_path, "export", str(exported), "--user", alice, "--user", f"{bob}@localhost")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"exported 2 accounts, 4 roster items, 1 pending subscription requests, "
                                   f"1 vCards, 3 offline messages to {exported}")
    assert oct(exported.stat().st_mode & 0o777) == "0o600"   # it holds password keys
    assert bystander not in exported.read_text()

    done = xmppctl(empty_xmppd.config_path, "import", str(exported))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("imported 2 accounts, 4 roster items, 1 pending subscription requests, "
                                   "1 vCards, 3 offline messages")
    assert done.stderr == ""
    assert on_storage(empty_xmppd, lambda storage: storage.list_users()) == sorted([alice, bob])
    assert on_storage(empty_xmppd, lambda storage: snapshot(storage, [alice, bob])) == before

    # The same accounts give the same file: credentials, items, stamps and all.
    again = tmp_path / "again.xml"
    assert xmppctl(empty_xmppd.config_path, "export", str(again)).returncode == 0
    assert again.read_bytes() == exported.read_bytes()

    async def alice_logs_in():
        client = await listening(Client(empty_xmppd, f"{alice}@localhost", passwords[alice])).login()
        client.send_presence()
        received = await drain_messages(client, seconds=1.5)
        assert [m["body"] for m in received] == ["offline 0", "offline 1", "offline 2"]
        assert [stamp_of(m) for m in received] == [received_at for _, received_at in before[alice][3]]
        request = await client.next_presence(types=("subscribe",))
        assert request["from"] == "eve@remote.example" and request["status"] == "It is Eve"
        await client.close()

    run(alice_logs_in())


def test_existing_accounts_are_refused_skipped_or_replaced(xmppd, tmp_path):
    name = f"exists-{secrets.token_hex(3)}"
    xmppd.add_user(name, "old password")
    exported = tmp_path / "one.xml"
    assert xmppctl(xmppd.config_path, "export", str(exported), "--user", name).returncode == 0
    on_storage(xmppd, lambda storage: storage.set_vcard(name, "<vCard xmlns='vcard-temp'><FN>New</FN></vCard>"))

    refused = xmppctl(xmppd.config_path, "import", str(exported))
    assert refused.returncode == 1
    assert f"1 account(s) exist already: {name}@localhost; nothing was imported" in refused.stderr
    skipped = xmppctl(xmppd.config_path, "import", "--existing=skip", str(exported))
    assert skipped.returncode == 0 and "1 existing accounts left alone" in skipped.stdout
    assert on_storage(xmppd, lambda storage: storage.get_vcard(name)) is not None
    replaced = xmppctl(xmppd.config_path, "import", "--existing=replace", str(exported))
    assert replaced.returncode == 0 and replaced.stdout.startswith("imported 1 accounts")
    assert on_storage(xmppd, lambda storage: storage.get_vcard(name)) is None   # the file's state: no vCard

    missing = xmppctl(xmppd.config_path, "export", "-", "--user", "nobody-here")
    assert missing.returncode == 1 and "no such account: nobody-here@localhost" in missing.stderr


def test_export_to_standard_output_keeps_the_summary_out_of_the_xml(xmppd):
    name = f"stdout-{secrets.token_hex(3)}"
    xmppd.add_user(name, "a password")
    done = xmppctl(xmppd.config_path, "export", "-", "--user", name)
    assert done.returncode == 0
    assert done.stdout.startswith("<?xml") and done.stdout.rstrip().endswith("</server-data>")
    assert "exported 1 accounts" in done.stderr


# ---------------------------------------------------------------------------------------------- Prosody

def lua_string(text) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


PROSODY_SEED = """
package.path = "{lib}/?.lua;" .. package.path
package.cpath = "{lib}/?.so;" .. package.cpath
local datamanager = require "util.datamanager"
local st = require "util.stanza"
datamanager.set_data_path({data})
assert(datamanager.store("alice", "localhost", "roster", {{
  [false] = {{ version = 3, pending = {{ ["dave@remote.example"] = true }} }},
  ["bob@localhost"] = {{ subscription = "both", name = "Bob", groups = {{ Friends = true, Work = true }} }},
  ["carol@remote.example"] = {{ subscription = "none", ask = "subscribe", groups = {{}} }},
}}))
local vcard = st.stanza("vCard", {{ xmlns = "vcard-temp" }}):text_tag("FN", "Alice from Prosody")
assert(datamanager.store("alice", "localhost", "vcard", st.preserialize(vcard)))
"""


def prosody_config(directory: Path, data: Path) -> str:
    """Prosody's global settings for a private instance in `directory` (as root it must be told it may run)."""
    root = "run_as_root = true\n" if os.geteuid() == 0 else ""
    return (f'{root}data_path = {lua_string(data)}\npidfile = {lua_string(directory / "prosody.pid")}\n'
            f'log = {{ info = {lua_string(directory / "prosody.log")} }}\n'
            'authentication = "internal_hashed"\nstorage = "internal"\n')


def wait_for_port(port: int, process: subprocess.Popen, directory: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"prosody exited with {process.returncode}: "
                                 f"{(directory / 'prosody.out').read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"prosody did not listen within {timeout} s")


def prosody_export(directory: Path, passwords: dict[str, str]) -> list[Path]:
    """Accounts by prosodyctl, roster and vCard by Prosody's storage library, XEP-0227 by prosody-migrator."""
    data, out = directory / "data", directory / "out"
    data.mkdir()
    out.mkdir()
    config = directory / "prosody.cfg.lua"
    config.write_text(prosody_config(directory, data) + 'VirtualHost "localhost"\n')
    for name, password in passwords.items():
        done = subprocess.run([PROSODYCTL, "--config", str(config), "register", name, "localhost", password],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    seed = directory / "seed.lua"
    seed.write_text(PROSODY_SEED.format(lib=PROSODY_LIB, data=lua_string(data)))
    done = subprocess.run([LUA, str(seed)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # Accounts first: the xep0227 driver adds a roster or vCard only to a user file that exists.
    (directory / "migrator.cfg.lua").write_text(
        f'input {{ type = "internal"; path = {lua_string(data)}; '
        'hosts = { ["localhost"] = { "accounts", "roster", "vcard" } } }\n'
        'output { type = "xep0227" }\n')
    run_prosody_migrator(directory, out, "input", "output")
    return sorted(out.glob("*@localhost.xml"))


@pytest.mark.skipif(not (PROSODYCTL and PROSODY_MIGRATOR and LUA and PROSODY_LIB.is_dir()),
                    reason="Prosody is not installed (bash scripts/ensure-prosody.sh installs it)")
def test_import_of_a_real_prosody_export(empty_xmppd, tmp_path):
    passwords = {"alice": "pässword of alice", "bob": secrets.token_urlsafe(10)}
    files = prosody_export(tmp_path, passwords)
    assert [f.name for f in files] == ["alice@localhost.xml", "bob@localhost.xml"]
    assert "urn:xmpp:pie:0#scram" in files[0].read_text()

    done = xmppctl(empty_xmppd.config_path, "import", *map(str, files))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("imported 2 accounts, 2 roster items, 1 pending subscription requests, "
                                   "1 vCards, 0 offline messages")
    assert "only SCRAM-SHA-1 credentials" in done.stderr

    roster, pending, vcard, _ = on_storage(empty_xmppd, lambda storage: snapshot(storage, ["alice"]))["alice"]
    assert roster == [RosterItem("bob@localhost", "Bob", "both", groups=["Friends", "Work"]),
                      RosterItem("carol@remote.example", None, "none", ask=True)]
    assert [sender for sender, _ in pending] == ["dave@remote.example"]
    assert "Alice from Prosody" in vcard

    async def logins():
        for mechanism in ("SCRAM-SHA-1", "PLAIN"):
            client = await Client(empty_xmppd, "alice@localhost", passwords["alice"], mechanism=mechanism).login()
            await client.close()
        with pytest.raises(AuthFailed):   # no SCRAM-SHA-256 keys: they cannot be made from SHA-1 ones
            await Client(empty_xmppd, "bob@localhost", passwords["bob"], mechanism="SCRAM-SHA-256").login()
        client = await Client(empty_xmppd, "bob@localhost", passwords["bob"], mechanism="SCRAM-SHA-1").login()
        await client.close()
        with pytest.raises(AuthFailed):
            await Client(empty_xmppd, "bob@localhost", "wrong", mechanism="PLAIN").login()

    run(logins())


def run_prosody_migrator(directory: Path, data_path: Path, input_store: str, output_store: str) -> None:
    """prosody-migrator with Prosody's data_path pointed at a temporary directory: the xep0227 driver reads
    and writes user@host.xml files there, and the migrator takes data_path from the global configuration,
    which it does not load (the default is the system's /var/lib/prosody, never touched here). As root,
    --root keeps the migrator from switching to the prosody user, who may not read the temporary directory."""
    set_data_path = (f'package.path = "{PROSODY_LIB}/?.lua;" .. package.path; '
                     f'package.cpath = "{PROSODY_LIB}/?.so;" .. package.cpath; '
                     f'require "core.configmanager".set("*", "data_path", {lua_string(data_path)})')
    done = subprocess.run([LUA, "-e", set_data_path, PROSODY_MIGRATOR, "--root", "--config",
                           str(directory / "migrator.cfg.lua"), input_store, output_store],
                          capture_output=True, text=True, timeout=120, cwd=directory)
    assert done.returncode == 0 and "Done!" in done.stderr, done.stdout + done.stderr


@pytest.mark.skipif(not (PROSODY and PROSODYCTL and PROSODY_MIGRATOR and LUA and PROSODY_LIB.is_dir()),
                    reason="Prosody is not installed (bash scripts/ensure-prosody.sh installs it)")
def test_export_back_to_prosody(xmppd, tmp_path):
    """xmppctl export --one-file-per-account, then prosody-migrator from xep0227 into Prosody's own storage."""
    tag = secrets.token_hex(3)
    alice, bob = f"back-alice-{tag}", f"back-bob-{tag}"
    xmppd.add_user(alice, "alice's password")
    xmppd.add_user(bob, "bob's password")

    async def seed(storage):
        await storage.set_roster_item(alice, RosterItem(f"{bob}@localhost", "Bob", "both", groups=["Friends"]))
        await storage.add_pending_subscription(
            alice, "eve@remote.example", '<presence xmlns="jabber:client" from="eve@remote.example" '
            f'to="{alice}@localhost" type="subscribe"/>')
        await storage.set_vcard(alice, '<vCard xmlns="vcard-temp"><FN>Alice Back</FN></vCard>')
        return await storage.get_credentials(alice, "SCRAM-SHA-1")

    sha1 = on_storage(xmppd, seed)
    export = tmp_path / "export"
    done = xmppctl(xmppd.config_path, "export", "--one-file-per-account", str(export), "--user", alice,
                   "--user", bob)
    assert done.returncode == 0, done.stderr
    assert sorted(f.name for f in export.iterdir()) == [f"{alice}@localhost.xml", f"{bob}@localhost.xml"]

    prosody_data = tmp_path / "prosody-data"
    prosody_data.mkdir()
    (tmp_path / "migrator.cfg.lua").write_text(
        'input { type = "xep0227"; hosts = { ["localhost"] = { "accounts", "roster", "vcard" } } }\n'
        f'output {{ type = "internal"; path = {lua_string(prosody_data)} }}\n')
    run_prosody_migrator(tmp_path, export, "input", "output")

    host = prosody_data / "localhost"
    account = (host / "accounts" / f"{alice.replace('-', '%2d')}.dat").read_text()
    assert f'"{sha1.stored_key.hex()}"' in account and f'"{sha1.server_key.hex()}"' in account
    assert '["eve@remote.example"] = true' in (host / "roster" / f"{alice.replace('-', '%2d')}.dat").read_text()

    # Prosody itself, on that data: alice logs in with her password and finds her roster and vCard.
    port = free_ports(1)[0]
    config = tmp_path / "prosody.cfg.lua"
    config.write_text(prosody_config(tmp_path, prosody_data) +
                      f'modules_enabled = {{ "roster", "saslauth", "disco", "vcard" }}\n'
                      f'c2s_ports = {{ {port} }}\nc2s_interfaces = {{ "127.0.0.1" }}\n'
                      'c2s_direct_tls_ports = { }\nlegacy_ssl_ports = { }\ns2s_ports = { }\n'
                      'modules_disabled = { "s2s", "s2s_auth_certs" }\nc2s_require_encryption = false\n'
                      'VirtualHost "localhost"\n')
    with open(tmp_path / "prosody.out", "wb") as out:
        prosody = subprocess.Popen([PROSODY, "--config", str(config), "-F"], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=tmp_path, start_new_session=True)
    try:
        wait_for_port(port, prosody, tmp_path)

        async def alice_on_prosody():
            client = await LeanClient(f"{alice}@localhost", "alice's password", port=port,
                                      mechanism="SCRAM-SHA-1").login(presence=False)
            roster = await client.iq("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")
            items = roster.findall("{jabber:iq:roster}query/{jabber:iq:roster}item")
            assert [(i.get("jid"), i.get("name"), i.get("subscription"), i.findtext("{jabber:iq:roster}group"))
                    for i in items] == [(f"{bob}@localhost", "Bob", "both", "Friends")]
            vcard = await client.iq("<iq type='get' id='{id}'><vCard xmlns='vcard-temp'/></iq>")
            assert vcard.findtext("{vcard-temp}vCard/{vcard-temp}FN") == "Alice Back"
            await client.close()

        run(alice_on_prosody())
    finally:
        stop_process(prosody)


# ---------------------------------------------------------------------------------------------- ejabberd

def test_import_of_ejabberds_piefxis_layout(empty_xmppd):
    done = xmppctl(empty_xmppd.config_path, "import", str(EJABBERD_FIXTURE))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("imported 2 accounts, 4 roster items, 1 pending subscription requests, "
                                   "2 vCards, 2 offline messages")
    assert "<query xmlns='jabber:iq:private'> skipped: xmppd does not import it (romeo@localhost)" in done.stderr
    assert "<query xmlns='jabber:iq:privacy'> skipped" in done.stderr

    romeo = on_storage(empty_xmppd, lambda storage: snapshot(storage, ["romeo"]))["romeo"]
    assert romeo[0] == [RosterItem("benvolio@localhost", None, "from"),
                        RosterItem("juliet@localhost", "Juliet", "both", groups=["Capulets", "Verona"]),
                        RosterItem("rosaline@capulet.example", None, "none", ask=True)]
    assert [sender for sender, _ in romeo[1]] == ["tybalt@capulet.example"]

    async def logins():
        juliet = await Client(empty_xmppd, "juliet@localhost", "O Romeo, Romeo!").login()   # plaintext: both hashes
        await juliet.close()
        romeo_client = await listening(Client(empty_xmppd, "romeo@localhost", "wherefore art thou",
                                              mechanism="SCRAM-SHA-1")).login()
        romeo_client.send_presence()
        received = await drain_messages(romeo_client, seconds=1.5)
        assert [m["body"] for m in received] == ["Wherefore art thou?", "Deny thy father."]
        assert [stamp_of(m) for m in received] == [datetime(2026, 1, 5, 9, 0, 0, 250000, timezone.utc),
                                                   datetime(2026, 1, 5, 9, 1, 30, 500000, timezone.utc)]
        assert all(len(m.xml.findall("{urn:xmpp:delay}delay")) == 1 for m in received)   # not stamped twice
        request = await romeo_client.next_presence(types=("subscribe",))
        assert request["from"] == "tybalt@capulet.example" and request["status"] == "Thou art a villain"
        await romeo_client.close()

    run(logins())


# ---------------------------------------------------------------------------------------------- bad input

def pie(users: str, host: str = "localhost") -> str:
    return f"<server-data xmlns='urn:xmpp:pie:0'><host jid='{host}'>{users}</host></server-data>"


SCRAM_SHA1 = ("<scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'><iter-count>4096"
              "</iter-count><salt>ZWphYmJlcmQtZml4dHVyZS1zYWx0</salt><server-key>AN0o04Z8qyOVLjUIZHIE3ihSlw8="
              "</server-key><stored-key>k+3VHRyvj+yxSGXXQL409DRNIws=</stored-key></scram-credentials>")


def read(tmp_path: Path, text: str, name: str = "import.xml") -> tuple[list, list[str]]:
    path = tmp_path / name
    path.write_text(text)
    notes = Notes()
    accounts = read_files([str(path)], "localhost", 4096, notes)
    return accounts, notes.lines()


BILLION_LAUGHS = ("<?xml version='1.0'?>\n<!DOCTYPE server-data [<!ENTITY a 'aaaaaaaaaa'>"
                  "<!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>]>\n" + pie("<user name='&b;'/>"))


@pytest.mark.parametrize("text, error", [
    (pie("<user name='x'>"), "is not well-formed XML"),
    ("", "is not well-formed XML"),
    (BILLION_LAUGHS, "a DTD is not allowed"),
    ("<!-- a comment first -->" + BILLION_LAUGHS.split("\n", 1)[1], "a DTD is not allowed"),
    (pie("<user name='&ext;'/>"), "is not well-formed XML"),     # an undeclared entity
    ("<users xmlns='urn:xmpp:pie:0'/>", "the root element is <users xmlns='urn:xmpp:pie:0'>"),
    ("<server-data xmlns='urn:xmpp:pie:0'><user name='a'/></server-data>", "<user/> outside a <host/>"),
    (pie("<user name='bad user'/>"), "<user name='bad user'> is not a valid username"),
    (pie("<xi:include xmlns:xi='http://www.w3.org/2001/XInclude' href='../../etc/passwd'/>"),
     "leaves the directory of the imported file"),
    (pie("<xi:include xmlns:xi='http://www.w3.org/2001/XInclude' href='/etc/passwd'/>"),
     "must be a relative file name"),
    (pie("<xi:include xmlns:xi='http://www.w3.org/2001/XInclude' href='http://example.com/x.xml'/>"),
     "must be a relative file name"),
    (pie("<xi:include xmlns:xi='http://www.w3.org/2001/XInclude' href='missing.xml'/>"), "cannot read"),
], ids=["unclosed", "empty", "dtd", "dtd-after-comment", "undeclared-entity", "wrong-root", "user-outside-host",
        "bad-username", "include-parent", "include-absolute", "include-url", "include-missing"])
def test_broken_files_are_refused_with_a_reason(tmp_path, text, error):
    with pytest.raises(PortableError, match=None) as refused:
        read(tmp_path, text)
    assert error in str(refused.value)


def test_problems_within_accounts_are_skipped_with_a_warning(tmp_path):
    accounts, notes = read(tmp_path, pie(
        f"<user name='Good'>{SCRAM_SHA1}<unknown xmlns='urn:example:x'/>"
        "<query xmlns='jabber:iq:roster'><item jid='a b@c@d' subscription='both'/>"
        "<item jid='ok@remote.example' subscription='sideways'/><item jid='good@localhost' subscription='both'/>"
        "<item jid='fine@remote.example' subscription='to'/></query>"
        "<offline-messages><message xmlns='jabber:client' type='chat'><body>no from</body></message>"
        "<iq xmlns='jabber:client' type='get' id='1'/></offline-messages></user>"
        "<user name='keys'><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'>"
        "<iter-count>many</iter-count><salt>!!</salt></scram-credentials>"
        "<scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-512'/></user>"
        "<user name='good'/>"))
    assert [a.username for a in accounts] == ["good", "keys"]
    good, keys = accounts
    assert [item.jid for item in good.data["roster items"]] == ["fine@remote.example"]   # not itself
    assert good.data["offline messages"] is None
    assert keys.data["accounts"] == {}
    text = "\n".join(notes)
    for expected in ("<unknown xmlns='urn:example:x'> skipped: xmppd does not import it (good@localhost)",
                     "roster item with an invalid JID skipped",
                     "roster item with subscription='sideways' skipped",
                     "offline message without a 'from' skipped",
                     "<iq xmlns='jabber:client'> in <offline-messages/> skipped",
                     "SCRAM-SHA-1 credentials are not base64 keys and a number; skipped (keys@localhost)",
                     "SCRAM-SHA-512 credentials skipped",
                     "no usable password or SCRAM credentials",
                     "account appears again at"):
        assert expected in text, text


def test_accounts_of_other_domains_are_reported_and_left_out(tmp_path):
    text = ("<server-data xmlns='urn:xmpp:pie:0'><host jid='other.example'><user name='x'/><user name='y'/>"
            "</host><host jid='LocalHost'><user name='here' password='pw'/></host>"
            "<stray xmlns='urn:example:x'/></server-data>")
    accounts, notes = read(tmp_path, text)
    assert [a.username for a in accounts] == ["here"]
    assert "accounts of other.example skipped: this server is localhost (x@other.example, y@other.example)" in notes
    assert "<stray xmlns='urn:example:x'> outside a <user/> skipped (import.xml)" in notes


def test_includes_are_followed_like_ejabberd_writes_them(tmp_path):
    (tmp_path / "hosts").mkdir()
    (tmp_path / "hosts" / "localhost.xml").write_text(
        "<host xmlns='urn:xmpp:pie:0' jid='localhost'><user name='included' password='pw'/></host>")
    accounts, _ = read(tmp_path, "<server-data xmlns='urn:xmpp:pie:0' xmlns:xi='http://www.w3.org/2001/XInclude'>"
                                 "<xi:include href='hosts/localhost.xml'/></server-data>")
    assert [a.username for a in accounts] == ["included"]


def test_the_old_namespace_of_xep_0227_is_read(tmp_path):
    accounts, _ = read(tmp_path, "<server-data xmlns='http://www.xmpp.org/extensions/xep-0227.html#ns'>"
                                 "<host jid='localhost'><user name='old' password='s3crEt'><offline-messages>"
                                 "<message xmlns='jabber:client' from='a@b' to='x@y' type='chat'><body>hi</body>"
                                 "</message></offline-messages></user></host></server-data>")
    [old] = accounts
    assert set(old.data["accounts"]) == {"SCRAM-SHA-1", "SCRAM-SHA-256"}
    [(xml, _)] = old.data["offline messages"]
    assert "to=\"old@localhost\"" in xml   # addressed to the account it is stored for


def test_a_storage_failure_leaves_no_half_account(storage, tmp_path):
    """An account whose data cannot be written is removed again, so that the import can be re-run."""
    accounts, _ = read(tmp_path, pie("<user name='first' password='pw'/><user name='broken' password='pw'>"
                                     "<vCard xmlns='vcard-temp'><FN>x</FN></vCard></user>"))
    original = storage.set_vcard

    async def failing_set_vcard(username, xml):
        if username == "broken":
            from xmppd.storage import StorageError
            raise StorageError("disk full")
        return await original(username, xml)

    storage.set_vcard = failing_set_vcard
    summary = Summary()
    from xmppd.storage import StorageError
    with pytest.raises(StorageError, match="disk full"):
        run_on_fixture_loop(import_accounts(storage, accounts, "localhost", "refuse", summary))
    assert run_on_fixture_loop(storage.list_users()) == ["first"]
    assert summary.counts["accounts"] == 1


def test_offline_message_addresses_and_stamps(tmp_path):
    accounts, notes = read(tmp_path, pie(
        "<user name='juliet' password='pw'><offline-messages>"
        "<message xmlns='jabber:client' from='romeo@montague.example/orchard' to='juliet@localhost/balcony'>"
        "<body>full JID kept</body><delay xmlns='urn:xmpp:delay' from='localhost' stamp='1469-07-21T00:32:29'/>"
        "</message>"
        "<message xmlns='jabber:client' from='romeo@montague.example' to='someone@else.example'>"
        "<body>readdressed</body><delay xmlns='urn:xmpp:delay' from='montague.example' "
        "stamp='2026-01-05T10:00:00+01:00'/></message>"
        "<message xmlns='jabber:client' from='romeo@montague.example'><body>no stamp</body></message>"
        "</offline-messages></user>"))
    [(kept, naive), (readdressed, remote), (unstamped, now)] = accounts[0].data["offline messages"]
    assert 'to="juliet@localhost/balcony"' in kept and "urn:xmpp:delay" not in kept   # the store's stamp: ours now
    assert naive == datetime(1469, 7, 21, 0, 32, 29, tzinfo=timezone.utc)              # no zone: UTC
    assert 'to="juliet@localhost"' in readdressed and 'from="montague.example"' in readdressed   # others' stamp stays
    assert remote == datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
    assert abs((now - datetime.now(timezone.utc)).total_seconds()) < 60
    assert any("offline message without a delay stamp: stamped with the import time (juliet@localhost)" == line
               for line in notes)


def test_xmppctl_import_explains_what_it_refuses(xmppd, tmp_path):
    missing = xmppctl(xmppd.config_path, "import", str(tmp_path / "missing.xml"))
    assert missing.returncode == 1 and "nothing imported: cannot read" in missing.stderr
    dtd = tmp_path / "dtd.xml"
    dtd.write_text(BILLION_LAUGHS)
    refused = xmppctl(xmppd.config_path, "import", str(dtd))
    assert refused.returncode == 1
    assert f"xmppctl: nothing imported: {dtd}: a DTD is not allowed in an import file" in refused.stderr
    foreign = tmp_path / "foreign.xml"
    foreign.write_text(pie("<user name='someone' password='pw'/>", host="elsewhere.example"))
    other = xmppctl(xmppd.config_path, "import", str(foreign))
    assert other.returncode == 1
    assert ("warning: accounts of elsewhere.example skipped: this server is localhost (someone@elsewhere.example)"
            in other.stderr)
    assert f"nothing imported: no accounts of localhost in {foreign}" in other.stderr
