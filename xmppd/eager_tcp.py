"""TCP listeners whose connections send at once instead of waiting for the reactor.

Twisted buffers every write, asks the reactor to watch the socket for
writability, sends from doWrite() on the next turn and stops watching again:
two epoll_ctl calls and one more dispatch for every connection a message goes
to. A socket whose send buffer has room takes the bytes at once (asyncio's own
transports try that first), so these connections do the same and hand Twisted
only what did not fit. From then on Twisted's buffer, its producer
back-pressure (c2s.py pauses a client that stops reading) and its closing work
exactly as before; while anything is buffered, new bytes queue behind it, so
the order never changes. Nagle's algorithm is off on these sockets (TCP_NODELAY),
as ejabberd and Prosody have it: bytes written are sent, not held for an ACK.

Both listeners use it: plain TCP (also after STARTTLS, where the encrypted
bytes reach the socket through the base class handed to startTLS) and direct
TLS (TLSMemoryBIOFactory over this TCP).
"""

from __future__ import annotations

from typing import Any, Iterable

from twisted.internet import _newtls, tcp
from twisted.internet.abstract import FileDescriptor
from twisted.protocols.tls import TLSMemoryBIOFactory


def _send_or_buffer(connection: Any, data: bytes) -> None:
    """FileDescriptor.write, but try the socket first when nothing is waiting to be sent."""
    if not data or not connection.connected or connection._writeDisconnected:
        return
    if connection._tempDataBuffer or connection.offset < len(connection.dataBuffer):
        FileDescriptor.write(connection, data)   # behind what waits
        return
    try:
        sent = connection.socket.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        sent = 0   # a broken socket: doWrite meets the error again and reports the lost connection
    if sent < len(data):
        FileDescriptor.write(connection, data[sent:])


class _EagerDescriptor(FileDescriptor):
    """The 'bypass' base startTLS is given: how TLS-encrypted bytes reach the socket."""

    def write(self, data: bytes) -> None:
        _send_or_buffer(self, data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        _send_or_buffer(self, b"".join(iovec))


class EagerServer(tcp.Server):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Stanzas go out as they are written, often several small sends in a row: with Nagle's
        # algorithm on, the second waits for the peer's (delayed, ~40 ms) ACK of the first.
        self.setTcpNoDelay(True)

    def write(self, data: bytes) -> None:
        if self.TLS:
            super().write(data)   # through the TLS layer, which comes back via _EagerDescriptor
        else:
            _send_or_buffer(self, data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        if self.TLS:
            super().writeSequence(iovec)
        else:
            _send_or_buffer(self, b"".join(iovec))

    def startTLS(self, ctx: Any, normal: bool = True) -> None:
        _newtls.startTLS(self, ctx, normal, _EagerDescriptor)


class EagerPort(tcp.Port):
    transport = EagerServer


def listen_tcp(reactor: Any, port: int, factory: Any, *, backlog: int, interface: str) -> EagerPort:
    listening = EagerPort(port, factory, backlog, interface, reactor)
    listening.startListening()
    return listening


def listen_tls(reactor: Any, port: int, factory: Any, context_factory: Any, *, backlog: int,
               interface: str) -> EagerPort:
    """TLS from the first byte (XEP-0368), as reactor.listenSSL does it, over eager TCP."""
    listening = listen_tcp(reactor, port, TLSMemoryBIOFactory(context_factory, False, factory),
                           backlog=backlog, interface=interface)
    listening._type = "TLS"
    return listening
