"""XEP-0092: the server tells its software name and version when asked.

The operating system is left out unless [version] show_os is on: naming the
kernel release tells an attacker which exploits to try.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING

from lxml import etree

from . import __version__
from .jid import JID
from .server import SCOPE_SERVER
from .stanza import StanzaError, child, iq_result, qname

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

NS_VERSION = "jabber:iq:version"
SOFTWARE_NAME = "xmppd"


class Version:
    def __init__(self, server: "Server") -> None:
        # Computed once: the answer cannot change while the process runs.
        self.os = f"{platform.system()} {platform.release()}".strip() if server.config.version.show_os else None
        server.add_feature(NS_VERSION, scopes=(SCOPE_SERVER,))
        server.add_iq_handler(qname(NS_VERSION, "query"), self.answer, scopes=(SCOPE_SERVER,))

    def answer(self, iq: etree._Element, origin: "Session | None", to: JID) -> etree._Element:
        if iq.get("type") != "get":
            raise StanzaError("bad-request", "the software version is read-only")
        query = etree.Element(qname(NS_VERSION, "query"), nsmap={None: NS_VERSION})
        child(query, NS_VERSION, "name", SOFTWARE_NAME)
        child(query, NS_VERSION, "version", __version__)
        if self.os:
            child(query, NS_VERSION, "os", self.os)
        return iq_result(iq, query)


def setup(server: "Server") -> Version:
    return Version(server)
