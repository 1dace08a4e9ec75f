"""XEP-0352 Client State Indication: the buffer with a fake clock, the module with Twisted's Clock, and
real clients over TLS on both backends."""

from __future__ import annotations

import asyncio

from lxml import etree
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath
from twisted.internet.task import Clock

from tests.conftest import start_xmppd
from tests.harness import Client, run
from xmppd.config import default_config
from xmppd.csi import ACTIVE, INACTIVE, URGENT, CSIBuffer, ClientStateIndication, hold_key
from xmppd.server import Server
from xmppd.stanza import serialize

CLIENT = "jabber:client"
CHATSTATES = "http://jabber.org/protocol/chatstates"
MARKERS = "urn:xmpp:chat-markers:0"
RECEIPTS = "urn:xmpp:receipts"
EVENT = "http://jabber.org/protocol/pubsub#event"
ALICE = "alice@localhost/phone"
CAROL = "carol@localhost/pc"


# ---------------------------------------------------------------- stanzas
def parse(xml: str) -> etree._Element:
    return etree.fromstring(f"<wrapper xmlns='{CLIENT}'>{xml}</wrapper>")[0]


def presence(sender: str = ALICE, status: str = "", type_: str | None = None) -> etree._Element:
    kind = f" type='{type_}'" if type_ else ""
    return parse(f"<presence from='{sender}' to='bob@localhost/phone'{kind}><status>{status}</status></presence>")


def chat_state(state: str, sender: str = ALICE, thread: str | None = None, type_: str = "chat") -> etree._Element:
    thread_xml = f"<thread>{thread}</thread>" if thread else ""
    return parse(f"<message from='{sender}' type='{type_}'>{thread_xml}<{state} xmlns='{CHATSTATES}'/>"
                 f"<no-store xmlns='urn:xmpp:hints'/></message>")


def marker(kind: str, id_: str, sender: str = ALICE) -> etree._Element:
    return parse(f"<message from='{sender}' type='chat'><{kind} xmlns='{MARKERS}' id='{id_}'/></message>")


def receipt(id_: str, sender: str = ALICE) -> etree._Element:
    return parse(f"<message from='{sender}'><received xmlns='{RECEIPTS}' id='{id_}'/></message>")


def body(text: str, sender: str = ALICE) -> etree._Element:
    return parse(f"<message from='{sender}' type='chat'><body>{text}</body></message>")


def pep(node: str, item: str, sender: str = "alice@localhost", payload: str = "", retract: bool = False):
    entry = f"<retract id='{item}'/>" if retract else f"<item id='{item}'>{payload}</item>"
    return parse(f"<message from='{sender}' type='headline'><event xmlns='{EVENT}'>"
                 f"<items node='{node}'>{entry}</items></event></message>")


def iq(type_: str = "get") -> etree._Element:
    return parse(f"<iq from='{ALICE}' type='{type_}' id='1'><ping xmlns='urn:xmpp:ping'/></iq>")


# ---------------------------------------------------------------- the policy
def test_what_goes_out_at_once():
    urgent = [
        body("hi"),
        parse(f"<message from='{ALICE}'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>"),
        parse(f"<message from='{ALICE}'><propose xmlns='urn:xmpp:jingle-message:0' id='c'/></message>"),
        # another device took the call: a ringing phone must stop at once
        parse(f"<message from='{ALICE}'><accept xmlns='urn:xmpp:jingle-message:0' id='c'/></message>"),
        presence(type_="subscribe"),
        iq("get"), iq("result"), iq("set"), iq("error"),
        parse(f"<message from='{ALICE}' type='error'><error type='cancel'/></message>"),
        parse(f"<presence from='{ALICE}' type='error'><error type='cancel'/></presence>"),
    ]
    for stanza in urgent:
        assert hold_key(stanza) is URGENT, serialize(stanza)


