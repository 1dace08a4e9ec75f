"""The push app server as an XMPP component: registrations, publishes, rate limit, providers.

``AppServer`` is the whole of the XEP-0357 "app server" except the sockets. It is
given its domain (push.example.org), a ``send(element)`` callable and a store; a
transport hands it every stanza addressed to the domain with ``handle(element)``.
In xmppd the transport is the router (the app server is hosted in-process on
push.<domain>); on its own it is external.py, a XEP-0114 component connection to
any XMPP server. The class never knows which one carries it; it builds its
stanzas in the namespace it is told (jabber:client in-process,
jabber:component:accept on a component stream).

Two ways to register a device, for the two families of clients:

* **Conversations / p2** (also Siskin, Snikket iOS): XEP-0050 ad-hoc commands
  ``register-push-fcm`` and ``register-push-apns`` with the fields ``token``,
  ``android-id`` or ``device-id`` and optionally ``muc``; the command completes
  with a form holding ``jid``, ``node`` and ``secret``, which the client then
  passes to its server's <enable/> (the secret in the publish-options).
  Registering the same device again (same account, device id and room) only
  replaces the token: node and secret stay, so an earlier <enable/> stays valid.
  ``unregister-push-fcm`` / ``-apns`` (``android-id``/``device-id``, optionally
  ``muc``) delete. The app is the operator's default APNs or FCM app. Every
  publish to such a node must carry the secret (compared in constant time) and
  come from the account (or the room) that registered it.
* **Monal / fpush**: no registration. The client enables push on its server with
  node = its device token and the publish-option ``pushModule`` naming the app
  (the operator maps module names to apps; a publish without ``pushModule``
  looks for the module named "default"). There is no secret.

A publish (XEP-0357 §7) becomes one ``providers.Notification``: the kind from the
summary's ``call-action`` (propose: a call, retract: the end of one, otherwise a
message), the counts, sender and body when the XMPP server included them, and the
encryption key when the client gave one (``encrypt-key``/``encrypt-alg`` in the
publish-options). The answer waits for the provider:

=================  ==============================================================
provider says      the publish is answered with
=================  ==============================================================
delivered          a result (only now: never before the provider accepted it)
unregistered       <item-not-found/> (cancel), after deleting the registration;
                   the XMPP server disables it at once. An APNs 410 whose
                   timestamp is older than the registration's token is not
                   believed: <internal-server-error/>, the registration stays
retry              <resource-constraint/> type wait: the XMPP server retries
rejected           <internal-server-error/> (cancel): the XMPP server counts a strike
=================  ==============================================================

An unknown node, a wrong or missing secret, a publisher that is not the owner,
and an app the operator removed are all <item-not-found/>, the same answer for
each, so that nobody learns which nodes exist.

**Rate limit.** Each device (app and token) has a token bucket: ``rate_limit``
pushes per second with bursts of ``rate_burst``. A push over the limit waits for
its turn, it is never dropped; while it waits, a newer publish for the same
account on the device replaces its content (same collapse id: the device would
show only the newer one anyway), and both publishes are answered with the
outcome of the one push that carries them. At most ``max_waiting`` publishes wait
per device, and none longer than ``max_delay`` seconds; past that the publish is
answered <resource-constraint/> wait (the XMPP server retries later: still
nothing lost). Calls (and the end of a call) never wait.

**Bad input.** Everything a sender can make it hold is bounded: field sizes,
registrations per owner (the least recently used go), publishes waiting per
device, stanzas in progress. Malformed requests get the RFC 6120 error that
fits; errors and results are never answered; a failure while handling one
stanza answers that stanza with <internal-server-error/> and is logged.

**Operator view.** ``metrics`` (an ``AppServerMetrics``) counts pushes by
provider and outcome, publishes by answer, registrations made and removed, and
the latency from a publish arriving to the provider's answer;
``registration_counts()`` reads the number of registrations per app from storage.
Every provider failure is logged with its reason (tokens never appear in the log,
only the first characters of the node).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from lxml import etree

from ..histogram import Histogram
from ..jid import JID, InvalidJID
from ..dataforms import NS_DATA, form_type
from ..stanza import ERROR_TYPES, NS_STANZAS, StanzaError, qname
from ..storage.base import Storage, StorageError
from ..storage.models import AppServerRegistration
from .encryption import ALGORITHMS, NS_ENCRYPT, key_from_fields
from .providers import Notification, Provider, Result

log = logging.getLogger("xmppd.appserver")

NS_CLIENT = "jabber:client"
NS_COMPONENT = "jabber:component:accept"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUSH = "urn:xmpp:push:0"
NS_PING = "urn:xmpp:ping"
SUMMARY = "urn:xmpp:push:summary"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"

# Ad-hoc command node -> the kind of app it is for.
REGISTER_COMMANDS = {"register-push-apns": "apns", "register-push-fcm": "fcm"}
UNREGISTER_COMMANDS = {"unregister-push-apns": "apns", "unregister-push-fcm": "fcm"}
COMMAND_NAMES = {
    "register-push-apns": "Register an iOS device (APNs token) for push notifications",
    "register-push-fcm": "Register an Android device (FCM token) for push notifications",
    "unregister-push-apns": "Unregister an iOS device from push notifications",
    "unregister-push-fcm": "Unregister an Android device from push notifications",
}

# XEP-0353 actions in the summary's call-action field (an xmppd extension): what the push is.
CALL_KINDS = {"propose": "call", "retract": "call-ended", "reject": "call-ended", "accept": "call-ended",
              "proceed": "call-ended", "finish": "call-ended"}

# What a sender can make the app server keep or handle (invariant 4: bad input costs the sender).
MAX_TOKEN = 4096            # characters of a device token (FCM's are about 160, APNs' 64)
MAX_DEVICE_ID = 256
MAX_NODE = 4096             # a Monal node is a token
MAX_FIELD = 4096            # characters of any other form value read
MAX_FIELDS = 64             # fields of one form read
MAX_BODY = 1024             # characters of last-message-body passed on (providers cut further)
MAX_JID = 3071              # RFC 7622: three parts of at most 1023 bytes
MAX_COUNT = 10 ** 9         # a count above this is not believed

# An APNs 410 timestamp this much older than the token's registration is not believed (clock skew margin).
UNREGISTERED_MARGIN = 60.0
# last_used_at is written at most this often per node (seconds of the clock given to AppServer).
TOUCH_INTERVAL = 3600.0
# How long a registration read from storage is trusted without reading it again. Every change this
# process makes drops the node from the cache at once; the limit only bounds how long a change made by
# another process sharing the database (a second app server instance) can go unseen.
REGISTRATION_CACHE_SECONDS = 60.0
MAX_CACHED_NODES = 100_000


def p2_account_hash(owner: str, device_id: str) -> str:
    """p2's device hash, sha1_hex(bare JID + NUL + device id): Conversations compares the FCM ``account``
    field with it to know which account a push is for."""
    return hashlib.sha1(f"{owner}\0{device_id}".encode()).hexdigest()


def collapse_id_for(registration: AppServerRegistration | None, publisher: str, node: str) -> str:
    """One value per account and device (providers.py sends it as ``account`` and as the collapse id)."""
    if registration is not None and registration.secret is not None and registration.device_id is not None:
        return p2_account_hash(registration.owner, registration.device_id)
    return hashlib.sha256(f"{publisher}\0{node}".encode()).hexdigest()[:32]


# -------------------------------------------------------------------------------- metrics

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class AppServerMetrics:
    """Counters for the metrics endpoint; snapshot() gives them as plain data."""

    pushes: collections.Counter = field(default_factory=collections.Counter)      # (provider, outcome)
    app_pushes: collections.Counter = field(default_factory=collections.Counter)  # (app, outcome)
    publishes: collections.Counter = field(default_factory=collections.Counter)   # answer -> publishes
    latency: dict[str, Histogram] = field(default_factory=dict)                   # provider -> seconds
    registered: int = 0       # p2-style registrations made or renewed
    unregistered: int = 0     # removed by the client (unregister commands)
    dead: int = 0             # removed because the provider said the token is dead
    evicted: int = 0          # removed because the owner had too many
    expired: int = 0          # removed unused
    delayed: int = 0          # publishes that waited for the device's rate limit
    merged: int = 0           # publishes answered by a push that carried a newer one for the same account

    def snapshot(self) -> dict[str, Any]:
        return {
            "pushes": {f"{provider}/{outcome}": n for (provider, outcome), n in sorted(self.pushes.items())},
            "app_pushes": {f"{app}/{outcome}": n for (app, outcome), n in sorted(self.app_pushes.items())},
            "publishes": dict(sorted(self.publishes.items())),
            "latency": {provider: {"buckets": h.cumulative(), "sum": h.total, "count": h.count}
                        for provider, h in sorted(self.latency.items())},
            "registrations": {"registered": self.registered, "unregistered": self.unregistered,
                              "dead": self.dead, "evicted": self.evicted, "expired": self.expired},
            "delayed": self.delayed,
            "merged": self.merged,
        }


# -------------------------------------------------------------------------------- rate limit


class _Shutdown(Exception):
    """The app server is closing: a waiting publish is answered 'wait'."""


@dataclass(slots=True)
class _Waiting:
    """Publishes for one account on a device (one collapse id) waiting for the device's next push."""

    provider: Provider
    notification: Notification
    futures: list[asyncio.Future]


