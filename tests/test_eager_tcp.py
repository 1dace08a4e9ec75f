"""xmppd/eager_tcp.py: bytes go to the socket at once when they can, else queue in Twisted's buffer, in order.

Driven with a real non-blocking socket pair and a FileDescriptor whose reactor only records whether it
was asked to watch for writability; the servers in the other tests use the listeners for real (plain,
STARTTLS and direct TLS).
"""

from __future__ import annotations

import socket

import pytest
from twisted.internet.abstract import FileDescriptor

from xmppd.eager_tcp import _send_or_buffer


class RecordingReactor:
    def __init__(self) -> None:
        self.writers: set = set()

    def addWriter(self, descriptor) -> None:
        self.writers.add(descriptor)

    def removeWriter(self, descriptor) -> None:
        self.writers.discard(descriptor)


class Descriptor(FileDescriptor):
    def __init__(self, sock: socket.socket) -> None:
        super().__init__(reactor=RecordingReactor())
        self.socket = sock
        self.connected = True

    def writeSomeData(self, data) -> int:
        return self.socket.send(data)


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    yield Descriptor(ours), theirs
    ours.close()
    theirs.close()


def drain(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_sent_at_once_when_the_socket_has_room(pair):
    descriptor, peer = pair
    _send_or_buffer(descriptor, b"<message/>")
    assert drain(peer) == b"<message/>"
    assert descriptor.reactor.writers == set()   # the reactor was not asked to watch the socket
    assert descriptor.dataBuffer == b"" and descriptor._tempDataBuffer == []


def test_what_does_not_fit_waits_and_later_bytes_queue_behind_it(pair):
    descriptor, peer = pair
    big = bytes(range(256)) * 40_000   # more than a socket buffer takes at once
    _send_or_buffer(descriptor, big)
    assert descriptor.reactor.writers == {descriptor}   # Twisted's buffer holds the rest
    _send_or_buffer(descriptor, b"<after/>")            # must not overtake what waits
    received = drain(peer)
    while descriptor.reactor.writers:
        descriptor.doWrite()
        received += drain(peer)
    assert received == big + b"<after/>"


def test_nothing_is_written_on_a_closed_connection(pair):
    descriptor, peer = pair
    descriptor.connected = False
    _send_or_buffer(descriptor, b"<late/>")
    assert drain(peer) == b""
    assert descriptor.reactor.writers == set()


def test_a_broken_socket_is_left_to_twisted_to_report(pair):
    descriptor, peer = pair
    descriptor.socket.close()   # send() raises OSError (bad file descriptor)
    _send_or_buffer(descriptor, b"<message/>")
    assert descriptor.reactor.writers == {descriptor}   # doWrite will meet the error and end the connection