def test_what_is_held_and_what_it_supersedes():
    assert hold_key(presence()) == hold_key(presence(status="away")) == hold_key(presence(type_="unavailable"))
    assert hold_key(presence()) != hold_key(presence(sender=CAROL))
    assert hold_key(presence(sender="alice@localhost/laptop")) != hold_key(presence())   # per resource
    for kind in ("subscribed", "unsubscribe", "unsubscribed"):
        assert hold_key(presence(type_=kind)) is None
    # chat states: newest per sender, type and thread
    assert hold_key(chat_state("composing")) == hold_key(chat_state("paused"))
    assert hold_key(chat_state("composing")) != hold_key(chat_state("composing", thread="t1"))
    assert hold_key(chat_state("composing")) != hold_key(chat_state("composing", type_="groupchat"))
    assert hold_key(chat_state("composing")) != hold_key(chat_state("composing", sender=CAROL))
    # markers: newest per kind; receipts: never merged
    assert hold_key(marker("displayed", "m1")) == hold_key(marker("displayed", "m2"))
    assert hold_key(marker("displayed", "m1")) != hold_key(marker("received", "m1"))
    assert hold_key(receipt("m1")) is None
    # a chat state that carries something else is held as it is
    both = parse(f"<message from='{ALICE}' type='chat'><active xmlns='{CHATSTATES}'/>"
                 f"<received xmlns='{RECEIPTS}' id='m1'/></message>")
    assert hold_key(both) is None
    assert hold_key(parse(f"<message from='{ALICE}' type='chat'><body> </body></message>")) is None
    # PEP: single-item nodes by node; others by item id; purges held as they are
    tune = "http://jabber.org/protocol/tune"
    assert hold_key(pep(tune, "a")) == hold_key(pep(tune, "b")) == hold_key(pep(tune, "a", retract=True))
    assert hold_key(pep(tune, "a")) != hold_key(pep(tune, "a", sender="carol@localhost"))
    bookmarks = "urn:xmpp:bookmarks:1"
    assert hold_key(pep(bookmarks, "room1@muc")) != hold_key(pep(bookmarks, "room2@muc"))
    assert hold_key(pep(bookmarks, "room1@muc")) == hold_key(pep(bookmarks, "room1@muc", retract=True))
    purge = parse(f"<message from='alice@localhost'><event xmlns='{EVENT}'><purge node='{tune}'/></event></message>")
    assert hold_key(purge) is None


# ---------------------------------------------------------------- the buffer
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def buffer(max_hold: float = 60.0, max_buffered: int = 100, **kwargs) -> tuple[CSIBuffer, FakeClock]:
    clock = FakeClock()
    return CSIBuffer(max_hold, max_buffered, clock=clock, **kwargs), clock


def push(buf: CSIBuffer, stanza: etree._Element) -> list[bytes]:
    return buf.push(stanza, serialize(stanza))


def test_held_stanzas_collapse_and_keep_each_senders_order():
    buf, _ = buffer()
    sequence = [presence(status="1"), chat_state("composing"), presence(sender=CAROL, status="c"),
                receipt("m1"), presence(status="2"), chat_state("paused"), receipt("m2"),
                marker("displayed", "m1"), marker("displayed", "m2"), presence(status="3")]
    for stanza in sequence:
        assert push(buf, stanza) == []
    assert len(buf) == 6 and buf.superseded == 4
    out = buf.flush()
    assert out == [serialize(s) for s in (presence(sender=CAROL, status="c"), receipt("m1"), chat_state("paused"),
                                          receipt("m2"), marker("displayed", "m2"), presence(status="3"))]
    assert len(buf) == 0 and buf.deadline is None and buf.flush() == []


def test_what_matters_goes_out_after_everything_held():
    buf, _ = buffer()
    push(buf, presence(status="away"))
    push(buf, chat_state("composing", sender=CAROL))
    push(buf, chat_state("composing"))
    message = body("hello")
    assert push(buf, message) == [serialize(presence(status="away")), serialize(chat_state("composing", sender=CAROL)),
                                  serialize(chat_state("composing")), serialize(message)]
    assert len(buf) == 0 and buf.deadline is None
    assert push(buf, iq()) == [serialize(iq())]   # nothing held: just the iq


