"""XEP-0215 External Service Discovery (module "extdisco"): the STUN and TURN servers for calls.

A client about to place a call (Conversations, Monal, Dino) asks its server which
STUN and TURN servers to use. The list comes from [[extdisco.services]]. A TURN
server run with coturn's `use-auth-secret` shares a secret with xmppd, and each
answer carries fresh credentials in coturn's "TURN REST API" scheme:

    username = "<unix time when they expire>:<user@domain>"
    password = base64(HMAC-SHA1(secret, username))

coturn recomputes the password from the username and refuses it after that time,
so nothing is stored and credentials cannot outlive their ttl. Only logged-in
local accounts are answered: the relay is not for strangers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from lxml import etree

from .config import ExternalService
from .jid import JID
from .stanza import StanzaError, iq_result, qname

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

NS_EXTDISCO = "urn:xmpp:extdisco:2"


def turn_credentials(secret: str, user: str, expires: int) -> tuple[str, str]:
    """coturn's REST API credentials (use-auth-secret / static-auth-secret) valid until `expires`."""
    username = f"{expires}:{user}"
    password = base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    return username, password


def service_element(service: ExternalService, user: str, now: float) -> etree._Element:
    """One <service/>, with credentials (and restricted='1') when the service has a secret."""
    element = etree.Element(qname(NS_EXTDISCO, "service"), nsmap={None: NS_EXTDISCO})
    element.set("type", service.type)
    element.set("host", service.host)
    element.set("port", str(service.port))
    element.set("transport", service.transport)
    if service.name:
        element.set("name", service.name)
    if service.secret:
        expires = int(now) + service.ttl
        username, password = turn_credentials(service.secret, user, expires)
        element.set("username", username)
        element.set("password", password)
        element.set("expires", datetime.fromtimestamp(expires, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        element.set("restricted", "1")
    return element


class ExternalServiceDiscovery:
    def __init__(self, server: "Server", clock: Callable[[], float] = time.time) -> None:
        self.services: tuple[ExternalService, ...] = server.config.extdisco.services
        self.clock = clock
        server.add_feature(NS_EXTDISCO)
        server.add_iq_handler(qname(NS_EXTDISCO, "services"), self.list_services)
        server.add_iq_handler(qname(NS_EXTDISCO, "credentials"), self.credentials)

    def list_services(self, iq: etree._Element, origin: "Session | None", to: JID) -> etree._Element:
        """§3.1/3.2: every service, or those of the requested type."""
        user = _local_user(iq, origin)
        wanted = iq[0].get("type")
        answer = etree.Element(qname(NS_EXTDISCO, "services"), nsmap={None: NS_EXTDISCO})
        if wanted:
            answer.set("type", wanted)
        now = self.clock()
        for service in self.services:
            if not wanted or service.type == wanted:
                answer.append(service_element(service, user, now))
        return iq_result(iq, answer)

    def credentials(self, iq: etree._Element, origin: "Session | None", to: JID) -> etree._Element:
        """§3.3: fresh credentials for the service(s) at host and type (and port, if given)."""
        user = _local_user(iq, origin)
        asked = iq[0].find(qname(NS_EXTDISCO, "service"))
        if asked is None or not asked.get("host") or not asked.get("type"):
            raise StanzaError("bad-request", "name the service with <service host='…' type='…'/>")
        port = asked.get("port")
        matches = [s for s in self.services if s.secret and s.host == asked.get("host") and s.type == asked.get("type")
                   and (port is None or str(s.port) == port)]
        if not matches:
            raise StanzaError("item-not-found", "this server has no credentials for that service")
        answer = etree.Element(qname(NS_EXTDISCO, "credentials"), nsmap={None: NS_EXTDISCO})
        now = self.clock()
        for service in matches:
            answer.append(service_element(service, user, now))
        return iq_result(iq, answer)


def _local_user(iq: etree._Element, origin: "Session | None") -> str:
    """The bare JID of the logged-in local account asking; others are refused (XEP-0215 §3: forbidden)."""
    if iq.get("type") != "get":
        raise StanzaError("bad-request", "external services are read with an iq get")
    if origin is None:
        raise StanzaError("forbidden", "only accounts of this server may use its STUN and TURN services")
    return origin.bare


def setup(server: "Server") -> ExternalServiceDiscovery:
    return ExternalServiceDiscovery(server)