@dataclass(slots=True)
class _Device:
    """The rate limit of one device: a token bucket and the publishes waiting for a token, oldest first."""

    tokens: float
    stamp: float
    queue: "collections.OrderedDict[str, _Waiting]" = field(default_factory=collections.OrderedDict)
    task: asyncio.Task | None = None

    def refill(self, now: float, rate: float, burst: int) -> None:
        if now > self.stamp:
            self.tokens = min(float(burst), self.tokens + (now - self.stamp) * rate)
            self.stamp = now

    @property
    def waiting(self) -> int:
        return sum(len(w.futures) for w in self.queue.values())


# -------------------------------------------------------------------------------- the component


class AppServer:
    """The XEP-0357 app server component (see the module docstring)."""

    def __init__(
        self,
        domain: str,
        send: Callable[[etree._Element], None],
        storage: Storage,
        providers: Mapping[str, Provider],
        *,
        default_apns_app: str | None = None,
        default_fcm_app: str | None = None,
        push_modules: Mapping[str, str] | None = None,
        rate_limit: float = 1.0,
        rate_burst: int = 5,
        registration_expiry: float = 90.0,
        max_per_owner: int = 20,
        max_waiting: int = 32,
        max_delay: float = 20.0,
        max_in_flight: int = 10000,
        stanza_ns: str = NS_CLIENT,
        name: str = "Push notifications",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        sweep_interval: float = 3600.0,
    ) -> None:
        """
        domain: the component's own JID (push.example.org).
        send: called with every stanza the component sends (already addressed).
        providers: app name -> Provider; the component closes them in close().
        default_apns_app / default_fcm_app: the apps of register-push-apns / -fcm (None refuses them).
        push_modules: Monal/fpush pushModule name -> app name.
        rate_limit, rate_burst: pushes per second per device, and the burst allowed at once.
        registration_expiry: days after which a registration nobody pushed to is forgotten.
        max_per_owner: p2-style registrations kept per bare JID (the least recently used go).
        max_waiting, max_delay: publishes that may wait per device, and for how long at most.
        max_in_flight: stanzas handled at once; beyond, requests are answered 'wait'.
        stanza_ns: jabber:client (hosted in xmppd) or jabber:component:accept (XEP-0114).
        clock, sleep: the rate limit's time (tests pass fakes).
        """
        self.domain = JID.parse(domain).domain
        self._send_raw = send
        self.storage = storage
        self.providers = dict(providers)
        self.default_apps = {"apns": default_apns_app or None, "fcm": default_fcm_app or None}
        self.push_modules = dict(push_modules or {})
        for kind, app in self.default_apps.items():
            if app is not None and app not in self.providers:
                raise ValueError(f"the default {kind} app {app!r} is not one of the apps ({', '.join(self.providers)})")
            if app is not None and getattr(self.providers[app], "name", kind) != kind:
                raise ValueError(f"the default {kind} app {app!r} is an {self.providers[app].name} app")
        for module, app in self.push_modules.items():
            if app not in self.providers:
                raise ValueError(f"pushModule {module!r} names {app!r}, which is not one of the apps")
        if rate_limit <= 0 or rate_burst < 1:
            raise ValueError("rate_limit must be positive and rate_burst at least 1")
        self.rate_limit = float(rate_limit)
        self.rate_burst = int(rate_burst)
        self.registration_expiry = timedelta(days=registration_expiry)
        self.max_per_owner = max_per_owner
        self.max_waiting = max_waiting
        self.max_delay = max_delay
        self.max_in_flight = max_in_flight
        self.ns = stanza_ns
        self.name = name
        self.metrics = AppServerMetrics()
        self._clock = clock
        self._sleep = sleep
        self._sweep_interval = sweep_interval
        self._iq, self._message, self._presence = (qname(stanza_ns, "iq"), qname(stanza_ns, "message"),
                                                   qname(stanza_ns, "presence"))
        self._devices: dict[tuple[str, str], _Device] = {}
        self._last_prune = clock()
        self._touched: dict[str, float] = {}   # node -> clock() of the last last_used_at written
        # node -> (clock() when read, the registration or None): a push needs no storage round trip.
        self._registrations: dict[str, tuple[float, AppServerRegistration | None]] = {}
        self._invalidations = 0   # changes so far: a read that overlapped one is not cached
        self._tasks: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None
        self._closed = False

    @classmethod
    def from_settings(cls, domain: str, send: Callable[[etree._Element], None], storage: Storage, settings: Any,
                      *, stanza_ns: str = NS_CLIENT) -> "AppServer":
        """The app server an [appserver] section describes (config.AppServerConfig, hosted or standalone),
        with its apps' providers."""
        return cls(domain, send, storage, providers_from_config(settings.apps),
                   default_apns_app=settings.default_apns_app or None,
                   default_fcm_app=settings.default_fcm_app or None,
                   push_modules=push_modules_of(settings.apps),
                   rate_limit=settings.rate_limit, rate_burst=settings.rate_burst,
                   registration_expiry=settings.registration_expiry, stanza_ns=stanza_ns)

    # ------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Start forgetting unused registrations (every sweep_interval); call in the running loop."""
        if self._sweeper is None and not self._closed:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def close(self, timeout: float = 5.0, *, close_providers: bool = True) -> None:
        """Stop: waiting publishes are answered 'wait', pushes under way get `timeout` seconds to finish,
        then the providers are closed."""
        if self._closed:
            return
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for device in self._devices.values():
            if device.task is not None:
                device.task.cancel()
            for waiting in device.queue.values():
                for future in waiting.futures:
                    if not future.done():
                        future.set_exception(_Shutdown())
            device.queue.clear()
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if close_providers:
            for provider in {id(p): p for p in self.providers.values()}.values():
                try:
                    await provider.close()
                except Exception:
                    log.exception("closing the %s provider failed", getattr(provider, "name", "?"))

    async def expire(self, now: datetime | None = None) -> int:
        """Forget registrations unused for registration_expiry; returns how many went."""
        now = now or datetime.now(timezone.utc)
        gone = await self.storage.appserver_expire(now - self.registration_expiry)
        for registration in gone:
            self._invalidate(registration.node)
        if gone:
            self.metrics.expired += len(gone)
            log.info("forgot %d push registrations unused for %s days", len(gone), self.registration_expiry.days)
        return len(gone)

    async def forget(self, owner: str) -> int:
        """Delete every registration of a bare JID (an account that was deleted); returns how many went."""
        gone = await self.storage.appserver_delete_owner(owner)
        for registration in gone:
            self._invalidate(registration.node)
        self.metrics.unregistered += len(gone)
        return len(gone)

    async def registration_counts(self) -> dict[str, int]:
        """Registrations per app, from storage (for the metrics endpoint)."""
        return await self.storage.count_appserver_registrations()

    async def _sweep_loop(self) -> None:
        while True:
            try:
                await self.expire()
            except StorageError as error:
                log.warning("forgetting unused push registrations failed: %s", error)
            except Exception:
                log.exception("forgetting unused push registrations failed")
            await asyncio.sleep(self._sweep_interval)

    # ------------------------------------------------------------ stanzas in
    def handle(self, stanza: etree._Element) -> None:
        """Take one stanza addressed to the component's domain (or a JID at it). Never raises."""
        try:
            self._dispatch(stanza)
        except Exception:
            log.exception("handling a stanza from %s failed", stanza.get("from"))

    def _dispatch(self, stanza: etree._Element) -> None:
        tag = stanza.tag
        kind = stanza.get("type")
        if tag == self._iq:
            if kind in ("result", "error"):
                return   # the component asks nothing, so no answer is awaited
            if not stanza.get("from"):
                return   # nowhere to answer (a transport always stamps 'from')
            if kind not in ("get", "set") or not stanza.get("id") or len(stanza) != 1:
                self._send(self._error(stanza, "bad-request", "an iq get or set needs an id and one payload"))
                return
            if not self._to_us(stanza):
                self._send(self._error(stanza, "service-unavailable"))
                return
            self._iq_request(stanza, kind, stanza[0])
        elif tag == self._message:
            if kind != "error" and stanza.get("from"):
                self._send(self._error(stanza, "service-unavailable", "this service takes no messages"))
        # Presence (and anything else) is ignored: the service has no presence of its own.

    def _to_us(self, stanza: etree._Element) -> bool:
        try:
            to = JID.parse(stanza.get("to") or "")
        except InvalidJID:
            return False
        return to.local is None and to.resource is None and to.domain == self.domain

    def _iq_request(self, iq: etree._Element, kind: str, payload: etree._Element) -> None:
        tag = payload.tag
        if tag == qname(NS_DISCO_INFO, "query") and kind == "get":
            self._send(self._disco_info(iq, payload))
        elif tag == qname(NS_DISCO_ITEMS, "query") and kind == "get":
            self._send(self._disco_items(iq, payload))
        elif tag == qname(NS_PING, "ping") and kind == "get":
            self._send(self._result(iq))
        elif tag == qname(NS_COMMANDS, "command") and kind == "set":
            self._spawn(iq, self._command)
        elif tag == qname(NS_PUBSUB, "pubsub") and kind == "set":
            self._spawn(iq, self._publish)
        elif tag == qname(NS_PUBSUB, "pubsub"):
            self._send(self._error(iq, "feature-not-implemented", "this service only takes XEP-0357 publishes"))
        else:
            self._send(self._error(iq, "service-unavailable"))

    def _spawn(self, iq: etree._Element, handler: Callable[[etree._Element], Awaitable[etree._Element | None]]) -> None:
        if self._closed:
            self._send(self._error(iq, "resource-constraint", "the push service is restarting", "wait"))
            return
        if len(self._tasks) >= self.max_in_flight:
            self._send(self._error(iq, "resource-constraint", "the push service is busy", "wait"))
            return
        task = asyncio.get_running_loop().create_task(self._guarded(iq, handler))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, iq: etree._Element, handler) -> None:
        try:
            reply = await handler(iq)
        except StanzaError as error:
            reply = self._error(iq, error.condition, error.text, error.error_type)
        except _Shutdown:
            reply = self._error(iq, "resource-constraint", "the push service is restarting", "wait")
        except StorageError as error:
            log.warning("storage failed while handling a request from %s: %s", iq.get("from"), error)
            reply = self._error(iq, "resource-constraint", "the push service cannot reach its storage", "wait")
        except asyncio.CancelledError:
            self._send(self._error(iq, "resource-constraint", "the push service is restarting", "wait"))
            raise
        except Exception:
            log.exception("handling a request from %s failed", iq.get("from"))
            reply = self._error(iq, "internal-server-error")
        if reply is not None:
            self._send(reply)

    # ------------------------------------------------------------ stanzas out
    def _send(self, stanza: etree._Element) -> None:
        try:
            self._send_raw(stanza)
        except Exception:
            log.exception("sending to %s failed", stanza.get("to"))

    def _reply(self, request: etree._Element, kind: str) -> etree._Element:
        reply = etree.Element(qname(self.ns, etree.QName(request).localname), nsmap={None: self.ns})
        reply.set("type", kind)
        if request.get("id") is not None:
            reply.set("id", request.get("id"))
        reply.set("from", request.get("to") or self.domain)
        reply.set("to", request.get("from"))
        return reply

    def _result(self, iq: etree._Element, payload: etree._Element | None = None) -> etree._Element:
        reply = self._reply(iq, "result")
        if payload is not None:
            reply.append(payload)
        return reply

    def _error(self, stanza: etree._Element, condition: str, text: str | None = None,
               error_type: str | None = None) -> etree._Element:
        reply = self._reply(stanza, "error")
        error = etree.SubElement(reply, qname(self.ns, "error"))
        error.set("type", error_type or ERROR_TYPES.get(condition, "cancel"))
        etree.SubElement(error, qname(NS_STANZAS, condition), nsmap={None: NS_STANZAS})
        if text:
            etree.SubElement(error, qname(NS_STANZAS, "text"), nsmap={None: NS_STANZAS}).text = text
        return reply

    # ------------------------------------------------------------ service discovery (XEP-0030)
    def _commands(self) -> list[str]:
        """Ad-hoc commands on offer: those of the kinds with a default app."""
        nodes = [n for n, kind in REGISTER_COMMANDS.items() if self.default_apps[kind]]
        return nodes + [n for n, kind in UNREGISTER_COMMANDS.items() if self.default_apps[kind]]

    def _disco_info(self, iq: etree._Element, query: etree._Element) -> etree._Element:
        node = query.get("node")
        answer = etree.Element(qname(NS_DISCO_INFO, "query"), nsmap={None: NS_DISCO_INFO})
        if node:
            answer.set("node", node)

        def identity(category: str, kind: str, name: str) -> None:
            etree.SubElement(answer, qname(NS_DISCO_INFO, "identity"), category=category, type=kind, name=name)

        def features(*names: str) -> None:
            for name in names:
                etree.SubElement(answer, qname(NS_DISCO_INFO, "feature"), var=name)

        if node is None:
            identity("pubsub", "push", self.name)
            features(NS_DISCO_INFO, NS_DISCO_ITEMS, NS_COMMANDS, NS_PUSH, NS_PING, NS_ENCRYPT,
                     *(f"tigase:push:encrypt:{alg}" for alg in ALGORITHMS))
        elif node == NS_COMMANDS:
            identity("automation", "command-list", "Commands")
            features(NS_DISCO_INFO, NS_DISCO_ITEMS)
        elif node in self._commands():
            identity("automation", "command-node", COMMAND_NAMES[node])
            features(NS_COMMANDS, NS_DATA)
        else:
            return self._error(iq, "item-not-found")
        return self._result(iq, answer)

    def _disco_items(self, iq: etree._Element, query: etree._Element) -> etree._Element:
        node = query.get("node")
        answer = etree.Element(qname(NS_DISCO_ITEMS, "query"), nsmap={None: NS_DISCO_ITEMS})
        if node == NS_COMMANDS:
            answer.set("node", node)
            for command in self._commands():
                etree.SubElement(answer, qname(NS_DISCO_ITEMS, "item"), jid=self.domain, node=command,
                                 name=COMMAND_NAMES[command])
        elif node is not None:
            return self._error(iq, "item-not-found")
        return self._result(iq, answer)

    # ------------------------------------------------------------ registration (XEP-0050, p2 style)
    async def _command(self, iq: etree._Element) -> etree._Element:
        command = iq[0]
        node = command.get("node") or ""
        action = command.get("action") or "execute"
        kind = REGISTER_COMMANDS.get(node) or UNREGISTER_COMMANDS.get(node)
        if kind is None:
            raise StanzaError("item-not-found", "no such command")
        app = self.default_apps[kind]
        if app is None:
            raise StanzaError("item-not-found", f"this service has no {kind} app")
        session = command.get("sessionid") or secrets.token_hex(8)
        if action == "cancel":
            return self._result(iq, self._command_reply(node, session, "canceled"))
        if action not in ("execute", "complete", "next"):
            raise StanzaError("bad-request", f"action {action!r} does not apply")
        form = command.find(qname(NS_DATA, "x"))
        if form is None:
            return self._result(iq, self._command_form(node, session))
        if form.get("type") == "cancel":
            return self._result(iq, self._command_reply(node, session, "canceled"))
        fields = _form_fields(form)
        owner = str(_jid(iq.get("from")).bare)
        device_id = _value(fields, "device-id") or _value(fields, "android-id")
        if not device_id:
            raise StanzaError("bad-request", "the device-id (or android-id) field is missing")
        if len(device_id) > MAX_DEVICE_ID:
            raise StanzaError("not-acceptable", "the device id is too long")
        muc = _room(_value(fields, "muc") or (_value(fields, "channel") if node in UNREGISTER_COMMANDS else None))
        if node in UNREGISTER_COMMANDS:
            removed = await self.storage.appserver_unregister(app, owner, device_id, muc)
            if not removed:
                raise StanzaError("item-not-found", "no such registration")
            for registration in removed:
                self._invalidate(registration.node)
            self.metrics.unregistered += len(removed)
            log.info("%s unregistered %d %s device registration(s)", owner, len(removed), app)
            return self._result(iq, self._command_reply(node, session, "completed"))
        token = _value(fields, "token")
        if not token:
            raise StanzaError("bad-request", "the token field is missing")
        if len(token) > MAX_TOKEN:
            raise StanzaError("not-acceptable", "the token is too long")
        fresh = AppServerRegistration(node=secrets.token_urlsafe(12), app=app, token=token, owner=owner,
                                      secret=secrets.token_urlsafe(24), device_id=device_id, muc=muc)
        stored, evicted = await self.storage.appserver_register(fresh, datetime.now(timezone.utc),
                                                                self.max_per_owner)
        for registration in (stored, *evicted):
            self._invalidate(registration.node)
        self.metrics.registered += 1
        self.metrics.evicted += len(evicted)
        log.info("%s registered a %s device (node %s…)%s", owner, app, stored.node[:4],
                 f"; {len(evicted)} older registration(s) forgotten" if evicted else "")
        reply = self._command_reply(node, session, "completed")
        x = etree.SubElement(reply, qname(NS_DATA, "x"), nsmap={None: NS_DATA}, type="form")
        for var, value in (("jid", self.domain), ("node", stored.node), ("secret", stored.secret)):
            field_element = etree.SubElement(x, qname(NS_DATA, "field"), var=var, type="text-single")
            etree.SubElement(field_element, qname(NS_DATA, "value")).text = value
        return self._result(iq, reply)

    @staticmethod
    def _command_reply(node: str, session: str, status: str) -> etree._Element:
        return etree.Element(qname(NS_COMMANDS, "command"), nsmap={None: NS_COMMANDS}, node=node,
                             sessionid=session, status=status)

    def _command_form(self, node: str, session: str) -> etree._Element:
        """The form to fill, for a client that executes the command without one (XEP-0050 §3.4)."""
        reply = self._command_reply(node, session, "executing")
        actions = etree.SubElement(reply, qname(NS_COMMANDS, "actions"), execute="complete")
        etree.SubElement(actions, qname(NS_COMMANDS, "complete"))
        x = etree.SubElement(reply, qname(NS_DATA, "x"), nsmap={None: NS_DATA}, type="form")
        etree.SubElement(x, qname(NS_DATA, "title")).text = COMMAND_NAMES[node]
        wanted = [("device-id", "Device id", True), ("muc", "Group chat (optional)", False)]
        if node in REGISTER_COMMANDS:
            wanted.insert(0, ("token", "Push token", True))
        for var, label, required in wanted:
            f = etree.SubElement(x, qname(NS_DATA, "field"), var=var, label=label,
                                 type="jid-single" if var == "muc" else "text-single")
            if required:
                etree.SubElement(f, qname(NS_DATA, "required"))
        return reply

    # ------------------------------------------------------------ publishing (XEP-0357 §7)
    async def _publish(self, iq: etree._Element) -> etree._Element | None:
        arrived = time.perf_counter()
        pubsub = iq[0]
        publish = pubsub.find(qname(NS_PUBSUB, "publish"))
        if publish is None:
            raise StanzaError("feature-not-implemented", "this service only takes XEP-0357 publishes")
        node = publish.get("node")
        if not node:
            raise StanzaError("bad-request", "a publish needs a node")
        item = publish.find(qname(NS_PUBSUB, "item"))
        notification_element = None if item is None else item.find(qname(NS_PUSH, "notification"))
        if notification_element is None:
            raise StanzaError("bad-request", "the item must be a urn:xmpp:push:0 notification")
        summary = _form_fields(_find_form(notification_element, SUMMARY))
        options_element = pubsub.find(qname(NS_PUBSUB, "publish-options"))
        options = _form_fields(None if options_element is None else _find_form(options_element, PUBLISH_OPTIONS))
        publisher = str(_jid(iq.get("from")).bare)
        unknown = StanzaError("item-not-found", "no such node, or not with these publish-options")
        if len(node) > MAX_NODE:
            self.metrics.publishes["unknown-node"] += 1
            raise unknown

        registration = await self._registration(node)
        if registration is not None and registration.secret is not None:
            secret = _value(options, "secret") or ""
            if not hmac.compare_digest(secret.encode(), registration.secret.encode()) or not _may_publish(
                    iq.get("from"), registration):
                self.metrics.publishes["unknown-node"] += 1
                raise unknown
            app, token = registration.app, registration.token
        else:
            app = self.push_modules.get(_value(options, "pushModule") or "default")
            token = node
            if app is None:
                self.metrics.publishes["unknown-node"] += 1
                raise unknown
        provider = self.providers.get(app)
        if provider is None:
            log.warning("a registration (node %s…) names the app %r, which is not configured", node[:4], app)
            self.metrics.publishes["unknown-node"] += 1
            raise unknown
        try:
            notification = self._notification(token, collapse_id_for(registration, publisher, node), summary, options)
        except ValueError as error:
            self.metrics.publishes["bad-request"] += 1
            raise StanzaError("bad-request", str(error)) from None

        result = await self._push(app, provider, notification)
        self.metrics.latency.setdefault(provider.name, Histogram(LATENCY_BUCKETS)).observe(time.perf_counter() - arrived)
        return await self._answer(iq, app, provider, node, registration, publisher, result)

    def _notification(self, token: str, collapse_id: str, summary: dict[str, list[str]],
                      options: dict[str, list[str]]) -> Notification:
        action = _value(summary, "call-action")
        kind = CALL_KINDS.get(action, "message") if action else "message"
        calling = kind != "message"
        key = key_from_fields({var: values[0] for var, values in options.items() if values})
        return Notification(
            token=token,
            kind=kind,
            collapse_id=collapse_id,
            message_count=_count(_value(summary, "message-count")),
            pending_subscriptions=_count(_value(summary, "pending-subscription-count")),
            sender=(_value(summary, "last-message-sender") or "")[:MAX_JID] or None,
            body=(_value(summary, "last-message-body") or "")[:MAX_BODY] or None,
            call_id=(_value(summary, "call-id") or None) if calling else None,
            caller=((_value(summary, "caller") or "")[:MAX_JID] or None) if calling else None,
            encryption_key=key,
        )

    async def _answer(self, iq: etree._Element, app: str, provider: Provider, node: str,
                      registration: AppServerRegistration | None, publisher: str, result: Result
                      ) -> etree._Element | None:
        outcome = result.outcome
        where = f"push to {app} ({provider.name}) for {publisher}, node {node[:4]}…"
        if outcome == "delivered":
            self.metrics.publishes["delivered"] += 1
            self._send(self._result(iq))   # answered before the bookkeeping below
            await self._record_use(app, node, registration, publisher)
            return None
        if outcome == "unregistered":
            stamp = result.unregistered_at
            if (registration is not None and registration.secret is not None and stamp is not None
                    and registration.updated_at is not None
                    and registration.updated_at.timestamp() > stamp + UNREGISTERED_MARGIN):
                # Apple: stop pushing "until the device registers a token with a later timestamp".
                # This token was registered after that moment: keep it, count a failure.
                log.warning("%s: the provider says the token was unregistered at %s, before it was registered"
                            " (%s); registration kept: %s", where,
                            datetime.fromtimestamp(stamp, timezone.utc).isoformat(),
                            registration.updated_at.isoformat(), result.reason)
                self.metrics.publishes["rejected"] += 1
                return self._error(iq, "internal-server-error", f"{provider.name}: {result.reason or 'unregistered'}")
            if registration is not None:
                removed = await self.storage.appserver_remove(node, registration.token)
                self.metrics.dead += int(removed)
            else:
                await self.storage.appserver_remove(node, node)
            self._invalidate(node)
            log.info("%s: the device is gone (%s); registration removed", where, result.reason or "unregistered")
            self.metrics.publishes["unregistered"] += 1
            return self._error(iq, "item-not-found", "the device is no longer registered with its push service")
        if outcome == "retry":
            log.warning("%s: %s asks to try again later: %s", where, provider.name, result.reason or "(no reason)")
            self.metrics.publishes["retry"] += 1
            return self._error(iq, "resource-constraint", f"{provider.name} is unavailable, try again later", "wait")
        log.warning("%s: %s refused the push: %s", where, provider.name, result.reason or "(no reason)")
        self.metrics.publishes["rejected"] += 1
        return self._error(iq, "internal-server-error", f"{provider.name} refused the push: {result.reason}"[:300])

    async def _registration(self, node: str) -> AppServerRegistration | None:
        """The node's registration (None for a Monal-style node never seen), from the cache if fresh."""
        now = self._clock()
        cached = self._registrations.get(node)
        if cached is not None and now - cached[0] < REGISTRATION_CACHE_SECONDS:
            return cached[1]
        invalidations = self._invalidations
        registration = await self.storage.appserver_registration(node)
        if invalidations == self._invalidations:   # else what was read may predate a change: don't keep it
            if len(self._registrations) >= MAX_CACHED_NODES:
                self._registrations.clear()
            self._registrations[node] = (now, registration)
        return registration

    def _invalidate(self, node: str) -> None:
        """The node's registration changed (or went): read it again next time."""
        self._invalidations += 1
        self._registrations.pop(node, None)
        self._touched.pop(node, None)

    async def _record_use(self, app: str, node: str, registration: AppServerRegistration | None,
                          publisher: str) -> None:
        """Keep last_used_at about right (written at most every TOUCH_INTERVAL per node), for expiry."""
        now = self._clock()
        last = self._touched.get(node)
        if last is not None and now - last < TOUCH_INTERVAL:
            return
        if len(self._touched) > 100_000:
            self._touched.clear()
        self._touched[node] = now
        try:
            if registration is not None and registration.secret is not None:
                await self.storage.appserver_touch(node, datetime.now(timezone.utc))
            else:
                await self.storage.appserver_seen(node, app, publisher, datetime.now(timezone.utc))
                self._invalidate(node)   # the node has a row now (and was touched just now)
                self._touched[node] = now
        except StorageError as error:
            self._touched.pop(node, None)
            log.warning("recording a push for node %s… failed: %s", node[:4], error)

    # ------------------------------------------------------------ rate limit and the provider
    async def _push(self, app: str, provider: Provider, notification: Notification) -> Result:
        """Send through the provider, within the device's rate limit (calls never wait)."""
        now = self._clock()
        key = (app, notification.token)
        device = self._devices.get(key)
        if device is None:
            self._prune(now)
            device = self._devices[key] = _Device(float(self.rate_burst), now)
        device.refill(now, self.rate_limit, self.rate_burst)
        if notification.kind != "message":
            device.tokens = max(0.0, device.tokens - 1)
            return await self._send_push(app, provider, notification)
        if device.task is None and not device.queue and device.tokens >= 1:
            device.tokens -= 1
            return await self._send_push(app, provider, notification)
        if device.waiting >= self.max_waiting:
            self.metrics.publishes["busy"] += 1
            raise StanzaError("resource-constraint", "too many pushes are waiting for this device", "wait")
        waiting = device.queue.get(notification.collapse_id)
        ahead = (list(device.queue).index(notification.collapse_id) if waiting is not None else len(device.queue))
        delay = (ahead + 1 - device.tokens) / self.rate_limit
        if delay > self.max_delay:
            self.metrics.publishes["busy"] += 1
            raise StanzaError("resource-constraint", "too many pushes for this device, try again later", "wait")
        future = asyncio.get_running_loop().create_future()
        if waiting is None:
            device.queue[notification.collapse_id] = _Waiting(provider, notification, [future])
        else:
            waiting.provider, waiting.notification = provider, notification   # the newer one is sent
            waiting.futures.append(future)
            self.metrics.merged += 1
        self.metrics.delayed += 1
        if device.task is None:
            device.task = asyncio.get_running_loop().create_task(self._drain(app, device))
        return await future

    async def _drain(self, app: str, device: _Device) -> None:
        """Send a device's waiting pushes, one per token, oldest first."""
        try:
            while device.queue:
                device.refill(self._clock(), self.rate_limit, self.rate_burst)
                if device.tokens < 1:
                    await self._sleep((1 - device.tokens) / self.rate_limit)
                    continue
                device.tokens -= 1
                _, waiting = device.queue.popitem(last=False)
                result = await self._send_push(app, waiting.provider, waiting.notification)
                for future in waiting.futures:
                    if not future.done():
                        future.set_result(result)
        finally:
            device.task = None

    async def _send_push(self, app: str, provider: Provider, notification: Notification) -> Result:
        try:
            result = await provider.send(notification)
        except asyncio.CancelledError:
            raise
        except Exception as error:   # a provider must not raise; if it does, this push failed
            log.exception("the %s provider of %s failed", provider.name, app)
            result = Result("rejected", f"internal error: {type(error).__name__}")
        self.metrics.pushes[provider.name, result.outcome] += 1
        self.metrics.app_pushes[app, result.outcome] += 1
        return result

    def _prune(self, now: float) -> None:
        """Forget devices whose bucket is full again and that have nothing waiting (at most once a minute)."""
        if len(self._devices) < 1024 or now - self._last_prune < 60.0:
            return
        self._last_prune = now
        for key, device in list(self._devices.items()):
            device.refill(now, self.rate_limit, self.rate_burst)
            if device.task is None and not device.queue and device.tokens >= self.rate_burst:
                del self._devices[key]


