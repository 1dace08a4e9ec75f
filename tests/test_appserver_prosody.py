"""The standalone push app server (`python -m xmppd.appserver`) as a XEP-0114 component of a real Prosody.

Issue #4: the app server "also runs on its own against any XMPP server (one code path)". Here it
runs against Debian's Prosody with mod_cloud_notify (prosody-modules), exactly as an operator would
set it up: Prosody has ``Component "push.localhost"`` with a secret, the app server connects to
Prosody's component port, and phones on Prosody register and enable push through Prosody.

One Prosody and one app server for the module, both subprocesses with their own temporary
directory: Prosody's data, pid file and log (debug level, in prosody.log), c2s on a free port of
127.0.0.1 without TLS, no s2s, no HTTP. The app server pushes to the fake APNs and FCM of
tests/push_fakes.py. `bash scripts/ensure-prosody.sh` installs Prosody; without it the module is
skipped.

Prosody's mod_cloud_notify pushes for a message stored offline (the phone is not connected), from
the host's JID (``localhost``), with ``message-count`` 1 and a dummy body. Each non-``wait`` error
answer is a strike; ``push_max_errors = 1`` below makes the first one disable the registration (the
module's default is 16), so the app server's ``item-not-found`` for a dead token turns push off for
that device at once, as it does on xmppd.

Run as root (a container, CI), Prosody refuses to start ("Danger, Will Robinson!") and prosodyctl
switches to the prosody user, unless the configuration says ``run_as_root = true``: it says so
only when the tests run as root.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from lxml import etree

from tests.harness import free_ports
from tests.lean_client import LeanClient, random_password
from tests.push_fakes import FakeAPNs, FakeFCM
from xmppd.appserver.component import p2_account_hash

PROSODY = shutil.which("prosody")
PROSODYCTL = shutil.which("prosodyctl")
# Where Debian's prosody-modules puts the community modules (older packages used their own folder).
MODULE_DIRS = ("/usr/lib/prosody/modules", "/usr/share/prosody-modules", "/usr/lib/prosody-modules",
               "/usr/local/lib/prosody/modules")


def _cloud_notify_dir() -> str | None:
    for directory in MODULE_DIRS:
        if (Path(directory) / "mod_cloud_notify" / "mod_cloud_notify.lua").is_file() or (
                Path(directory) / "mod_cloud_notify.lua").is_file():
            return directory
    return None


CLOUD_NOTIFY_DIR = _cloud_notify_dir()

pytestmark = [
    pytest.mark.skipif(PROSODY is None or PROSODYCTL is None,
                       reason="Prosody is not installed (bash scripts/ensure-prosody.sh installs it)"),
    pytest.mark.skipif(CLOUD_NOTIFY_DIR is None,
                       reason="mod_cloud_notify is missing: install Debian's prosody-modules "
                              "(bash scripts/ensure-prosody.sh)"),
]

HOST = "localhost"
PUSH = "push.localhost"
TOPIC = "org.example.xmppd"
PUSH_MODULE = "exampleProdiOS"
NS_DATA = "jabber:x:data"
NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
START_TIMEOUT = 15.0     # seconds for Prosody to listen and the app server to connect (a hang guard)
PUSH_TIMEOUT = 10.0      # seconds for a push to reach the fake provider (a hang guard)
ACCOUNTS = ("fcmphone", "apnsphone", "deadphone", "contact")


def lua_string(text: str) -> str:
    return json.dumps(str(text))   # a JSON string is a valid Lua string literal for these paths and secrets


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(none)"


def stop_process(process: subprocess.Popen | None) -> None:
    """SIGTERM the process (its own session), SIGKILL after 5 s."""
    if process is None or process.poll() is not None:
        return
    try:
        process.send_signal(signal.SIGTERM)
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@dataclass
class Stack:
    directory: Path
    c2s_port: int
    component_port: int
    passwords: dict[str, str]
    apns: FakeAPNs
    fcm: FakeFCM
    prosody: subprocess.Popen | None = None
    appserver: subprocess.Popen | None = None

    @property
    def prosody_log(self) -> Path:
        return self.directory / "prosody.log"

    @property
    def appserver_log(self) -> Path:
        return self.directory / "appserver.log"

    def prosody_log_text(self) -> str:
        try:
            return self.prosody_log.read_text(errors="replace")
        except OSError:
            return ""

    def diagnostics(self) -> str:
        return (f"\n--- prosody.log (tail)\n{tail(self.prosody_log)}\n--- prosody stdout/stderr\n"
                f"{tail(self.directory / 'prosody.out', 10)}\n--- appserver.log (tail)\n{tail(self.appserver_log)}")

    def client(self, name: str) -> LeanClient:
        # SCRAM-SHA-1: what Prosody 0.12 offers besides PLAIN.
        return LeanClient(f"{name}@{HOST}", self.passwords[name], port=self.c2s_port, mechanism="SCRAM-SHA-1")

    def wait_for_log(self, text: str, timeout: float, *, after: int = 0) -> None:
        """Block until Prosody's log holds text (past character `after`)."""
        deadline = time.monotonic() + timeout
        while text not in self.prosody_log_text()[after:]:
            for name, process in (("prosody", self.prosody), ("the app server", self.appserver)):
                if process is not None and process.poll() is not None:
                    raise AssertionError(f"{name} exited with {process.returncode}{self.diagnostics()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not in Prosody's log within {timeout} s: {text!r}{self.diagnostics()}")
            time.sleep(0.05)