def test_preserialised_data_counts_as_important():
    buf, _ = buffer()
    push(buf, presence())
    assert buf.push(None, b"<message>offline</message>") == [serialize(presence()), b"<message>offline</message>"]


def test_deadline_runs_from_the_first_held_stanza_and_survives_collapsing():
    buf, clock = buffer(max_hold=10.0)
    assert buf.deadline is None
    push(buf, presence(status="1"))
    assert buf.deadline == 110.0
    clock.now = 105.0
    push(buf, presence(status="2"))      # replaces the only held stanza, yet the wait is not reset
    assert buf.deadline == 110.0 and len(buf) == 1
    clock.now = 110.0                    # the timer is late: the next push sends everything
    assert push(buf, chat_state("composing")) == [serialize(presence(status="2")), serialize(chat_state("composing"))]
    assert buf.deadline is None
    clock.now = 111.0
    push(buf, presence())
    assert buf.deadline == 121.0


def test_a_full_buffer_sends_everything():
    buf, _ = buffer(max_buffered=3)
    for n in range(3):
        assert push(buf, receipt(f"m{n}")) == []
    assert push(buf, presence()) == [serialize(receipt(f"m{n}")) for n in range(3)] + [serialize(presence())]
    assert len(buf) == 0
    for n in range(3):
        push(buf, presence(status=str(n)))     # collapsing does not fill it
    assert len(buf) == 1


def test_the_byte_limit_sends_everything():
    buf, _ = buffer(max_bytes=300)
    first, second = presence(status="x" * 100), presence(sender=CAROL, status="y" * 100)
    assert push(buf, first) == []
    assert push(buf, second) == [serialize(first), serialize(second)]


# ---------------------------------------------------------------- the module, with Twisted's Clock
class FakeConnection:
    address = "192.0.2.1:40000"

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close_stream(self, condition=None, text=None, reason="", app_error=b"") -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def take(self) -> list[bytes]:
        written, self.written = self.written, []
        return written


def module_setup():
    server = Server(default_config(), storage=None)
    clock = Clock()
    csi = ClientStateIndication(server, clock)
    connection = FakeConnection()
    session = server.bind(connection, "bob", "phone")
    return server, csi, clock, session, connection


def nonza(server: Server, session, tag: str) -> None:
    server.nonza_handler(tag)(session, etree.Element(tag))


def test_module_registers_feature_and_nonzas():
    server, csi, _, session, _ = module_setup()
    assert [etree.tostring(e) for e in server.stream_features()] == [b'<csi xmlns="urn:xmpp:csi:0"/>']
    assert server.nonza_handler(ACTIVE) is not None and server.nonza_handler(INACTIVE) is not None
    assert not csi.is_inactive(session) and session.outbound_filter is None


def test_module_holds_while_inactive_and_flushes_on_active():
    server, csi, clock, session, connection = module_setup()
    nonza(server, session, INACTIVE)
    assert csi.is_inactive(session) and session.outbound_filter is not None
    nonza(server, session, INACTIVE)                 # twice is once
    session.deliver(presence(status="1"))
    session.deliver(chat_state("composing"))
    session.deliver(presence(status="2"))
    assert connection.written == [] and csi.held(session) == 2
    assert len(clock.getDelayedCalls()) == 1
    nonza(server, session, ACTIVE)
    assert connection.take() == [serialize(chat_state("composing")), serialize(presence(status="2"))]
    assert session.outbound_filter is None and not csi.is_inactive(session)
    assert clock.getDelayedCalls() == []
    session.deliver(presence(status="3"))           # active again: straight through
    assert connection.take() == [serialize(presence(status="3"))]
    nonza(server, session, ACTIVE)                   # active when active: nothing happens
    assert connection.written == []


