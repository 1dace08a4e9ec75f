"""The Debian package, installed: its unit's ExecStart run as systemd would run it, an account made
with the installed xmppctl, a slixmpp login, and `systemd-analyze verify` on the unit.

These tests run when the package is installed (dpkg-query says so) and are skipped otherwise,
with the reason. With XMPPD_EXPECT_DEB=1 (.ci/run sets it after installing the package) a
missing package, missing root or a busy port fails them instead. The installed configuration
listens on 5222 and 5223 on loopback; every other test uses ephemeral ports.

The packaging files themselves (versions, man pages) are checked without the package.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import Client, run
from xmppd import __version__
from xmppd.config import load_config

ROOT = Path(__file__).resolve().parent.parent
UNIT_PATHS = (Path("/lib/systemd/system/xmppd.service"), Path("/usr/lib/systemd/system/xmppd.service"))
INSTALLED_CONFIG = "/etc/xmppd/xmppd.toml"
INSTALLED_XMPPCTL = "/usr/sbin/xmppctl"
READY_TIMEOUT = 60.0


def require(condition: bool, reason: str) -> None:
    """Skip when the machine cannot run a test, unless CI says it must."""
    if condition:
        return
    if os.environ.get("XMPPD_EXPECT_DEB") == "1":
        pytest.fail(f"{reason} (XMPPD_EXPECT_DEB=1 expects the installed package)")
    pytest.skip(reason)


def installed_version() -> str | None:
    try:
        query = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", "xmppd"],
                               capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return None
    if query.returncode != 0 or not query.stdout.startswith("install ok installed "):
        return None
    return query.stdout.split()[-1]


def read_unit(path: Path) -> dict[str, list[str]]:
    """The [Service] settings of a unit file: each key with its values in order (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def installed_unit() -> Path:
    path = next((p for p in UNIT_PATHS if p.exists()), None)
    require(path is not None, f"the package is installed but no unit at {' or '.join(map(str, UNIT_PATHS))}")
    return path


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class InstalledDaemon:
    process: subprocess.Popen
    notifications: socket.socket
    ready: list[str]
    log_path: Path
    port: int
    tls_port: int
    cert: str
    open_files_limit: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def receive(self, timeout: float) -> list[str]:
        self.notifications.settimeout(timeout)
        return self.notifications.recv(4096).decode().split("\n")


def start_as_the_unit_would(unit: dict[str, list[str]], tmp_path: Path) -> InstalledDaemon:
    """ExecStart as User/Group with the unit's UMask and LimitNOFILE, a clean environment, and
    NOTIFY_SOCKET (an abstract socket: the xmppd user needs no file permission to reach it)."""
    [exec_start] = unit["ExecStart"]
    [user] = unit["User"]
    [group] = unit.get("Group", [user])
    [umask] = unit.get("UMask", ["0022"])
    [limit] = unit.get("LimitNOFILE", ["1024"])
    assert unit["Type"] == ["notify"], "xmppd reports readiness: the unit must wait for it"
    account = pwd.getpwnam(user)
    name = f"xmppd-deb-test-{secrets.token_hex(6)}"
    notifications = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notifications.bind("\0" + name)
    soft, hard = (int(n) for n in (limit.split(":") * 2)[:2])
    environment = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                   "HOME": account.pw_dir, "USER": user, "LOGNAME": user, "SHELL": account.pw_shell,
                   "NOTIFY_SOCKET": "@" + name}
    log_path = tmp_path / "installed-xmppd.log"
    # The child inherits the limit; it cannot raise its hard limit itself once it is the xmppd user.
    own_limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    except (ValueError, OSError):   # a container without CAP_SYS_RESOURCE: as high as it allows
        hard = own_limit[1]
        soft = min(soft, hard)
        warnings.warn(f"could not give the daemon LimitNOFILE={limit} here; it gets {soft}:{hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        with open(log_path, "wb") as log:
            process = subprocess.Popen(shlex.split(exec_start), user=user, group=group, extra_groups=[],
                                       umask=int(umask, 8), env=environment, cwd="/", stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, own_limit)
    config = load_config(INSTALLED_CONFIG)
    daemon = InstalledDaemon(process, notifications, [], log_path, config.c2s.port, config.c2s.direct_tls_port,
                             config.tls.certificate, hard)
    deadline = time.monotonic() + READY_TIMEOUT
    while not daemon.ready:
        remaining = deadline - time.monotonic()
        if process.poll() is not None or remaining <= 0:
            stop(daemon)
            raise AssertionError(f"no READY=1 from the installed xmppd (exit status {process.returncode}):\n"
                                 f"{daemon.log()}")
        try:
            lines = daemon.receive(min(remaining, 1.0))
        except TimeoutError:
            continue
        if "READY=1" in lines:
            daemon.ready = lines
    return daemon


def stop(daemon: InstalledDaemon) -> None:
    if daemon.process.poll() is None:
        daemon.process.send_signal(signal.SIGTERM)   # the unit's KillSignal
        try:
            daemon.process.wait(30)
        except subprocess.TimeoutExpired:
            daemon.process.kill()
            daemon.process.wait()
    daemon.notifications.close()


def xmppctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([INSTALLED_XMPPCTL, *args], input=stdin, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def package() -> str:
    version = installed_version()
    require(version is not None, "the xmppd package is not installed (bash scripts/build-deb.sh; "
                                 "apt-get install ./xmppd_*.deb)")
    return version


@pytest.fixture(scope="module")
def daemon(package, tmp_path_factory):
    require(os.geteuid() == 0, "running the unit's ExecStart as its user needs root")
    config = load_config(INSTALLED_CONFIG)
    for port in (config.c2s.port, config.c2s.direct_tls_port):
        require(port_free(port), f"port {port} on 127.0.0.1 is in use by another process, and the installed "
                                 "configuration listens there; stop that process or run this test in its own "
                                 "network namespace (unshare --net)")
    started = start_as_the_unit_would(read_unit(installed_unit()), tmp_path_factory.mktemp("deb"))
    yield started
    stop(started)


def test_installed_version_is_this_tree(package):
    assert package == __version__


def test_daemon_runs_as_the_unit_says_and_reports_ready(daemon):
    unit = read_unit(installed_unit())
    status = dict(line.split(":", 1) for line in Path(f"/proc/{daemon.process.pid}/status").read_text().splitlines())
    assert int(status["Uid"].split()[0]) == pwd.getpwnam(unit["User"][0]).pw_uid
    assert int(unit["LimitNOFILE"][0]) >= 65536, "room for tens of thousands of clients"
    limits = Path(f"/proc/{daemon.process.pid}/limits").read_text()
    assert re.search(rf"Max open files\s+{daemon.open_files_limit}\s+{daemon.open_files_limit}\s", limits), limits
    [status] = [line for line in daemon.ready if line.startswith("STATUS=serving localhost; listening on ")]
    assert "127.0.0.1:5222," in status and "/var/lib/xmppd/xmppd.sock (control)" in status, status
    for port in (daemon.port, daemon.tls_port):
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass


def test_account_made_with_installed_xmppctl_logs_in(daemon):
    assert xmppctl("check-config").returncode == 0
    username = f"deb-test-{secrets.token_hex(4)}"
    jid, password = f"{username}@localhost", secrets.token_urlsafe(16)
    created = xmppctl("adduser", jid, stdin=password + "\n")
    assert created.returncode == 0, created.stderr
    try:
        assert jid in xmppctl("listusers").stdout.split()

        async def log_in(direct_tls: bool) -> None:
            client = await Client(daemon, jid, password, direct_tls=direct_tls).login()
            await client.close()

        run(log_in(direct_tls=False))   # STARTTLS on 5222, trusting the certificate postinst made
        run(log_in(direct_tls=True))    # XEP-0368 on 5223
    finally:
        deleted = xmppctl("deluser", jid)
    assert deleted.returncode == 0, deleted.stderr
    # xmppctl ran as root, yet the database stays the daemon's own (the wrapper switched users).
    database = Path(load_config(INSTALLED_CONFIG).storage.sqlite_path)
    owner = pwd.getpwuid(database.stat().st_uid).pw_name
    assert owner == read_unit(installed_unit())["User"][0]


def test_sigterm_reports_stopping_and_exits_cleanly(daemon):
    daemon.process.send_signal(signal.SIGTERM)
    lines = daemon.receive(30)
    assert lines[0] == "STOPPING=1", lines
    assert daemon.process.wait(30) == 0, daemon.log()


def test_installed_unit_passes_systemd_analyze_verify(package):
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "systemd-analyze is not installed (apt-get install systemd)")
    unit = installed_unit()
    verified = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0 and unit.name not in verified.stdout + verified.stderr, (
        verified.stdout + verified.stderr)


def test_package_version_follows_setup_cfg():
    changelog = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    assert re.match(rf"xmppd \({re.escape(__version__)}(-\d+)?\) ", changelog), changelog
    assert re.search(rf"^version = {re.escape(__version__)}$", (ROOT / "setup.cfg").read_text(), re.M)


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> set[str]:
    """Every (sub)command and option of an argparse parser, as the man page must name them."""
    names = set()
    for action in parser._actions:
        names.update(o for o in action.option_strings if o.startswith("--") and o != "--help")
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                names.add(f"{prefix}{name}")
                names |= _commands(sub, f"{prefix}{name} ")
    return names


@pytest.mark.parametrize("program", ["xmppd", "xmppctl"])
def test_man_page_names_every_command_and_option(program, monkeypatch):
    from xmppd import ctl, main

    captured = {}

    def capture(self, *args, **kwargs):
        captured["parser"] = self
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        (main if program == "xmppd" else ctl).main([])
    page = (ROOT / "debian" / f"{program}.8").read_text().replace("\\-", "-")
    page = re.sub(r"\\f[BIRP]|^\.[A-Z]+ ?", "", page, flags=re.M).replace('"', "")
    missing = sorted(name for name in _commands(captured["parser"]) if name not in page)
    assert not missing, f"debian/{program}.8 does not describe {missing}"
