"""A session handles what its client sent strictly in order, also while async handlers run."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from lxml import etree

from xmppd.session import Session


class SlowFirstRouter:
    """from_client: the first stanza needs storage (an awaitable), the others are handled at once."""

    def __init__(self, log: list) -> None:
        self.log = log
        self.release = asyncio.Event()

    def from_client(self, session, element):
        self.log.append(element.get("id"))
        if element.get("id") == "1":
            return self.release.wait()
        return None

    def bounce(self, element, condition, text=None):
        return None


class Connection:
    address = "test"

    def __init__(self) -> None:
        self.paused = False

    def write(self, data: bytes) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def test_nonzas_and_stanzas_wait_behind_a_slow_handler():
    async def scenario():
        log: list = []
        router = SlowFirstRouter(log)
        server = SimpleNamespace(domain="localhost", router=router)
        session = Session(server, Connection(), "alice", "phone")
        session.handle(etree.Element("iq", id="1"))
        session.handle(lambda: log.append("nonza"))
        session.handle(etree.Element("message", id="2"))
        await asyncio.sleep(0)
        assert log == ["1"]                       # the rest waits for the first handler
        router.release.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert log == ["1", "nonza", "2"]

    asyncio.run(scenario())


def test_a_long_queue_pauses_reading_and_resumes_when_it_drains():
    async def scenario():
        log: list = []
        router = SlowFirstRouter(log)
        connection = Connection()
        session = Session(SimpleNamespace(domain="localhost", router=router), connection, "alice", "phone")
        session.handle(etree.Element("iq", id="1"))
        for n in range(100):
            session.handle(etree.Element("message", id=f"m{n}"))
        assert connection.paused
        router.release.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not connection.paused and len(log) == 101

    asyncio.run(scenario())


def test_reading_resumes_also_when_every_queued_stanza_is_slow():
    class AllSlow(SlowFirstRouter):
        def from_client(self, session, element):
            self.log.append(element.get("id"))
            return asyncio.sleep(0)

    async def scenario():
        log: list = []
        connection = Connection()
        session = Session(SimpleNamespace(domain="localhost", router=AllSlow(log)), connection, "alice", "phone")
        for n in range(100):
            session.handle(etree.Element("message", id=f"m{n}"))
        assert connection.paused
        for _ in range(300):
            await asyncio.sleep(0)
        assert len(log) == 100 and not connection.paused

    asyncio.run(scenario())