def prosody_config(stack: Stack, secret: str) -> str:
    d = stack.directory
    root = "run_as_root = true  -- the tests run as root (a container): Prosody refuses root otherwise\n" \
        if os.geteuid() == 0 else ""
    return f"""-- written by tests/test_appserver_prosody.py
{root}pidfile = {lua_string(d / "prosody.pid")}
data_path = {lua_string(d / "data")}
certificates = {lua_string(d / "certs")}
log = {{ debug = {lua_string(d / "prosody.log")} }}
plugin_paths = {{ {lua_string(CLOUD_NOTIFY_DIR)} }}
modules_enabled = {{ "roster", "saslauth", "disco", "ping", "carbons", "smacks", "cloud_notify" }}
modules_disabled = {{ "s2s", "s2s_auth_certs" }}
c2s_ports = {{ {stack.c2s_port} }}
c2s_interfaces = {{ "127.0.0.1" }}
c2s_direct_tls_ports = {{ }}
legacy_ssl_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ {stack.component_port} }}
component_interfaces = {{ "127.0.0.1" }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"
push_max_errors = 1   -- mod_cloud_notify: the first error answer (not 'wait') disables the registration

VirtualHost "{HOST}"

Component "{PUSH}"
    component_secret = {lua_string(secret)}
"""


