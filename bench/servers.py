"""The servers under test: xmppd from this checkout, and Debian's Prosody and ejabberd, each a private
instance in its own directory on its own port of 127.0.0.1, with the rate limits off.

Every server offers plain c2s on loopback (no TLS) with SCRAM-SHA-1 and PLAIN (xmppd through
[auth] allow_unencrypted_plain, Prosody through allow_unencrypted_plain_auth). All accounts of a run share one password and
one SCRAM salt (xmppd: written straight into its storage; Prosody: one account file copied;
ejabberd: one registered account's credentials imported for all with XEP-0227), so the load
generator derives the SCRAM keys once and a login costs it only a few hashes.

What is changed from each server's defaults, and why, is in docs/performance.md. Debian's own
services stay off: scripts/ensure-prosody.sh and scripts/ensure-ejabberd.sh install the packages
without starting them.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from bench.push_latency import cpu_seconds
from tests.harness import XmppdProcess, free_ports
from xmppd.certs import generate_self_signed

DOMAIN = "localhost"
START_TIMEOUT = 60.0
REPOSITORY = Path(__file__).resolve().parent.parent


class ServerUnavailable(Exception):
    """The server cannot run here (not installed, wrong user); the message says how to fix it."""


def wait_listening(port: int, timeout: float, alive) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the server exited before it listened on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def rss_kib(pid: int) -> int:
    """Resident set size of a process from /proc (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def run_checked(command: list[str], what: str, timeout: float = 120.0, **kwargs) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def lua_string(text: object) -> str:
    return json.dumps(str(text))   # a JSON string is a valid Lua string literal for paths


class Server:
    """One server under test. `setup` writes its configuration and creates the accounts (once);
    `start`/`stop` run it (the scenarios restart it before each one); `pid` is the process whose CPU
    and memory count."""

    name = ""
    domain = DOMAIN

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True)
        self.port = free_ports(1)[0]

    def setup(self, usernames: list[str], password: str) -> None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        raise NotImplementedError

    def cpu_seconds(self) -> float:
        return cpu_seconds(f"/proc/{self.pid}/stat")

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def version(self) -> str:
        raise NotImplementedError

    def cleanup(self) -> None:
        self.stop()


