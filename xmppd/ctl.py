"""`xmppctl`: administration from the command line, against the same storage as the daemon."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import socket
import sys

from .config import ConfigError, load_config, render_config
from .jid import JID, InvalidJID

DEFAULT_CONFIG = "/etc/xmppd/xmppd.toml"
CONTROL_TIMEOUT = 30.0   # seconds to wait for the running server's answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xmppctl", description="Administer an xmppd server.")
    parser.add_argument("-c", "--config", default=os.environ.get("XMPPD_CONFIG", DEFAULT_CONFIG),
                        help=f"configuration file (default {DEFAULT_CONFIG}, or $XMPPD_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in (("adduser", "create an account (password from a prompt, or stdin when piped)"),
                            ("passwd", "set a new password (prompt, or stdin when piped)"),
                            ("deluser", "delete an account and all its data")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("jid", help="user@domain (or just user)")
    commands.add_parser("listusers", help="list the accounts")
    commands.add_parser("status", help="is the server running; its connections, sessions, queues (exit 3 if "
                                       "it is not running)")
    kick = commands.add_parser("kick", help="end an account's sessions (live and hibernated, they cannot be "
                                            "resumed), or one resource's")
    kick.add_argument("jid", help="user@domain or user@domain/resource (or just user)")
    commands.add_parser("check-config", help="validate the configuration and print the effective settings")
    push = commands.add_parser("push", help="push registrations (XEP-0357) of an account")
    push_commands = push.add_subparsers(dest="push_command", required=True, metavar="COMMAND")
    push_list = push_commands.add_parser("list", help="the account's registrations: app server, node, last success")
    push_list.add_argument("jid", help="user@domain (or just user)")
    push_remove = push_commands.add_parser("remove", help="forget the account's registrations (all, or one)")
    push_remove.add_argument("jid", help="user@domain (or just user)")
    push_remove.add_argument("--service", help="only those at this app server JID")
    push_remove.add_argument("--node", help="only this node (with --service)")
    export = commands.add_parser("export", help="write accounts and their data as XEP-0227 XML (for Prosody, "
                                                "ejabberd or another xmppd)")
    export.add_argument("file", help="the file to write (readable by its owner only), or - for standard output")
    export.add_argument("--user", action="append", dest="users", metavar="JID",
                        help="only this account (repeatable; default: all)")
    export.add_argument("--one-file-per-account", action="store_true",
                        help="FILE is a directory that gets user@domain.xml per account (what "
                             "prosody-migrator reads)")
    import_ = commands.add_parser("import", help="create accounts from XEP-0227 XML (xmppctl export, "
                                                 "prosody-migrator, ejabberdctl export_piefxis)")
    import_.add_argument("files", nargs="+", metavar="FILE", help="XEP-0227 files (Prosody writes one per user)")
    import_.add_argument("--existing", choices=("refuse", "skip", "replace"), default="refuse",
                         help="accounts that exist already: import nothing (default), leave them alone, or "
                              "delete them with all their data and import the file's")
    cert = commands.add_parser("cert", help="certificates")
    cert_commands = cert.add_subparsers(dest="cert_command", required=True, metavar="COMMAND")
    generate = cert_commands.add_parser("generate", help="make a self-signed certificate for the domain")
    generate.add_argument("--days", type=int, default=3650)
    generate.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    try:
        # `cert generate` is how missing certificate files get made, so it does not insist they exist.
        config = load_config(args.config, check_files=args.command != "cert")
    except ConfigError as error:
        print(f"xmppctl: configuration error:\n{error}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](config, args)
    except UserError as error:
        print(f"xmppctl: {error}", file=sys.stderr)
        return error.exit_code


class UserError(Exception):
    exit_code = 1


class NotRunning(UserError):
    """The running server cannot be reached through its control socket."""

    exit_code = 3


def _username(config, text: str) -> str:
    jid = _local_jid(config, text)
    if jid.resource is not None:
        raise UserError(f"{text} is not an account of {config.server.domain}")
    return jid.local


def _local_jid(config, text: str) -> JID:
    try:
        jid = JID.parse(text if "@" in text else f"{text}@{config.server.domain}")
    except InvalidJID as error:
        raise UserError(f"{text!r} is not a valid JID: {error}") from None
    if jid.domain != config.server.domain or jid.local is None:
        raise UserError(f"{text} is not an account of {config.server.domain}")
    return jid


def _ask_server(config, command: str, **arguments):
    """Send one request to the running server's control socket (control.py) and return its result.
    Raises NotRunning if nothing answers there, UserError if the server refused the request."""
    path = config.control.socket
    if not path:
        raise NotRunning('the control socket is off ([control] socket = ""), so the running server cannot '
                         "be reached")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONTROL_TIMEOUT)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunning(f"xmppd is not running (nothing listens on {path})") from None
        except PermissionError:
            raise UserError(f"no permission to use the control socket {path}; run xmppctl as the server's "
                            "user (or root)") from None
        sock.sendall(json.dumps({"command": command, **arguments}).encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise UserError(f"the server closed the control socket {path} without answering")
            answer += chunk
    except socket.timeout:
        raise UserError(f"the server did not answer on {path} within {CONTROL_TIMEOUT:.0f} s") from None
    finally:
        sock.close()
    reply = json.loads(answer)
    if not reply.get("ok"):
        raise UserError(f"the server refused {command}: {reply.get('error')}")
    return reply["result"]


def _tell_server(config, command: str, **arguments) -> None:
    """Tell a running server about a change made in storage; a server that is not running needs nothing."""
    try:
        _ask_server(config, command, **arguments)
    except NotRunning:
        pass


def _read_password(prompt_twice: bool = True) -> str:
    if not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if prompt_twice and getpass.getpass("Again: ") != password:
            raise UserError("the passwords differ")
    if not password:
        raise UserError("an empty password is not allowed")
    return password


def _with_storage(config, work):
    from .accounts import open_configured_storage
    from .storage import StorageError

    async def run():
        storage = await open_configured_storage(config)
        try:
            return await work(storage)
        finally:
            await storage.close()

    try:
        return asyncio.run(run())
    except StorageError as error:
        raise UserError(str(error)) from None


def adduser(config, args) -> int:
    username = _store_new_password(config, args.jid, "create_user")
    print(f"created {username}@{config.server.domain}")
    return 0


def passwd(config, args) -> int:
    username = _store_new_password(config, args.jid, "set_credentials")
    print(f"password of {username}@{config.server.domain} changed")
    return 0


def _store_new_password(config, jid: str, operation: str) -> str:
    """Read a password, derive its SCRAM keys once, and create the account or replace its keys."""
    from .sasl import derive_credentials

    username = _username(config, jid)
    credentials = derive_credentials(_read_password(), config.auth.scram_iterations)
    if not _with_storage(config, lambda storage: getattr(storage, operation)(username, credentials)):
        if operation == "create_user":
            raise UserError(f"{username}@{config.server.domain} exists already (use passwd)")
        raise UserError(f"no account {username}@{config.server.domain}")
    return username


def deluser(config, args) -> int:
    username = _username(config, args.jid)
    if not _with_storage(config, lambda storage: storage.delete_user(username)):
        raise UserError(f"no account {username}@{config.server.domain}")
    print(f"deleted {username}@{config.server.domain} and all its data")
    _tell_server(config, "account-deleted", jid=f"{username}@{config.server.domain}")
    return 0


def status(config, args) -> int:
    numbers = _ask_server(config, "status")
    push = numbers["push_registrations"]
    print(f"xmppd {numbers['version']} serving {numbers['domain']} (pid {numbers['pid']}), "
          f"up {_duration(numbers['uptime'])}")
    print(f"connections: {numbers['connections']}")
    print(f"sessions: {numbers['sessions']} live, {numbers['hibernated']} hibernated")
    print(f"offline messages: {numbers['offline_messages']}")
    print(f"push registrations: {push if push is not None else 'push module not enabled'}")
    return 0


def _duration(seconds: float) -> str:
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    return (f"{days}d " if days else "") + f"{hour:02d}:{minute:02d}:{second:02d}"


def kick(config, args) -> int:
    jid = _local_jid(config, args.jid)
    kicked = _ask_server(config, "kick", jid=str(jid))["kicked"]
    print(f"{kicked} session(s) of {jid} ended" if kicked else f"{jid} has no sessions")
    return 0


def listusers(config, args) -> int:
    for username in _with_storage(config, lambda storage: storage.list_users()):
        print(f"{username}@{config.server.domain}")
    return 0


def push(config, args) -> int:
    username = _username(config, args.jid)
    account = f"{username}@{config.server.domain}"
    if args.push_command == "list":
        registrations = _with_storage(config, lambda storage: storage.push_registrations(username))
        for r in registrations:
            success = r.last_success_at.isoformat(timespec="seconds") if r.last_success_at else "never"
            print(f"{r.jid}\tnode={r.node}\tenabled={r.created_at.isoformat(timespec='seconds')}\t"
                  f"last success={success}\tfailures={r.strikes}")
        if not registrations:
            print(f"{account} has no push registrations")
        return 0
    if args.node and not args.service:
        raise UserError("--node needs --service")

    async def remove(storage):
        removed = []
        for registration in await storage.push_registrations(username):
            if args.service in (None, registration.jid) and args.node in (None, registration.node):
                removed += await storage.push_disable(username, registration.jid, registration.node)
        return removed

    removed = _with_storage(config, remove)
    print(f"{len(removed)} push registration(s) of {account} removed")
    if removed:
        _tell_server(config, "push-removed", jid=account, registrations=[[r.jid, r.node] for r in removed])
    return 0


def export(config, args) -> int:
    from .portable import PortableError, export_accounts, export_per_account, private_file

    usernames = None if args.users is None else [_username(config, jid) for jid in args.users]
    domain = config.server.domain
    if args.one_file_per_account and args.file == "-":
        raise UserError("--one-file-per-account writes into a directory, not to standard output")
    try:
        if args.one_file_per_account:
            os.makedirs(args.file, mode=0o700, exist_ok=True)
            summary = _with_storage(config, lambda storage: export_per_account(storage, domain, args.file, usernames))
        elif args.file == "-":
            summary = _with_storage(config, lambda storage: export_accounts(storage, domain, sys.stdout.buffer,
                                                                            usernames))
            sys.stdout.buffer.flush()
        else:
            with private_file(args.file) as out:
                summary = _with_storage(config, lambda storage: export_accounts(storage, domain, out, usernames))
    except (PortableError, OSError) as error:
        raise UserError(f"export failed: {error}") from None
    # With '-' the XML goes to standard output, so the summary goes to standard error.
    print(summary.line("exported") + ("" if args.file == "-" else f" to {args.file}"),
          file=sys.stderr if args.file == "-" else sys.stdout)
    return 0


def import_(config, args) -> int:
    from .portable import PortableError, Summary, import_accounts, read_files
    from .storage import StorageError

    summary = Summary()
    try:
        accounts = read_files(args.files, config.server.domain, config.auth.scram_iterations, summary.notes)
    except PortableError as error:
        raise UserError(f"nothing imported: {error}") from None
    for line in summary.notes.lines():
        print(f"xmppctl: warning: {line}", file=sys.stderr)
    if not accounts:
        raise UserError(f"nothing imported: no accounts of {config.server.domain} in {', '.join(args.files)}")

    async def work(storage):
        try:
            await import_accounts(storage, accounts, config.server.domain, args.existing, summary)
        except StorageError as error:
            print(summary.line("imported"), file=sys.stderr)
            raise UserError(f"import stopped: {error}; the accounts counted above are in, the failing one was "
                            "removed again (run the import again with --existing=skip to go on)") from None

    try:
        _with_storage(config, work)
    except PortableError as error:
        raise UserError(str(error)) from None
    print(summary.line("imported"))
    return 0


def check_config(config, args) -> int:
    print(f"# {config.path}: OK")
    print(render_config(config), end="")
    return 0


def cert(config, args) -> int:
    from .certs import certificate_summary, generate_self_signed

    tls = config.tls
    if not tls.certificate or not tls.private_key:
        raise UserError("set [tls] certificate and private_key in the configuration first")
    try:
        generate_self_signed(config.server.domain, tls.certificate, tls.private_key, days=args.days,
                             overwrite=args.force)
    except FileExistsError as error:
        raise UserError(f"{error.filename or error} exists; use --force to replace it") from None
    print(f"wrote {tls.certificate} and {tls.private_key}: {certificate_summary(tls.certificate)}")
    return 0


COMMANDS = {"adduser": adduser, "passwd": passwd, "deluser": deluser, "listusers": listusers,
            "check-config": check_config, "cert": cert, "push": push, "status": status, "kick": kick,
            "export": export, "import": import_}

if __name__ == "__main__":
    sys.exit(main())
