"""How long `xmppctl import` takes for a server's worth of accounts (XEP-0227, xmppd/portable.py).

Writes a XEP-0227 file of N accounts, each with SCRAM-SHA-1 keys (as Prosody exports them, so no
PBKDF2 is run), C roster contacts in a few groups, a vCard and M offline messages; then reads and
imports it into an empty store (SQLite file or a fresh PostgreSQL schema, dropped afterwards) in this
process, with the functions xmppctl uses. Prints one JSON line: seconds to read and check the file,
seconds to write it, and accounts per second.

    .venv/bin/python -m bench.portable_import                        # sqlite, 1,000 accounts
    .venv/bin/python -m bench.portable_import --backend postgresql --accounts 500 --contacts 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from tests.storage_fixtures import make_storage
from xmppd.portable import Notes, Summary, import_accounts, read_files

DOMAIN = "localhost"
SCRAM_SHA1 = ("<scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'><iter-count>4096"
              "</iter-count><salt>ZWphYmJlcmQtZml4dHVyZS1zYWx0</salt><server-key>AN0o04Z8qyOVLjUIZHIE3ihSlw8="
              "</server-key><stored-key>k+3VHRyvj+yxSGXXQL409DRNIws=</stored-key></scram-credentials>")


def write_file(path: Path, accounts: int, contacts: int, messages: int) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write(f"<server-data xmlns='urn:xmpp:pie:0'><host jid='{DOMAIN}'>")
        for n in range(accounts):
            items = "".join(f"<item jid='contact{i}@remote.example' name='Contact {i}' subscription='both'>"
                            f"<group>Group {i % 5}</group></item>" for i in range(contacts))
            offline = "".join(f"<message xmlns='jabber:client' from='contact{i}@remote.example/phone' type='chat' "
                              f"id='m{i}'><body>message {i}</body><delay xmlns='urn:xmpp:delay' from='{DOMAIN}' "
                              f"stamp='2026-01-05T10:{i % 60:02d}:00Z'/></message>" for i in range(messages))
            out.write(f"<user name='user{n}'>{SCRAM_SHA1}<query xmlns='jabber:iq:roster'>{items}</query>"
                      f"<vCard xmlns='vcard-temp'><FN>User {n}</FN></vCard>"
                      f"<offline-messages>{offline}</offline-messages></user>")
        out.write("</host></server-data>")


async def measure(args: argparse.Namespace, directory: Path) -> dict:
    path = directory / "import.xml"
    write_file(path, args.accounts, args.contacts, args.messages)
    started = time.perf_counter()
    accounts = read_files([str(path)], DOMAIN, 4096, Notes())
    read_seconds = time.perf_counter() - started
    storage, cleanup = await make_storage(args.backend, directory)
    try:
        summary = Summary()
        started = time.perf_counter()
        await import_accounts(storage, accounts, DOMAIN, "refuse", summary)
        write_seconds = time.perf_counter() - started
    finally:
        await cleanup()
    return {"scenario": "portable_import", "backend": args.backend, "accounts": args.accounts,
            "contacts_per_account": args.contacts, "offline_messages_per_account": args.messages,
            "file_bytes": path.stat().st_size, "read_seconds": round(read_seconds, 3),
            "write_seconds": round(write_seconds, 3),
            "accounts_per_second": round(args.accounts / (read_seconds + write_seconds), 1),
            "imported": summary.counts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--contacts", type=int, default=50, help="roster items per account")
    parser.add_argument("--messages", type=int, default=5, help="offline messages per account")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="xmppd-bench-import-") as directory:
        print(json.dumps(asyncio.run(measure(args, Path(directory)))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