class Xmppd(Server):
    """xmppd from this checkout on SQLite, production log level, default modules unless `modules` names
    the [modules] enabled list (to compare like with like: Debian's Prosody and ejabberd archive nothing)."""

    name = "xmppd"

    def __init__(self, workdir: Path, modules: tuple[str, ...] | None = None) -> None:
        super().__init__(workdir)
        self.process: XmppdProcess | None = None
        self.modules = modules

    def setup(self, usernames: list[str], password: str) -> None:
        cert, key = str(self.workdir / "localhost.crt"), str(self.workdir / "localhost.key")
        generate_self_signed(DOMAIN, cert, key, extra_names=("127.0.0.1",))
        self.process = XmppdProcess(self.workdir, "sqlite", cert, key, """require_encryption = false
max_bytes_per_second = 0
max_unauthenticated_per_address = 100000

[auth]
allow_unencrypted_plain = true
""" + ("" if self.modules is None else f"\n[modules]\nenabled = {json.dumps(list(self.modules))}\n"))
        self.port = self.process.port
        # The harness logs at debug for tests; the benchmark runs at the production default.
        config = self.process.config_path
        config.write_text(config.read_text().replace('level = "debug"', 'level = "info"'))
        self.process.add_users(usernames, password)

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    @property
    def pid(self) -> int:
        return self.process.process.pid

    def version(self) -> str:
        head = subprocess.run(["git", "-C", str(REPOSITORY), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True)
        modules = "" if self.modules is None else f" (modules: {', '.join(self.modules) or 'none'})"
        return f"xmppd {head.stdout.strip() or 'checkout'}{modules}"

    def cleanup(self) -> None:
        if self.process is not None:
            self.process.cleanup()


class Prosody(Server):
    """Debian's Prosody 0.12 with Debian's module list, minus mod_limits (10 kB/s per connection)
    and what needs TLS, s2s or daemonizing; internal_hashed accounts, file storage."""

    name = "prosody"
    MODULES = ("disco", "roster", "saslauth", "blocklist", "bookmarks", "carbons", "pep", "private",
               "smacks", "vcard4", "vcard_legacy", "csi_simple", "invites", "invites_adhoc",
               "invites_register", "ping", "register", "time", "uptime", "version", "admin_adhoc")

    def __init__(self, workdir: Path) -> None:
        if shutil.which("prosody") is None:
            raise ServerUnavailable("Prosody is not installed: bash scripts/ensure-prosody.sh")
        super().__init__(workdir)
        self.config = self.workdir / "prosody.cfg.lua"
        self.process: subprocess.Popen | None = None

    def setup(self, usernames: list[str], password: str) -> None:
        d = self.workdir
        (d / "data").mkdir()
        (d / "certs").mkdir()
        root = "run_as_root = true -- a container runs everything as root\n" if os.geteuid() == 0 else ""
        modules = "; ".join(f'"{name}"' for name in self.MODULES)
        self.config.write_text(f"""-- written by bench/servers.py
{root}pidfile = {lua_string(d / "prosody.pid")}
data_path = {lua_string(d / "data")}
certificates = {lua_string(d / "certs")}
log = {{ info = {lua_string(d / "prosody.log")} }}
modules_enabled = {{ {modules} }}
modules_disabled = {{ "s2s" }}
c2s_ports = {{ {self.port} }}
c2s_interfaces = {{ "127.0.0.1" }}
c2s_direct_tls_ports = {{ }}
legacy_ssl_ports = {{ }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
storage = "internal"
network_settings = {{ tcp_backlog = 1024 }}

VirtualHost "{DOMAIN}"
""")
        probe = "benchprobe"
        run_checked(["prosodyctl", "--config", str(self.config), "register", probe, DOMAIN, password],
                    "prosodyctl register")
        accounts = d / "data" / DOMAIN / "accounts"
        template = (accounts / f"{probe}.dat").read_bytes()
        for username in usernames:
            (accounts / f"{username}.dat").write_bytes(template)

    def start(self) -> None:
        with open(self.workdir / "prosody.out", "ab") as out:
            self.process = subprocess.Popen(["prosody", "--config", str(self.config), "-F"], stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=self.workdir, start_new_session=True)
        wait_listening(self.port, START_TIMEOUT, lambda: self.process.poll() is None)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def pid(self) -> int:
        return self.process.pid

    def version(self) -> str:
        return "Prosody " + package_version("prosody")


class Ejabberd(Server):
    """Debian's ejabberd 23.01 with Debian's module list, minus mod_fail2ban (it bans 127.0.0.1
    after failed logins) and mod_mqtt; c2s shaper none (Debian: 3,000 B/s), listen backlog 1024,
    Mnesia. Run by ejabberdctl, which (as root) runs it as the unprivileged ejabberd user."""

    name = "ejabberd"
    MODULES = """  mod_adhoc: {}
  mod_admin_extra: {}
  mod_announce:
    access: announce
  mod_avatar: {}
  mod_blocking: {}
  mod_caps: {}
  mod_carboncopy: {}
  mod_client_state: {}
  mod_configure: {}
  mod_disco: {}
  mod_last: {}
  mod_muc:
    access:
      - allow
    access_admin:
      - allow: admin
    access_create: muc_create
    access_persistent: muc_create
  mod_muc_admin: {}
  mod_offline:
    access_max_user_messages: max_user_offline_messages
  mod_ping: {}
  mod_pres_counter:
    count: 5
    interval: 60
  mod_privacy: {}
  mod_private: {}
  mod_pubsub:
    access_createnode: pubsub_createnode
    plugins:
      - flat
      - pep
  mod_push: {}
  mod_push_keepalive: {}
  mod_roster:
    versioning: true
  mod_shared_roster: {}
  mod_sic: {}
  mod_stream_mgmt:
    resend_on_timeout: if_offline
  mod_vcard:
    search: false
  mod_vcard_xupdate: {}
  mod_version: {}
"""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("ejabberdctl") is None:
            raise ServerUnavailable("ejabberd is not installed: bash scripts/ensure-ejabberd.sh")
        user = pwd.getpwuid(os.geteuid()).pw_name
        if user not in ("root", "ejabberd"):
            raise ServerUnavailable("Debian's ejabberdctl runs only as root (it switches to the ejabberd user) "
                                    f"or as the ejabberd user, not as {user}")
        super().__init__(workdir)
        self.node = f"bench{os.getpid()}@localhost"
        self.conf, self.spool, self.logs = (self.workdir / part for part in ("conf", "spool", "logs"))

    def ctl(self, *arguments: str, what: str, timeout: float = 120.0, check: bool = True) -> str:
        """ejabberdctl for our node. As root it is run as the ejabberd user directly: through its
        own `su`, PAM would lower the open-files limit to 1,024 and the 1,024th session would fail."""
        command = ["ejabberdctl", "--config-dir", str(self.conf), "--spool", str(self.spool), "--logs",
                   str(self.logs), *arguments]
        as_user = {}
        if os.geteuid() == 0:
            ejabberd = pwd.getpwnam("ejabberd")
            as_user = {"user": ejabberd.pw_uid, "group": ejabberd.pw_gid, "extra_groups": [],
                       "env": {**os.environ, "HOME": str(self.spool)}, "cwd": str(self.spool)}   # cookie in $HOME
        if not check:
            return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **as_user).stdout
        return run_checked(command, what, timeout, **as_user)

    def setup(self, usernames: list[str], password: str) -> None:
        for directory in (self.conf, self.spool, self.logs):
            directory.mkdir()
        (self.conf / "inetrc").write_text("")
        (self.conf / "ejabberdctl.cfg").write_text(f"ERLANG_NODE={self.node}\n")
        (self.conf / "ejabberd.yml").write_text(f"""# written by bench/servers.py
loglevel: info
log_rotate_count: 0
hosts:
  - {DOMAIN}
listen:
  -
    port: {self.port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    shaper: none
    access: c2s
    starttls_required: false
    backlog: 1024
auth_password_format: scram
acl:
  admin:
    user:
      - ""
  local:
    user_regexp: ""
  loopback:
    ip:
      - 127.0.0.0/8
access_rules:
  local:
    allow: local
  c2s:
    deny: blocked
    allow: all
  announce:
    allow: admin
  configure:
    allow: admin
  muc_create:
    allow: local
  pubsub_createnode:
    allow: local
shaper_rules:
  max_user_sessions: 10
  max_user_offline_messages:
    5000: admin
    100: all
  c2s_shaper: none
modules:
{self.MODULES}""")
        if os.geteuid() == 0:
            os.chmod(self.workdir.parent, 0o755)
            os.chmod(self.workdir, 0o755)
            ejabberd = pwd.getpwnam("ejabberd")
            for path in (self.conf, self.spool, self.logs, *self.conf.iterdir()):
                os.chown(path, ejabberd.pw_uid, ejabberd.pw_gid)
        self.start()
        try:
            self._import_accounts(usernames, password)
        finally:
            self.stop()

    def _import_accounts(self, usernames: list[str], password: str) -> None:
        """One account registered by ejabberdctl, its SCRAM credentials exported (XEP-0227) and
        imported for every account: registering thousands one ejabberdctl call at a time takes an hour."""
        self.ctl("register", "benchprobe", DOMAIN, password, what="ejabberdctl register")
        export = self.spool / "export"
        export.mkdir()
        if os.geteuid() == 0:
            ejabberd = pwd.getpwnam("ejabberd")
            os.chown(export, ejabberd.pw_uid, ejabberd.pw_gid)
        self.ctl("export_piefxis", str(export), what="ejabberdctl export_piefxis")
        exported = "".join(path.read_text() for path in export.glob("*_localhost.xml"))
        credentials = re.search(r"<scram-credentials.*?</scram-credentials>", exported, re.S)
        if credentials is None:
            raise RuntimeError(f"no SCRAM credentials in ejabberd's export: {exported[:500]}")
        users = "".join(f"<user name='{name}'>{credentials.group(0)}</user>" for name in usernames)
        accounts = self.spool / "accounts.xml"
        accounts.write_text(f"<?xml version='1.0' encoding='UTF-8'?><server-data xmlns='urn:xmpp:pie:0'>"
                            f"<host jid='{DOMAIN}'>{users}</host></server-data>")
        os.chmod(accounts, 0o644)
        self.ctl("import_piefxis", str(accounts), what="ejabberdctl import_piefxis")

    def start(self) -> None:
        self.ctl("start", what="ejabberdctl start")
        self.ctl("started", what="ejabberdctl started", timeout=START_TIMEOUT)
        wait_listening(self.port, START_TIMEOUT, lambda: True)

    def stop(self) -> None:
        pid = self._beam_pid()
        if pid is None:
            return
        self.ctl("stop", what="ejabberdctl stop", timeout=60, check=False)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)

    def _beam_pid(self) -> int | None:
        """The Erlang VM of our node (ejabberdctl starts it detached, through su)."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                arguments = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if arguments and arguments[0].endswith(b"beam.smp") and self.node.encode() in arguments:
                return int(entry.name)
        return None

    @property
    def pid(self) -> int:
        pid = self._beam_pid()
        if pid is None:
            raise RuntimeError(f"ejabberd node {self.node} is not running")
        return pid

    def version(self) -> str:
        return "ejabberd " + package_version("ejabberd")


def package_version(package: str) -> str:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return done.stdout.strip() or "(version unknown)"


SERVERS = {"xmppd": Xmppd, "prosody": Prosody, "ejabberd": Ejabberd}
