"""Stand-ins shared by the unit tests of modules: a settable clock and a recording connection."""

from __future__ import annotations

from lxml import etree

from xmppd.c2s_machine import C2SMachine, StreamSettings

DOMAIN = "localhost"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeConnection:
    """What a session and before_auth() use of a C2SConnection, with the writes and closes recorded."""

    def __init__(self, host: str = "192.0.2.1", *, tls: bool = False, require_encryption: bool = False) -> None:
        self.host = host
        self.address = f"[{host}]:40000" if ":" in host else f"{host}:40000"
        settings = StreamSettings(DOMAIN, require_encryption=require_encryption, register_before_auth=True)
        self.machine = C2SMachine(settings, tls_active=tls)
        self.written: list[bytes] = []
        self.closed: tuple[str | None, str | None] | None = None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close_stream(self, condition=None, text=None, reason="", app_error=b"") -> None:
        self.closed = (condition, text)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def stanzas(self) -> list[etree._Element]:
        return [etree.fromstring(data) for data in self.written]

    def take(self) -> list[etree._Element]:
        stanzas = self.stanzas()
        self.written.clear()
        return stanzas