# -------------------------------------------------------------------------------- forms and values


def _find_form(parent: etree._Element, wanted: str) -> etree._Element | None:
    """The jabber:x:data form of FORM_TYPE `wanted` among parent's children; a form without FORM_TYPE will do."""
    fallback = None
    for x in parent.iterchildren(qname(NS_DATA, "x")):
        kind = form_type(x)
        if kind == wanted:
            return x
        if kind is None and fallback is None:
            fallback = x
    return fallback


def _form_fields(form: etree._Element | None) -> dict[str, list[str]]:
    """var -> values of a form (at most MAX_FIELDS fields, values cut to MAX_FIELD; FORM_TYPE left out)."""
    fields: dict[str, list[str]] = {}
    if form is None:
        return fields
    for f in form.iterchildren(qname(NS_DATA, "field")):
        var = f.get("var")
        if not var or var == "FORM_TYPE" or var in fields:
            continue
        if len(fields) >= MAX_FIELDS:
            break
        fields[var] = [(v.text or "")[: MAX_FIELD + 1] for v in f.iterchildren(qname(NS_DATA, "value"))][:8]
    return fields


def _value(fields: dict[str, list[str]], var: str) -> str | None:
    values = fields.get(var)
    if not values:
        return None
    return values[0].strip()


def _count(text: str | None) -> int | None:
    if text is None or not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= MAX_COUNT else None


