"""XEP-0357 Push Notifications, the account side: wake a sleeping phone through its app server.

A client enables push with the JID and node its app server gave it (and a
publish-options form the app server wants back, e.g. a secret). From then on,
when something that matters (importance.is_important: a message with a body,
an encrypted message, a XEP-0353 call, a subscription request) reaches one of
the account's hibernated sessions, or is stored offline, the server publishes a
summary to the app server, which turns it into an APNs or FCM push.

What it does right where others do not (../shared/reference/push-and-resumption.md):
- the user's own outgoing messages and carbons of them never cause a push (carbons of
  received messages do, like the messages themselves);
- per device, the first push goes out at once, later ones within
  [push] coalesce_window are merged into one trailing push that always follows
  the last important stanza; calls are never delayed or merged;
- message-count is real: messages since the device was last connected;
- sender and body are sent only if the operator turns them on;
- failures are counted in storage (strikes survive restarts); 'wait' answers
  are retried with back-off; item-not-found (a dead token) disables at once.

The module learns which hibernated session belongs to which registration when
that session enables push (clients re-enable on every connection).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from lxml import etree

from .aio import reactor_clock, run_soon
from .appserver.encryption import FIELD_ALG, FIELD_KEY, NS_ENCRYPT
from .dataforms import NS_DATA, add_field, form_type, submit_form
from .importance import CALL, ENCRYPTED, carried_message, is_important
from .jid import JID, InvalidJID
from .router import require_owner
from .server import SCOPE_ACCOUNT
from .stanza import MESSAGE, StanzaError, iq_result, make, qname, serialize

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

log = logging.getLogger("xmppd.push")

NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
SUMMARY = "urn:xmpp:push:summary"
BODY = "{jabber:client}body"

# Seconds between tries when the app server answers 'wait' (its provider is down or rate limits);
# after the last one the failure counts as a strike.
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# How long the app server may take to answer one publish.
PUBLISH_TIMEOUT = 30.0
# How often registrations unused for [push] registration_expiry are forgotten.
EXPIRY_SWEEP = 3600.0
# How often a device's successful pushes are written to storage (expiry counts in days).
SUCCESS_RECORD_INTERVAL = 3600.0


class Device:
    """One registration (account, app server JID, node) between pushes: what the next push says."""

    __slots__ = ("username", "jid", "node", "options_xml", "count", "last_sender", "last_body",
                 "last_push_at", "trailing", "timer", "sending", "pending_subscriptions", "success_recorded_at",
                 "failing")

    def __init__(self, username: str, jid: str, node: str, options_xml: str | None) -> None:
        self.username = username
        self.jid = jid
        self.node = node
        self.options_xml = options_xml
        self.count = 0                          # messages since the device was last connected
        self.last_sender: str | None = None
        self.last_body: str | None = None
        self.last_push_at: float | None = None
        self.trailing = False                   # something arrived since the last push
        self.timer: Any = None
        self.sending = False
        # Read from storage only when it may have changed (a subscription request arrived, the device came
        # back), not on every push: pushes are frequent, subscription requests rare.
        self.pending_subscriptions: int | None = None
        # A success is written to storage (it keeps the registration from expiring, and clears strikes)
        # after a failure, and otherwise at most every SUCCESS_RECORD_INTERVAL.
        self.success_recorded_at: float | None = None
        self.failing = False

    @property
    def key(self) -> tuple[str, str, str]:
        return self.username, self.jid, self.node


def call_action(stanza: etree._Element) -> etree._Element | None:
    """The XEP-0353 <propose/> or <retract/> of a message, if it carries one."""
    if stanza.tag != MESSAGE:
        return None
    for child in stanza:
        if child.tag in CALL:
            return child
    return None


def summary_form(device: Device, pending_subscriptions: int, *, include_sender: bool, include_body: bool,
                 call: etree._Element | None = None, caller: str | None = None) -> etree._Element:
    """The XEP-0357 §7 urn:xmpp:push:summary form (plus xmppd's call fields for XEP-0353)."""
    form = submit_form(SUMMARY)
    fields = [("message-count", str(device.count)),
              ("pending-subscription-count", str(pending_subscriptions))]
    if include_sender and device.last_sender:
        fields.append(("last-message-sender", device.last_sender))
    if include_body and device.last_body:
        fields.append(("last-message-body", device.last_body))
    fields.append(("last-message-priority", "high"))
    if call is not None:
        fields += [("call-action", etree.QName(call).localname), ("call-id", call.get("id", "")),
                   ("caller", caller or "")]
    for var, value in fields:
        add_field(form, var, value)
    return form


def publish_iq(device: Device, sender: str, form: etree._Element) -> etree._Element:
    iq = make("iq", {"type": "set", "from": sender, "to": device.jid})
    pubsub = etree.SubElement(iq, qname(NS_PUBSUB, "pubsub"), nsmap={None: NS_PUBSUB})
    publish = etree.SubElement(pubsub, qname(NS_PUBSUB, "publish"), {"node": device.node})
    item = etree.SubElement(publish, qname(NS_PUBSUB, "item"))
    notification = etree.SubElement(item, qname(NS_PUSH, "notification"), nsmap={None: NS_PUSH})
    notification.append(form)
    if device.options_xml:
        options = etree.SubElement(pubsub, qname(NS_PUBSUB, "publish-options"))
        options.append(etree.fromstring(device.options_xml))
    return iq


def error_of(answer: etree._Element) -> tuple[str, str]:
    """(condition, type) of an iq error answer."""
    error = answer.find("{jabber:client}error")
    if error is None:
        return "undefined-condition", "cancel"
    condition = next((etree.QName(child).localname for child in error
                      if etree.QName(child).namespace == "urn:ietf:params:xml:ns:xmpp-stanzas"
                      and etree.QName(child).localname != "text"), "undefined-condition")
    return condition, error.get("type", "cancel")


class PushNotifications:
    """The push module. `clock` provides seconds() and callLater() (Twisted's Clock in tests)."""

    def __init__(self, server: "Server", clock: Any = None) -> None:
        self.server = server
        self.clock = reactor_clock(clock)
        self.storage = server.storage
        self.configure(server.config)
        server.on("config-reloaded", self.configure)
        self._devices: dict[tuple[str, str, str], Device] = {}
        self._by_session: dict["Session", tuple[str, str, str]] = {}
        self.published = 0     # counters for metrics
        self.failed = 0
        server.add_feature(NS_PUSH, scopes=(SCOPE_ACCOUNT,))
        server.add_iq_handler(qname(NS_PUSH, "enable"), self._enable, scopes=(SCOPE_ACCOUNT,))
        server.add_iq_handler(qname(NS_PUSH, "disable"), self._disable, scopes=(SCOPE_ACCOUNT,))
        server.on("parked", self._parked)
        server.on("session-resumed", self._connected)
        server.on("session-ended", self._session_ended)
        server.on("session-hibernated", self._hibernated)
        self._sweep_timer = self.clock.callLater(60.0, self._sweep)

    def configure(self, config: Any) -> None:
        """[push] options (at start and on reload)."""
        settings = config.push
        self.max_registrations = settings.max_registrations
        self.expiry = timedelta(days=settings.registration_expiry)
        self.window = settings.coalesce_window
        self.max_strikes = settings.max_strikes
        self.include_sender = settings.include_sender
        self.include_body = settings.include_body
        self.hibernation_timeout = settings.hibernation_timeout

    # ------------------------------------------------------------ enable / disable (XEP-0357 §5, §6)
    async def _enable(self, iq: etree._Element, origin: "Session | None", to: JID) -> etree._Element:
        require_owner(origin, to)
        if origin is None:
            raise StanzaError("not-allowed", "enable push from a client session")
        enable = iq[0]
        service, node = self._target(enable, node_required=True)
        form = enable.find(qname(NS_DATA, "x"))
        if form is not None and (form.get("type") != "submit" or form_type(form) != PUBLISH_OPTIONS):
            raise StanzaError("bad-request", f"the form must be a submitted {PUBLISH_OPTIONS} form")
        encrypt = enable.find(qname(NS_ENCRYPT, "encrypt"))
        if encrypt is not None:
            # Tigase's encrypted payloads (Siskin, Snikket iOS): the key travels to the app server in
            # the publish-options, which is where the app server reads it.
            if form is None:
                form = submit_form(PUBLISH_OPTIONS)
            add_field(form, FIELD_ALG, encrypt.get("alg", ""))
            add_field(form, FIELD_KEY, (encrypt.text or "").strip())
        options_xml = serialize(form).decode() if form is not None else None
        now = datetime.now(timezone.utc)
        dropped = await self.storage.push_enable(origin.username, service, node, options_xml, now,
                                                 self.max_registrations)
        for registration in dropped:
            self._forget((registration.username, registration.jid, registration.node), "least recently used")
        device = Device(origin.username, service, node, options_xml)
        self._forget(device.key, None)
        self._devices[device.key] = device
        self._by_session[origin] = device.key
        log.info("push enabled for %s: %s node %s", origin.full, service, node)
        return iq_result(iq)

    async def _disable(self, iq: etree._Element, origin: "Session | None", to: JID) -> etree._Element:
        require_owner(origin, to)
        service, node = self._target(iq[0], node_required=False)
        removed = await self.storage.push_disable(to.local, service, node)
        for registration in removed:
            self._forget((registration.username, registration.jid, registration.node), "disabled by the client")
        return iq_result(iq)

    def _target(self, element: etree._Element, *, node_required: bool) -> tuple[str, str | None]:
        try:
            service = JID.parse(element.get("jid", ""))
        except InvalidJID as error:
            raise StanzaError("jid-malformed", f"jid: {error}") from None
        node = element.get("node") or None
        if node_required and node is None:
            raise StanzaError("bad-request", "a node is required")
        if service.domain != self.server.domain and service.domain not in self.server.components:
            # No server-to-server connections: a remote app server could never be reached, and every
            # push would fail. Say so now rather than silently never waking the phone.
            raise StanzaError("remote-server-not-found",
                              f"{service.domain} cannot be reached from this server; use its own app server")
        return str(service), node

    # ------------------------------------------------------------ when to push
    def _parked(self, username: str, stanza: etree._Element, session: "Session | None") -> None:
        """Something for `username` could not reach a connected client: it waits in a hibernated
        session (`session`) or in storage (None). Push if it matters and was not sent by the user.
        A XEP-0280 carbon is judged by the message it carries: a copy of a received message wakes
        the phone like the message would, a copy of one the user sent never does."""
        stanza = carried_message(stanza)
        if not is_important(stanza):
            return
        sender = stanza.get("from") or ""
        if sender.partition("/")[0] == f"{username}@{self.server.domain}":
            return   # the user's own message (from another resource, or a sent carbon of it)
        if session is not None:
            key = self._by_session.get(session)
            device = self._devices.get(key) if key is not None else None
            if device is not None:
                self._notify(device, stanza)
            return
        run_soon(self._notify_account(username, stanza), f"push for {username}")

    async def _notify_account(self, username: str, stanza: etree._Element) -> None:
        """Stored offline: every registration of the account whose device is not connected."""
        connected = {self._by_session[s] for s in self.server.sessions_of(f"{username}@{self.server.domain}")
                     .values() if s in self._by_session and not _hibernated(s)}
        for registration in await self.storage.push_registrations(username):
            key = (registration.username, registration.jid, registration.node)
            if key in connected:
                continue
            device = self._devices.get(key)
            if device is None:
                device = self._devices[key] = Device(*key, registration.options_xml)
            self._notify(device, stanza)

    def _notify(self, device: Device, stanza: etree._Element) -> None:
        call = call_action(stanza)
        if call is not None:
            # A call rings now or never: not delayed, not merged, not counted as a message.
            caller = (stanza.get("from") or "").partition("/")[0]
            run_soon(self._publish(device, call=call, caller=caller), f"call push for {device.username}")
            return
        if stanza.tag != MESSAGE:
            device.pending_subscriptions = None   # a subscription request: the count changed
        else:
            device.count += 1
            device.last_sender = stanza.get("from")
            encrypted = any(child.tag in ENCRYPTED for child in stanza)
            device.last_body = None if encrypted else stanza.findtext(BODY)
        now = self.clock.seconds()
        if not device.sending and (device.last_push_at is None or now - device.last_push_at >= self.window):
            self._start(device)
        else:
            device.trailing = True
            self._arm(device)

    def _start(self, device: Device) -> None:
        """A (non-call) push goes out now; until it is answered, what arrives waits for the next one."""
        device.sending = True
        device.trailing = False
        device.last_push_at = self.clock.seconds()
        run_soon(self._publish(device), f"push for {device.username}")

    def _arm(self, device: Device) -> None:
        if device.timer is not None and device.timer.active():
            return
        due = (device.last_push_at or 0.0) + self.window
        device.timer = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._trailing, device)

    def _trailing(self, device: Device) -> None:
        device.timer = None
        if device.key not in self._devices or not device.trailing:
            return
        if device.sending:
            return   # the push under way re-arms when it is done
        self._start(device)

    # ------------------------------------------------------------ publishing (XEP-0357 §7)
    async def _publish(self, device: Device, *, call: etree._Element | None = None, caller: str | None = None) -> None:
        """Publish the device's summary (or a call) and settle the app server's answer."""
        try:
            if device.pending_subscriptions is None:
                device.pending_subscriptions = len(await self.storage.list_pending_subscriptions(device.username))
            form = summary_form(device, device.pending_subscriptions, include_sender=self.include_sender,
                                include_body=self.include_body, call=call, caller=caller)
            await self._send(device, form)
        except Exception:
            log.exception("push for %s to %s failed", device.username, device.jid)
        finally:
            if call is None:
                device.sending = False
                if device.trailing and device.key in self._devices:
                    self._arm(device)

    async def _send(self, device: Device, form: etree._Element) -> None:
        bare = f"{device.username}@{self.server.domain}"
        for delay in RETRY_DELAYS + (None,):
            iq = publish_iq(device, bare, form)
            try:
                answer = await self.server.request(iq, PUBLISH_TIMEOUT)
            except asyncio.TimeoutError:
                await self._strike(device, f"no answer from {device.jid} in {PUBLISH_TIMEOUT:.0f} s")
                return
            if answer.get("type") == "result":
                self.published += 1
                now = self.clock.seconds()
                if (device.failing or device.success_recorded_at is None
                        or now - device.success_recorded_at >= SUCCESS_RECORD_INTERVAL):
                    device.failing = False
                    device.success_recorded_at = now
                    await self.storage.push_record_success(device.username, device.jid, device.node,
                                                           datetime.now(timezone.utc))
                return
            condition, error_type = error_of(answer)
            if condition == "item-not-found":
                # The app server says the device is gone (a dead token): no point in trying again.
                log.info("push for %s: %s answered item-not-found for node %s; registration removed",
                         bare, device.jid, device.node)
                await self.storage.push_disable(device.username, device.jid, device.node)
                self._forget(device.key, "the app server no longer knows the device")
                return
            if error_type == "wait" and delay is not None:
                log.info("push for %s: %s asks to wait (%s); trying again in %.0f s", bare, device.jid,
                         condition, delay)
                await asyncio.sleep(delay)
                if device.key not in self._devices:
                    return
                continue
            await self._strike(device, f"{device.jid} answered {condition} ({error_type})")
            return

    async def _strike(self, device: Device, why: str) -> None:
        self.failed += 1
        device.failing = True
        strikes = await self.storage.push_record_failure(device.username, device.jid, device.node)
        if strikes >= self.max_strikes:
            log.warning("push for %s disabled after %d failures in a row: %s", device.username, strikes, why)
            await self.storage.push_disable(device.username, device.jid, device.node)
            self._forget(device.key, "too many failures")
        else:
            log.warning("push for %s failed (%d of %d): %s", device.username, strikes, self.max_strikes, why)

    # ------------------------------------------------------------ devices and sessions
    def _connected(self, session: "Session") -> None:
        """The device is back (a resumption): the count starts again."""
        key = self._by_session.get(session)
        device = self._devices.get(key) if key is not None else None
        if device is not None:
            device.count = 0
            device.last_sender = device.last_body = None
            device.pending_subscriptions = None

    def _session_ended(self, session: "Session") -> None:
        self._by_session.pop(session, None)

    def _hibernated(self, session: "Session") -> None:
        """A device with push may sleep longer than the resumption window: keep its session resumable
        up to [push] hibernation_timeout (contacts see it offline after the window)."""
        if session in self._by_session and session.sm is not None:
            session.sm.extension = max(0.0, self.hibernation_timeout - session.sm.window)

    def device_of(self, session: "Session") -> tuple[str, str] | None:
        """(app server JID, node) the session enabled push for; a graceful stop saves it (stream_mgmt.py)."""
        key = self._by_session.get(session)
        return (key[1], key[2]) if key is not None else None

    async def relink(self, session: "Session", jid: str, node: str) -> None:
        """A session restored after a restart enabled push before it: link it to its registration again,
        if the registration still exists, so that what is parked in it wakes the phone."""
        for registration in await self.storage.push_registrations(session.username):
            if (registration.jid, registration.node) == (jid, node):
                key = (session.username, jid, node)
                if key not in self._devices:
                    self._devices[key] = Device(*key, registration.options_xml)
                self._by_session[session] = key
                return

    def forget(self, username: str, jid: str, node: str) -> None:
        """The registration was removed outside this process (`xmppctl push remove`)."""
        self._forget((username, jid, node), "removed by the administrator")

    def _forget(self, key: tuple[str, str, str], why: str | None) -> None:
        device = self._devices.pop(key, None)
        if device is not None and device.timer is not None and device.timer.active():
            device.timer.cancel()
        for session in [s for s, k in self._by_session.items() if k == key]:
            del self._by_session[session]
        if device is not None and why:
            log.info("push registration %s node %s of %s forgotten: %s", key[1], key[2], key[0], why)

    def _sweep(self) -> None:
        run_soon(self._expire(), "expiring push registrations")
        self._sweep_timer = self.clock.callLater(EXPIRY_SWEEP, self._sweep)

    async def _expire(self) -> None:
        for registration in await self.storage.push_expire(datetime.now(timezone.utc) - self.expiry):
            self._forget((registration.username, registration.jid, registration.node),
                         f"no successful push for {self.expiry.days} days")


def _hibernated(session: "Session") -> bool:
    return session.sm is not None and session.sm.hibernated_at is not None


def setup(server: "Server") -> PushNotifications:
    return PushNotifications(server)
