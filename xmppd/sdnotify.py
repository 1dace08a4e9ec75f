"""Tell systemd when xmppd is ready, reloading or stopping (the sd_notify protocol).

A Type=notify unit counts the service as started only when it says READY=1, so `systemctl start`
returns once clients can connect and units ordered after xmppd start after that, not after a guess.
The protocol is one datagram of newline-separated KEY=VALUE lines to the AF_UNIX socket named by
$NOTIFY_SOCKET: a path, or an abstract socket when the name starts with '@'. Without that variable
(xmppd not started by systemd) every call does nothing. No libsystemd needed.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("xmppd.sdnotify")


def notify(*assignments: str) -> bool:
    """Send KEY=VALUE lines to the service manager; True if a datagram went out.

    Failing to notify is logged, never raised: the server works the same without systemd.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        target = "\0" + address[1:]   # Linux abstract namespace
    elif address.startswith("/"):
        target = address
    else:
        log.warning("NOTIFY_SOCKET=%s is neither a path nor an abstract socket (@name); not notifying", address)
        return False
    message = "\n".join(assignments).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, target)
    except OSError as error:
        log.warning("could not notify the service manager at %s: %s", address, error)
        return False
    return True


def ready(status: str = "") -> bool:
    """Startup or a reload is complete: storage is migrated and every listener listens."""
    return notify("READY=1", *_status(status))


def reloading(status: str = "") -> bool:
    """A reload (SIGHUP) begins; call ready() when it is done. MONOTONIC_USEC lets systemd tell
    this reload from an earlier one (required by Type=notify-reload, harmless otherwise)."""
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={now_usec}", *_status(status))


def stopping(status: str = "") -> bool:
    """Shutdown begins: systemd shows the unit as deactivating while clients are told and storage closes."""
    return notify("STOPPING=1", *_status(status))


def status(text: str) -> bool:
    """A one-line state shown by `systemctl status xmppd`."""
    return notify(*_status(text))


def _status(text: str) -> tuple[str, ...]:
    # One datagram line per assignment: a newline inside the text would start a bogus assignment.
    return (f"STATUS={' '.join(text.split())}",) if text else ()