def _jid(text: str | None) -> JID:
    try:
        return JID.parse(text or "")
    except InvalidJID:
        raise StanzaError("jid-malformed", "the sender's address is not a JID") from None


def _may_publish(sender: str | None, registration: AppServerRegistration) -> bool:
    """The account (or room) that registered the device, or its server: Prosody's mod_cloud_notify
    publishes from the host's JID, ejabberd and xmppd from the account's bare JID (p2 accepts either)."""
    publisher = _jid(sender)
    if str(publisher.bare) in (registration.owner, registration.muc):
        return True
    if publisher.local is not None or publisher.resource is not None:
        return False
    return any(owner and publisher.domain == JID.parse(owner).domain
               for owner in (registration.owner, registration.muc))


def _room(text: str | None) -> str | None:
    """The muc field: a bare JID (a full one is refused, as p2 does)."""
    if not text:
        return None
    try:
        room = JID.parse(text)
    except InvalidJID:
        raise StanzaError("jid-malformed", "muc is not a JID") from None
    if room.resource is not None:
        raise StanzaError("bad-request", "muc must be a bare JID")
    return str(room)


# -------------------------------------------------------------------------------- wiring


def providers_from_config(apps: Iterable[Any], *, apns_options: Mapping[str, Any] | None = None,
                          fcm_options: Mapping[str, Any] | None = None) -> dict[str, Provider]:
    """Providers for [appserver.apps.NAME] tables (config.PushApp or alike), by app name.

    Reads the key and service-account files now (a bad one raises ValueError or OSError
    naming the app); nothing connects until the first push. apns_options / fcm_options are
    extra keyword arguments for every ApnsProvider / FcmProvider (host, port, ssl_context /
    endpoint, token_uri): how tests point them at the fakes.
    """
    from .apns import ApnsProvider
    from .fcm import FcmProvider

    providers: dict[str, Provider] = {}
    for app in apps:
        if app.type == "apns":
            with open(app.key_file, encoding="utf-8") as key_file:
                key_pem = key_file.read()
            providers[app.name] = ApnsProvider(app.name, key_pem, app.key_id, app.team_id, app.topic,
                                               app.sandbox, **{**_endpoint_options(app), **(apns_options or {})})
        elif app.type == "fcm":
            providers[app.name] = FcmProvider(app.name, app.service_account_file, app.project_id or None,
                                              **{**_endpoint_options(app), **(fcm_options or {})})
        else:
            raise ValueError(f"app {app.name!r}: unknown type {app.type!r}")
    return providers


def _endpoint_options(app: Any) -> dict[str, Any]:
    """Where [appserver.apps.NAME] endpoint (and ca_file) send this app's pushes instead of Apple's or
    Google's servers: a proxy, or a test double."""
    endpoint = getattr(app, "endpoint", "")
    if not endpoint:
        return {}
    if app.type == "apns":
        from .apns import client_ssl_context

        host, _, port = endpoint.rpartition(":")
        return {"host": host, "port": int(port), "ssl_context": client_ssl_context(getattr(app, "ca_file", "") or None)}
    return {"endpoint": endpoint}


def push_modules_of(apps: Iterable[Any]) -> dict[str, str]:
    """pushModule name -> app name, from the apps' push_modules."""
    return {module: app.name for app in apps for module in getattr(app, "push_modules", ())}