def test_module_timer_flushes_after_max_hold_and_rearms():
    server, csi, clock, session, connection = module_setup()
    nonza(server, session, INACTIVE)
    session.deliver(presence(status="1"))
    clock.advance(30)
    session.deliver(chat_state("composing"))
    clock.advance(29)
    assert connection.written == []
    clock.advance(1)
    assert connection.take() == [serialize(presence(status="1")), serialize(chat_state("composing"))]
    assert clock.getDelayedCalls() == [] and csi.is_inactive(session)
    session.deliver(presence(status="2"))           # a new wait starts with the next held stanza
    [timer] = clock.getDelayedCalls()
    assert timer.getTime() == clock.seconds() + 60
    session.deliver(body("hi"))                      # an urgent stanza empties the buffer: the timer goes
    assert connection.take() == [serialize(presence(status="2")), serialize(body("hi"))]
    assert clock.getDelayedCalls() == []


def test_module_preserialised_delivery_flushes():
    server, csi, clock, session, connection = module_setup()
    nonza(server, session, INACTIVE)
    session.deliver(presence())
    session.deliver_stored(b"<message from='x@localhost'><body>stored</body></message>")
    assert connection.take() == [serialize(presence()), b"<message from='x@localhost'><body>stored</body></message>"]


def test_module_flush_for_stream_management_keeps_the_session_inactive():
    server, csi, clock, session, connection = module_setup()
    nonza(server, session, INACTIVE)
    session.deliver(presence())
    assert csi.flush(session) == 1
    assert connection.take() == [serialize(presence())] and clock.getDelayedCalls() == []
    assert csi.is_inactive(session)
    session.deliver(presence(status="later"))
    assert connection.written == []


def test_session_end_drops_the_buffer_and_the_timer():
    server, csi, clock, session, connection = module_setup()
    nonza(server, session, INACTIVE)
    session.deliver(presence())
    server.unbind(session)
    assert not csi.is_inactive(session) and session.outbound_filter is None
    assert clock.getDelayedCalls() == []
    clock.advance(120)
    assert connection.written == []


# ---------------------------------------------------------------- real clients
INACTIVE_XML = "<inactive xmlns='urn:xmpp:csi:0'/>"
ACTIVE_XML = "<active xmlns='urn:xmpp:csi:0'/>"


def recording(client: Client) -> Client:
    """Every message (bodiless ones too), presence and iq the client receives, in arrival order."""
    client.arrivals = asyncio.Queue()
    for kind in ("message", "presence", "iq"):
        client.register_handler(Callback(f"csi test {kind}", MatchXPath(f"{{{CLIENT}}}{kind}"),
                                         client.arrivals.put_nowait))
    return client


async def drain(client: Client, seconds: float = 0.5) -> list:
    got = []
    while True:
        try:
            got.append(await asyncio.wait_for(client.arrivals.get(), seconds))
        except asyncio.TimeoutError:
            return got


async def settled(client: Client) -> None:
    """A ping round trip: the server has handled everything the client sent before it."""
    await client.plugin["xep_0199"].ping(jid="localhost", timeout=10)


def from_alice(stanzas: list, alice: Client) -> list[str]:
    """A short description of each stanza from Alice: presence/<status>, chatstate/<state>, body/<text>."""
    out = []
    for stanza in stanzas:
        if stanza["from"] != alice.boundjid:
            continue
        if stanza.name == "presence":
            out.append(f"presence/{stanza['status']}")
        elif stanza.name == "iq":
            out.append(f"iq/{stanza['type']}")
        elif stanza["body"]:
            out.append(f"body/{stanza['body']}")
        else:
            states = [child.tag.split("}")[1] for child in stanza.xml if child.tag.startswith(f"{{{CHATSTATES}}}")]
            out.append(f"chatstate/{','.join(states)}")
    return out


def send_chat_state(alice: Client, to: str, state: str) -> None:
    message = alice.make_message(mto=to, mtype="chat")
    message.xml.append(message.xml.makeelement(f"{{{CHATSTATES}}}{state}", {}))
    message.send()


async def pair(server, account_or_users) -> tuple[Client, Client]:
    (alice, pa), (bob, pb) = account_or_users
    b = recording(Client(server, bob, pb))
    await b.login()
    b.send_presence()
    a = await Client(server, alice, pa).login()
    a.send_presence()
    await settled(a)
    await settled(b)
    await drain(b)        # Bob's own presence echo
    return a, b


