"""The push app server hosted in xmppd's own process (module "appserver").

The same AppServer class that runs on its own as a XEP-0114 component
(external.py) is given xmppd's router as its transport: the router hands it
every stanza addressed to [appserver] domain (push.<domain> by default), and
what it sends goes back through the router. Registrations live in xmppd's
storage. Apps and their credentials come from [appserver.apps.NAME].
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lxml import etree

from ..aio import run_soon
from ..jid import JID
from .component import AppServer

if TYPE_CHECKING:
    from ..server import Server

log = logging.getLogger("xmppd.appserver")


class HostedAppServer:
    def __init__(self, server: "Server") -> None:
        settings = server.config.appserver
        self.server = server
        self.domain = settings.domain or f"push.{server.domain}"
        self.app_server = AppServer.from_settings(self.domain, self._send, server.storage, settings)
        server.add_component(self.domain, self.app_server.handle)
        # A deleted account's devices must not stay registered here.
        server.on("account-deleted", lambda username: self.app_server.forget(f"{username}@{server.domain}"))
        self.app_server.start()
        log.info("push app server on %s: %s", self.domain,
                 ", ".join(f"{app.name} ({app.type})" for app in settings.apps) or "no apps configured")

    def _send(self, stanza: etree._Element) -> None:
        pending = self.server.router.route(stanza, JID.parse(stanza.get("to")))
        if pending is not None:
            run_soon(pending, f"a stanza from {self.domain}")

    async def close(self) -> None:
        await self.app_server.close()


def setup(server: "Server") -> HostedAppServer:
    return HostedAppServer(server)
