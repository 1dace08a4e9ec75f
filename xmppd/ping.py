"""XEP-0199: answer pings addressed to the server or to an account.

A ping to an account is answered by the server on its behalf (RFC 6121
§8.5.2.1.3), but only to the account's owner: a pong to anyone else would
tell them that the account exists. The server's own pings to idle clients
are sent by the connection (c2s.py), which drops a client that stays silent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lxml import etree

from .jid import JID
from .router import require_owner
from .server import SCOPE_ACCOUNT, SCOPE_SERVER
from .stanza import StanzaError, iq_result, qname

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

NS_PING = "urn:xmpp:ping"


def answer(iq: etree._Element, origin: "Session | None", to: JID) -> etree._Element:
    require_owner(origin, to)
    if iq.get("type") != "get":
        raise StanzaError("bad-request", "a ping is an iq get")
    return iq_result(iq)


def setup(server: "Server") -> None:
    server.add_feature(NS_PING, scopes=(SCOPE_SERVER,))
    server.add_iq_handler(qname(NS_PING, "ping"), answer, scopes=(SCOPE_SERVER, SCOPE_ACCOUNT))