def appserver_config(stack: Stack, secret: str) -> str:
    d, apns, fcm = stack.directory, stack.apns, stack.fcm
    return f"""# written by tests/test_appserver_prosody.py
[appserver]
domain = "{PUSH}"
component_host = "127.0.0.1"
component_port = {stack.component_port}
component_secret = "{secret}"
default_apns_app = "ios"
default_fcm_app = "droid"
rate_limit = 100.0
rate_burst = 100

{apns.app_toml("ios", d / "apns.p8", push_modules=[PUSH_MODULE])}
{fcm.app_toml("droid", d / "fcm.json")}
[storage]
backend = "sqlite"
sqlite_path = "{d / 'appserver.sqlite3'}"

[logging]
level = "debug"
file = "{d / 'appserver.log'}"
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory, request):
    directory = tmp_path_factory.mktemp("prosody")
    (directory / "data").mkdir()
    (directory / "certs").mkdir()
    apns, fcm = FakeAPNs(topic=TOPIC), FakeFCM()
    apns.start()
    request.addfinalizer(apns.stop)
    fcm.start()
    request.addfinalizer(fcm.stop)
    stack = Stack(directory, *free_ports(2), {name: random_password() for name in ACCOUNTS}, apns, fcm)
    secret = secrets.token_urlsafe(16)
    config = directory / "prosody.cfg.lua"
    config.write_text(prosody_config(stack, secret))
    (directory / "appserver.toml").write_text(appserver_config(stack, secret))

    for name, password in stack.passwords.items():
        done = subprocess.run([PROSODYCTL, "--config", str(config), "register", name, HOST, password],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"prosodyctl register {name}: {done.stdout}{done.stderr}"

    with open(directory / "prosody.out", "wb") as out:
        stack.prosody = subprocess.Popen([PROSODY, "--config", str(config), "-F"], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=directory, start_new_session=True)
    request.addfinalizer(lambda: stop_process(stack.prosody))
    stack.wait_for_log(f"Activated service 'component' on [127.0.0.1]:{stack.component_port}", START_TIMEOUT)
    stack.wait_for_log(f"Activated service 'c2s' on [127.0.0.1]:{stack.c2s_port}", START_TIMEOUT)

    with open(directory / "appserver.out", "wb") as out:
        stack.appserver = subprocess.Popen(
            [sys.executable, "-m", "xmppd.appserver", "--config", str(directory / "appserver.toml")],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=directory,
            start_new_session=True)
    request.addfinalizer(lambda: stop_process(stack.appserver))
    stack.wait_for_log("External component successfully authenticated", START_TIMEOUT)
    return stack


def run(coroutine, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


def form(form_type: str, **fields: str) -> str:
    values = "".join(f"<field var='{var}'><value>{value}</value></field>" for var, value in fields.items())
    return (f"<x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE'><value>{form_type}</value></field>"
            f"{values}</x>")


async def register_p2(phone: LeanClient, kind: str, token: str, device: str) -> dict[str, str]:
    """Conversations' / Siskin's way: the register-push-fcm / -apns ad-hoc command, sent through Prosody."""
    device_field = "android-id" if kind == "fcm" else "device-id"
    answer = await phone.iq(
        f"<iq type='set' id='{{id}}' to='{PUSH}'><command xmlns='{NS_COMMANDS}' node='register-push-{kind}' "
        f"action='execute'><x xmlns='{NS_DATA}' type='submit'><field var='token'><value>{token}</value></field>"
        f"<field var='{device_field}'><value>{device}</value></field></x></command></iq>")
    assert answer.get("type") == "result", etree.tostring(answer)
    result = answer.find(f"{{{NS_COMMANDS}}}command/{{{NS_DATA}}}x")
    return {field.get("var"): field.findtext(f"{{{NS_DATA}}}value") for field in result}


async def enable_push(phone: LeanClient, jid: str, node: str, **options: str) -> None:
    """XEP-0357 <enable/> on Prosody (mod_cloud_notify keeps it for the account)."""
    publish_options = form("http://jabber.org/protocol/pubsub#publish-options", **options) if options else ""
    answer = await phone.iq(f"<iq type='set' id='{{id}}'><enable xmlns='urn:xmpp:push:0' jid='{jid}' "
                            f"node='{node}'>{publish_options}</enable></iq>")
    assert answer.get("type") == "result", etree.tostring(answer)


async def message_while_offline(stack: Stack, phone: str, body: str) -> None:
    """The contact writes to the phone's bare JID; the phone has no session, so Prosody stores it
    offline, and mod_cloud_notify publishes to the phone's app server."""
    contact = stack.client("contact")
    await contact.login()
    contact.send_message(f"{phone}@{HOST}", body)
    await contact.ping()     # Prosody has routed the message (and sent the publish) before this returns
    await contact.close()


async def provider_requests(fake, count: int, stack: Stack) -> list:
    try:
        return await fake.requests_arrived(count, timeout=PUSH_TIMEOUT)
    except TimeoutError as error:
        raise AssertionError(f"{error}{stack.diagnostics()}") from None