async def go_inactive(b: Client) -> None:
    b.send_raw(INACTIVE_XML)
    await settled(b)      # the nonza is handled before the ping that follows it
    await drain(b, 0.1)   # the pong itself


def test_inactive_client_gets_presence_and_chat_states_on_active_newest_only(xmppd, account):
    users = account("alice"), account("bob")

    async def scenario():
        a, b = await pair(xmppd, users)
        await go_inactive(b)
        bob_full = b.boundjid.full
        a.send_presence(pto=bob_full, pstatus="one")
        send_chat_state(a, bob_full, "composing")
        a.send_presence(pto=bob_full, pstatus="two")
        send_chat_state(a, bob_full, "paused")
        a.send_presence(pto=bob_full, pstatus="three")
        await settled(a)  # all of it reached Bob's session
        assert from_alice(await drain(b), a) == []
        b.send_raw(ACTIVE_XML)
        await settled(b)
        got = await drain(b)
        assert from_alice(got, a) == ["chatstate/paused", "presence/three"]
        # XEP-0352 §5.1 in-order processing: what was held comes before the answer to the next request
        assert got[-1].name == "iq" and got[-1]["type"] == "result" and got[-1]["from"] == "localhost"
        send_chat_state(a, bob_full, "active")      # active again: nothing waits
        assert from_alice([await asyncio.wait_for(b.arrivals.get(), 10)], a) == ["chatstate/active"]
        await a.close()
        await b.close()

    run(scenario())


def test_a_message_with_a_body_goes_out_at_once_after_what_was_held(xmppd, account):
    users = account("alice"), account("bob")

    async def scenario():
        a, b = await pair(xmppd, users)
        await go_inactive(b)
        bob_full = b.boundjid.full
        a.send_presence(pto=bob_full, pstatus="away")
        send_chat_state(a, bob_full, "composing")
        a.send_message(mto=bob_full, mbody="hello", mtype="chat")
        got = [await asyncio.wait_for(b.arrivals.get(), 30) for _ in range(3)]
        assert from_alice(got, a) == ["presence/away", "chatstate/composing", "body/hello"]
        send_chat_state(a, bob_full, "paused")      # still inactive: held again
        await settled(a)
        assert from_alice(await drain(b), a) == []
        await a.close()
        await b.close()

    run(scenario())


def test_an_iq_is_never_held(xmppd, account):
    users = account("alice"), account("bob")

    async def scenario():
        a, b = await pair(xmppd, users)
        await go_inactive(b)
        bob_full = b.boundjid.full
        a.send_presence(pto=bob_full, pstatus="held")
        await a.plugin["xep_0199"].ping(jid=bob_full, timeout=30)   # Bob's client answers while inactive
        assert from_alice(await drain(b), a) == ["presence/held", "iq/get"]
        await a.close()
        await b.close()

    run(scenario())


def test_csi_stream_feature_is_advertised(xmppd, account):
    jid, password = account("bob")

    async def scenario():
        client = Client(xmppd, jid, password)
        client.register_plugin("xep_0352")
        enabled = asyncio.get_running_loop().create_future()
        client.add_event_handler("csi_enabled", lambda _: enabled.done() or enabled.set_result(True))
        await client.login()
        assert await asyncio.wait_for(enabled, 10)
        assert client.plugin["xep_0352"].enabled
        await client.close()

    run(scenario())


def test_max_hold_sends_what_was_held(request, tmp_path_factory, certificate):
    server = start_xmppd(request, tmp_path_factory, certificate, "sqlite", "[csi]\nmax_hold = 1.0\n")
    users = [(server.add_user(name, f"{name}-password"), f"{name}-password") for name in ("alice", "bob")]

    async def scenario():
        a, b = await pair(server, users)
        await go_inactive(b)
        a.send_presence(pto=b.boundjid.full, pstatus="eventually")
        send_chat_state(a, b.boundjid.full, "composing")
        await settled(a)
        got = [await asyncio.wait_for(b.arrivals.get(), 30) for _ in range(2)]   # Bob does nothing meanwhile
        assert from_alice(got, a) == ["presence/eventually", "chatstate/composing"]
        await a.close()
        await b.close()

    run(scenario())