def test_component_answers_disco_through_prosody(stack):
    async def scenario():
        phone = stack.client("fcmphone")
        await phone.login()
        info = await phone.iq(f"<iq type='get' id='{{id}}' to='{PUSH}'><query xmlns='{NS_DISCO_INFO}'/></iq>")
        assert info.get("type") == "result" and info.get("from") == PUSH, etree.tostring(info)
        identity = info.find(f"{{{NS_DISCO_INFO}}}query/{{{NS_DISCO_INFO}}}identity")
        assert (identity.get("category"), identity.get("type")) == ("pubsub", "push")
        await phone.close()

    run(scenario())


def test_p2_registration_fcm_push_for_an_offline_message(stack):
    fcm = stack.fcm
    token, device = f"fcm-{secrets.token_hex(8)}", secrets.token_hex(8)

    async def scenario():
        phone = stack.client("fcmphone")
        await phone.login()
        registration = await register_p2(phone, "fcm", token, device)
        assert registration["jid"] == PUSH and registration["node"] and registration["secret"]
        await enable_push(phone, registration["jid"], registration["node"], secret=registration["secret"])
        await phone.close()                      # the phone sleeps: no session at all
        fcm.clear()

        await message_while_offline(stack, "fcmphone", "hello from Prosody")
        [push] = await provider_requests(fcm, 1, stack)
        assert push.token == token
        assert push.data["kind"] == "message"
        assert push.data["account"] == p2_account_hash(f"fcmphone@{HOST}", device)
        assert push.data["message-count"] == "1"  # what mod_cloud_notify always says
        assert push.message["android"]["priority"] == "high"
        assert fcm.violations == []

    run(scenario())


def test_monal_style_apns_alert_push(stack):
    apns = stack.apns
    token = secrets.token_hex(32)

    async def scenario():
        phone = stack.client("apnsphone")
        await phone.login()
        await enable_push(phone, PUSH, token, pushModule=PUSH_MODULE)    # no registration: node = token
        await phone.close()
        apns.clear()

        await message_while_offline(stack, "apnsphone", "are you there?")
        [push] = await provider_requests(apns, 1, stack)
        assert (push.token, push.push_type, push.topic) == (token, "alert", TOPIC)
        assert push.headers["apns-priority"] == "10"
        assert push.payload["kind"] == "message" and push.payload["aps"]["mutable-content"] == 1
        assert apns.violations == []

    run(scenario())


def test_dead_apns_token_disables_push_on_prosody(stack):
    """APNs says 410 Unregistered → the app server answers item-not-found → Prosody drops the registration:
    the next message causes no publish and no push at all."""
    apns = stack.apns
    token = secrets.token_hex(32)
    apns.respond(410, "Unregistered", token=token)

    async def scenario():
        phone = stack.client("deadphone")
        await phone.login()
        await enable_push(phone, PUSH, token, pushModule=PUSH_MODULE)
        await phone.close()
        apns.clear()
        log_start = len(stack.prosody_log_text())

        await message_while_offline(stack, "deadphone", "first")
        [push] = await provider_requests(apns, 1, stack)
        assert push.token == token and push.status == 410
        identifier = f"{PUSH}<{token}"
        await asyncio.to_thread(stack.wait_for_log, f"Disabling push notifications for identifier '{identifier}'",
                                PUSH_TIMEOUT, after=log_start)
        assert "<cancel:item-not-found:" in stack.prosody_log_text()[log_start:]

        sent_before = stack.prosody_log_text().count(f"to {PUSH} ({token})")
        await message_while_offline(stack, "deadphone", "second")
        await asyncio.sleep(0.5)                 # a publish would reach the fake within milliseconds
        assert [r.token for r in apns.requests] == [token]
        assert stack.prosody_log_text().count(f"to {PUSH} ({token})") == sent_before   # not even published

    run(scenario())
