"""XEP-0163 Personal Eventing Protocol: every account is a pubsub service (XEP-0060) at its bare JID.

What clients keep here: OMEMO device lists and bundles (XEP-0384, both the
eu.siacs.conversations.axolotl and the urn:xmpp:omemo:2 nodes), avatars
(XEP-0084), bookmarks (XEP-0402), moods, tunes and the like. The protocol:

- The owner publishes (the node is created on the first publish, with the
  publish-options as its configuration; on an existing node they are
  preconditions: <conflict/> + <precondition-not-met/> when it differs, so the
  client can reconfigure and publish again), retracts, creates, configures,
  purges and deletes nodes.
- Anyone may ask for items, as the node's access model allows: open (anyone),
  presence (contacts with a subscription to the owner's presence), roster
  (those, in allowed roster groups), whitelist (the owner only).
- Subscriptions are implicit (§4): a resource of the owner or of a contact
  with presence access gets notifications for a node when its entity caps
  (caps.py) list NODE+notify. Notifications are headline messages from the
  owner's bare JID, which importance.py never counts as waking a phone; CSI
  holds them while a client is inactive. When a resource's caps first show
  interest in a node (it came online, or the owner's own resource did), or its
  account becomes a subscriber, it gets the node's last item.

Items of nodes with persist_items live in storage; a node without keeps only
its last item, in memory, for the last-item rule.
"""

from __future__ import annotations

import logging
import secrets
from copy import deepcopy
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterable

from lxml import etree

from .dataforms import NS_DATA
from .jid import JID, InvalidJID
from .pep_config import (NODE_CONFIG, NS_PUBSUB, PUBLISH_OPTIONS, BadOption, NodeConfig, apply, config_form,
                         form_values, unmet_precondition)
from .server import SCOPE_ACCOUNT
from .stanza import NS_DELAY, STORED_PARSER, StanzaError, child, error_reply, iq_result, make, qname
from .storage.models import PepItem, RosterItem

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

log = logging.getLogger("xmppd.pep")

NS_OWNER = f"{NS_PUBSUB}#owner"
NS_EVENT = f"{NS_PUBSUB}#event"
NS_ERRORS = f"{NS_PUBSUB}#errors"
NS_ADDRESS = "http://jabber.org/protocol/address"
NOTIFY_SUFFIX = "+notify"

# Longest node name and item id accepted: far above any real one (OMEMO bundle nodes are the longest).
MAX_NAME_LENGTH = 1024

# XEP-0060 features a PEP service announces on the account (XEP-0163 §9.1).
FEATURES = ("access-open", "access-presence", "access-roster", "access-whitelist", "auto-create",
            "auto-subscribe", "config-node", "config-node-max", "create-and-configure", "create-nodes",
            "delete-items", "delete-nodes", "filtered-notifications", "item-ids", "last-published",
            "persistent-items", "publish", "publish-options", "purge-nodes", "retract-items", "retrieve-default",
            "retrieve-items")


class PubsubError(StanzaError):
    """A stanza error with XEP-0060's application-specific condition (<precondition-not-met/> …)."""

    def __init__(self, condition: str, app_condition: str | None = None, text: str | None = None,
                 feature: str | None = None) -> None:
        super().__init__(condition, text)
        self.app_condition = app_condition
        self.feature = feature   # for <unsupported feature='…'/>

    def reply(self, iq: etree._Element) -> etree._Element:
        reply = error_reply(iq, self.condition, self.text)
        if self.app_condition:
            error = reply.find("{jabber:client}error")
            element = etree.SubElement(error, qname(NS_ERRORS, self.app_condition), nsmap={None: NS_ERRORS})
            if self.feature:
                element.set("feature", self.feature)
        return reply


class Pep:
    def __init__(self, server: "Server") -> None:
        self.server = server
        self.storage = server.storage
        self.max_items = server.config.pep.max_items
        self.max_nodes = server.config.pep.max_nodes
        server.load_modules(("caps",))
        self.caps = server.module("caps")
        if "vcard" in server.modules:
            server.load_modules(("avatar_conversion",))   # XEP-0398: a PEP avatar becomes the vCard's PHOTO
        # Last items of nodes without persist_items: (username, node) -> item.
        self._volatile: dict[tuple[str, str], PepItem] = {}
        server.add_identity("pubsub", "pep", scope=SCOPE_ACCOUNT)
        server.add_feature(NS_PUBSUB, scopes=(SCOPE_ACCOUNT,))
        for feature in FEATURES:
            server.add_feature(f"{NS_PUBSUB}#{feature}", scopes=(SCOPE_ACCOUNT,))
        server.add_iq_handler(qname(NS_PUBSUB, "pubsub"), self.handle_pubsub, scopes=(SCOPE_ACCOUNT,))
        server.add_iq_handler(qname(NS_OWNER, "pubsub"), self.handle_owner, scopes=(SCOPE_ACCOUNT,))
        server.module("disco").add_account_items(self.disco_items)
        server.on("caps-changed", self._caps_changed)
        server.on("new-subscriber", self._new_subscriber)
        server.on("account-deleted", self._forget_account)

    # ================================================================ iq entry points
    async def handle_pubsub(self, iq: etree._Element, origin: "Session | None", to: JID) -> etree._Element:
        try:
            return await self._pubsub(iq, to.local, _requester(iq))
        except PubsubError as error:
            return error.reply(iq)

    async def handle_owner(self, iq: etree._Element, origin: "Session | None", to: JID) -> etree._Element:
        try:
            if _requester(iq) != to.bare:
                raise PubsubError("forbidden", text="only the account's owner manages its nodes")
            return await self._owner(iq, to.local)
        except PubsubError as error:
            return error.reply(iq)

    async def _pubsub(self, iq: etree._Element, owner: str, requester: JID) -> etree._Element:
        action = _action(iq[0])
        name = etree.QName(action).localname
        is_owner = requester == JID(owner, self.server.domain)
        if iq.get("type") == "get":
            if name == "items":
                return await self._items(iq, action, owner, requester, is_owner)
            if name == "affiliations":
                return await self._affiliations(iq, owner, is_owner)
            if name == "subscriptions":   # subscriptions are implicit (presence and caps): none to list
                return _pubsub_result(iq, etree.Element(qname(NS_PUBSUB, "subscriptions")))
            if name == "default":
                return _pubsub_result(iq, _default_element(NS_PUBSUB, NodeConfig()))
        elif name in ("publish", "retract", "create"):
            if not is_owner:
                raise PubsubError("forbidden", text="only the account's owner publishes here")
            if name == "publish":
                return await self._publish(iq, action, owner)
            if name == "retract":
                return await self._retract(iq, action, owner)
            return await self._create(iq, action, owner)
        if name in ("subscribe", "unsubscribe", "options"):
            raise PubsubError("feature-not-implemented", "unsupported",
                              "subscriptions to PEP nodes follow presence and entity caps", feature="subscribe")
        raise PubsubError("bad-request", text=f"{name} is not a pubsub request of this kind")

    async def _owner(self, iq: etree._Element, owner: str) -> etree._Element:
        action = _action(iq[0])
        name = etree.QName(action).localname
        if name == "default" and iq.get("type") == "get":
            return _owner_result(iq, _default_element(NS_OWNER, NodeConfig()))
        node = _node_name(action)
        config = await self._node(owner, node)
        if name == "configure" and iq.get("type") == "get":
            configure = etree.Element(qname(NS_OWNER, "configure"), node=node)
            configure.append(config_form(config))
            return _owner_result(iq, configure)
        if iq.get("type") != "set":
            raise PubsubError("bad-request", text=f"{name} is not a pubsub#owner request of this kind")
        if name == "configure":
            new = self._configured(config, action.find(qname(NS_DATA, "x")))
            if new.persist_items != config.persist_items:
                # Items do not move between storage and memory: a node that changes how it keeps them
                # starts empty, as the owner asked for a different kind of node.
                await self.storage.pep_purge(owner, node)
                self._volatile.pop((owner, node), None)
            await self.storage.pep_configure_node(owner, node, new.to_json(), new.max_items)
            return iq_result(iq)
        if name == "delete":
            await self.storage.pep_delete_node(owner, node)
            self._volatile.pop((owner, node), None)
            if config.notify_delete:
                await self._notify(owner, node, config, _event("delete", node))
            return iq_result(iq)
        if name == "purge":
            await self.storage.pep_purge(owner, node)
            self._volatile.pop((owner, node), None)
            await self._notify(owner, node, config, _event("purge", node))
            return iq_result(iq)
        raise PubsubError("feature-not-implemented", "unsupported", f"{name} is not supported here", feature=name)

    # ================================================================ use cases
    async def _publish(self, iq: etree._Element, publish: etree._Element, owner: str) -> etree._Element:
        node = _node_name(publish)
        items = publish.findall(qname(NS_PUBSUB, "item"))
        if not items:
            raise PubsubError("bad-request", "item-required", "a publish carries an item")
        if len(items) > 1:
            raise PubsubError("bad-request", "invalid-payload", "one item per publish")
        payloads = [e for e in items[0] if isinstance(e.tag, str)]
        if len(payloads) != 1:
            raise PubsubError("bad-request", "invalid-payload" if payloads else "payload-required",
                              "an item carries exactly one payload element")
        item_id = items[0].get("id") or secrets.token_hex(8)
        _check_length(item_id, "an item id")
        options = form_values_of(iq[0].find(qname(NS_PUBSUB, "publish-options")), PUBLISH_OPTIONS)
        await self.publish(owner, node, item_id, payloads[0], options, iq.get("from"))
        answer = etree.Element(qname(NS_PUBSUB, "publish"), node=node)
        etree.SubElement(answer, qname(NS_PUBSUB, "item"), id=item_id)
        return _pubsub_result(iq, answer)

    async def publish(self, owner: str, node: str, item_id: str, payload: etree._Element,
                      options: dict[str, list[str]], publisher: str) -> None:
        """Publish for the owner (a client's publish, or another module's: bookmarks of older clients).
        Raises PubsubError when the options are not met or a new node does not fit."""
        nodes = await self.storage.pep_nodes(owner)
        if node in nodes:
            config = NodeConfig.from_json(nodes[node])
            unmet = unmet_precondition(config, options, self.max_items)
            if unmet:
                raise PubsubError("conflict", "precondition-not-met", unmet)
        else:
            self._check_room(owner, nodes)
            try:
                config = apply(NodeConfig(), options, self.max_items)
            except BadOption as error:
                raise PubsubError("conflict", "precondition-not-met", str(error)) from None
        item = PepItem(item_id, _serialize(payload), publisher, datetime.now(timezone.utc))
        if config.persist_items:
            await self.storage.pep_publish(owner, node, config.to_json(), item, config.max_items)
        else:
            await self.storage.pep_create_node(owner, node, config.to_json())
            self._volatile[(owner, node)] = item
        for pending in self.server.fire("pep-published", owner, node, item):
            try:
                await pending   # before the answer, so that what follows from a publish is there when it is
            except Exception:
                log.exception("pep-published hook failed for %s's node %s", owner, node)
        event = _event("items", node)
        event[0].append(_item_element(NS_EVENT, item, config.deliver_payloads))
        await self._notify(owner, node, config, event, publisher)

    async def _items(self, iq: etree._Element, request: etree._Element, owner: str, requester: JID,
                     is_owner: bool) -> etree._Element:
        node = _node_name(request)
        wanted = [element.get("id") for element in request.iterchildren(qname(NS_PUBSUB, "item"))]
        if any(not item_id for item_id in wanted):
            raise PubsubError("bad-request", "item-required", "an item asked for has an id")
        newest = None
        if request.get("max_items") is not None:
            try:
                newest = int(request.get("max_items"))
            except ValueError:
                newest = 0
            if newest < 1:
                raise PubsubError("bad-request", text="max_items is a positive number")
        config = await self._node(owner, node)
        if not is_owner:
            await self._check_access(owner, config, requester)
        if config.persist_items:
            found = await self.storage.pep_items(owner, node, item_ids=wanted or None, newest=newest)
        else:
            last = self._volatile.get((owner, node))
            found = [last] if last is not None and (not wanted or last.item_id in wanted) else []
        answer = etree.Element(qname(NS_PUBSUB, "items"), node=node)
        for item in found:
            answer.append(_item_element(NS_PUBSUB, item))
        return _pubsub_result(iq, answer)

    async def _retract(self, iq: etree._Element, retract: etree._Element, owner: str) -> etree._Element:
        node = _node_name(retract)
        items = retract.findall(qname(NS_PUBSUB, "item"))
        if len(items) != 1 or not items[0].get("id"):
            raise PubsubError("bad-request", "item-required", "a retract names one item by its id")
        notify = retract.get("notify")
        if not await self.retract(owner, node, items[0].get("id"), None if notify is None else notify in ("1", "true")):
            raise PubsubError("item-not-found", text="no such item")
        return iq_result(iq)

    async def retract(self, owner: str, node: str, item_id: str, notify: bool | None) -> bool:
        """Retract an item for the owner; False if there is no such item. `notify` None: as the node says.
        Raises PubsubError (item-not-found) when there is no such node."""
        config = await self._node(owner, node)
        if config.persist_items:
            found = await self.storage.pep_retract(owner, node, item_id)
        else:
            last = self._volatile.get((owner, node))
            found = last is not None and last.item_id == item_id
            if found:
                del self._volatile[(owner, node)]
        if found and (config.notify_retract if notify is None else notify):
            event = _event("items", node)
            etree.SubElement(event[0], qname(NS_EVENT, "retract"), id=item_id)
            await self._notify(owner, node, config, event)
        return found

    async def _create(self, iq: etree._Element, create: etree._Element, owner: str) -> etree._Element:
        if not create.get("node"):
            raise PubsubError("not-acceptable", "nodeid-required", "PEP nodes have names; no instant nodes")
        node = _node_name(create)
        configure = iq[0].find(qname(NS_PUBSUB, "configure"))
        form = configure.find(qname(NS_DATA, "x")) if configure is not None else None
        config = self._configured(NodeConfig(), form)
        nodes = await self.storage.pep_nodes(owner)
        if node in nodes:
            raise PubsubError("conflict", text="the node exists")
        self._check_room(owner, nodes)
        if not await self.storage.pep_create_node(owner, node, config.to_json()):
            raise PubsubError("conflict", text="the node exists")
        return iq_result(iq)

    async def _affiliations(self, iq: etree._Element, owner: str, is_owner: bool) -> etree._Element:
        answer = etree.Element(qname(NS_PUBSUB, "affiliations"))
        if is_owner:
            for node in await self.storage.pep_nodes(owner):
                etree.SubElement(answer, qname(NS_PUBSUB, "affiliation"), node=node, affiliation="owner")
        return _pubsub_result(iq, answer)

    # ================================================================ helpers of the use cases
    def _configured(self, config: NodeConfig, form: etree._Element | None) -> NodeConfig:
        """The config with a submitted node_config form applied (none, or a cancelled one: unchanged)."""
        if form is None or form.get("type") == "cancel":
            return config
        try:
            return apply(config, form_values(form, NODE_CONFIG), self.max_items)
        except BadOption as error:
            raise PubsubError("not-acceptable", text=str(error)) from None

    def _check_room(self, owner: str, nodes: dict[str, str]) -> None:
        if len(nodes) >= self.max_nodes:
            log.warning("PEP: %s has %d nodes, the most [pep] max_nodes allows; a new one was refused",
                        owner, len(nodes))
            raise PubsubError("not-allowed", "max-nodes-exceeded", f"an account has at most {self.max_nodes} nodes")

    async def _node(self, owner: str, node: str) -> NodeConfig:
        stored = (await self.storage.pep_nodes(owner)).get(node)
        if stored is None:
            raise PubsubError("item-not-found", text="no such node")
        return NodeConfig.from_json(stored)

    async def _check_access(self, owner: str, config: NodeConfig, requester: JID) -> None:
        """XEP-0060 §6.5.9: the error that names what the requester lacks."""
        if config.access_model == "open":
            return
        if config.access_model == "whitelist":
            raise PubsubError("not-allowed", "closed-node", "only the owner may read this node")
        item = await self.storage.get_roster_item(owner, str(requester))
        if not _may_read(config, item):
            if config.access_model == "presence":
                raise PubsubError("not-authorized", "presence-subscription-required",
                                  "a subscription to the owner's presence is needed")
            raise PubsubError("not-authorized", "not-in-roster-group", "the owner did not share this node with you")

    # ================================================================ notifications
    async def _notify(self, owner: str, node: str, config: NodeConfig, event: etree._Element,
                      publisher: str | None = None) -> None:
        """Send an event to every resource that is implicitly subscribed (§4.3): the owner's and those of
        contacts the access model lets in, each with non-negative priority and NODE+notify in its caps."""
        if not config.deliver_notifications:
            return
        interest = node + NOTIFY_SUFFIX
        bare = f"{owner}@{self.server.domain}"
        targets = [s for s in self.server.available_sessions(bare) if self._wants(s, interest)]
        if config.access_model != "whitelist":
            _, roster = await self.storage.get_roster(owner)
            for item in roster:
                if _may_read(config, item) and self._is_local_account(item.jid):
                    targets += [s for s in self.server.available_sessions(item.jid) if self._wants(s, interest)]
        for session in targets:
            session.deliver(_notification(bare, session.full, event, publisher))

    def _wants(self, session: "Session", interest: str) -> bool:
        return session.priority >= 0 and interest in self.caps.features(session)

    def _is_local_account(self, jid_text: str) -> bool:
        try:
            jid = JID.parse(jid_text)
        except InvalidJID:
            return False
        return jid.local is not None and jid.resource is None and self.server.is_local(jid)

    async def _caps_changed(self, session: "Session", features: frozenset[str], previous: frozenset[str]) -> None:
        """XEP-0163 §4.3.4: a resource that newly shows interest in nodes gets their last items, from its
        own account's nodes and from those of contacts it is subscribed to (found in one query)."""
        interests = _interests(features - previous)
        if not interests or session.priority < 0:
            return
        _, roster = await self.storage.get_roster(session.username)
        owners = [session.username] + [JID.parse(item.jid).local for item in roster
                                       if item.subscription in ("to", "both") and self._is_local_account(item.jid)]
        seen_as: dict[str, RosterItem | None] = {}   # owner -> the session's account in the owner's roster
        for owner, node, config in await self.storage.pep_find_nodes(owners, sorted(interests)):
            if owner != session.username and owner not in seen_as:
                seen_as[owner] = await self.storage.get_roster_item(owner, session.bare)
            await self._send_last_item(owner, node, NodeConfig.from_json(config), session, seen_as.get(owner),
                                       on_presence=True)

    async def _new_subscriber(self, user: str, contact: JID) -> None:
        """XEP-0163 §4.3.4: a contact that gains presence access gets the last items at once, on each of its
        resources that wants them."""
        if not self.server.is_local(contact) or contact.local is None:
            return
        owner = JID.parse(user).local
        sessions = [s for s in self.server.available_sessions(str(contact.bare)) if s.priority >= 0]
        if not sessions:
            return
        item = await self.storage.get_roster_item(owner, str(contact.bare))
        for session in sessions:
            interests = _interests(self.caps.features(session))
            for _, node, config in await self.storage.pep_find_nodes([owner], sorted(interests)):
                await self._send_last_item(owner, node, NodeConfig.from_json(config), session, item,
                                           on_presence=False)

    async def _send_last_item(self, owner: str, node: str, config: NodeConfig, session: "Session",
                              contact: RosterItem | None, *, on_presence: bool) -> None:
        """`contact` is the session's account in the owner's roster; None when it is the owner's own session.
        `on_presence`: the resource came online (else its account just subscribed), which
        send_last_published_item decides about."""
        wanted = ("on_sub_and_presence",) if on_presence else ("on_sub", "on_sub_and_presence")
        if config.send_last_published_item not in wanted or not config.deliver_notifications:
            return
        is_own = session.username == owner
        if not is_own and (config.access_model == "whitelist" or not _may_read(config, contact)):
            return
        if config.persist_items:
            last = await self.storage.pep_items(owner, node, newest=1)
        else:
            last = [self._volatile[(owner, node)]] if (owner, node) in self._volatile else []
        if not last or session.closed:
            return
        bare = f"{owner}@{self.server.domain}"
        event = _event("items", node)
        event[0].append(_item_element(NS_EVENT, last[0], config.deliver_payloads))
        message = _notification(bare, session.full, event, last[0].publisher)
        delay = child(message, NS_DELAY, "delay")
        delay.set("from", bare)
        delay.set("stamp", last[0].published_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        session.deliver(message)

    # ================================================================ disco
    async def disco_items(self, requester: JID, account: JID) -> list[etree._Element] | None:
        """XEP-0163 §9.2: the nodes the requester may read; None for someone with no presence
        subscription, who learns nothing of the account (not even that it exists)."""
        nodes = await self.storage.pep_nodes(account.local)
        if requester == account:
            readable: Iterable[str] = nodes
        else:
            item = await self.storage.get_roster_item(account.local, str(requester))
            if item is None or item.subscription not in ("from", "both"):
                return None
            readable = [n for n, c in nodes.items() if _may_read(NodeConfig.from_json(c), item)]
        return [etree.Element(qname("http://jabber.org/protocol/disco#items", "item"), jid=str(account), node=n)
                for n in readable]

    def _forget_account(self, username: str) -> None:
        for key in [key for key in self._volatile if key[0] == username]:
            del self._volatile[key]


# ==================================================================== stanza helpers
def _requester(iq: etree._Element) -> JID:
    """The bare JID of who sent the iq ('from' is stamped by the server, so it is trusted)."""
    return JID.parse(iq.get("from") or "").bare


def _action(pubsub: etree._Element) -> etree._Element:
    """The request inside <pubsub/>: its first child but <publish-options/> or the <configure/> that
    goes with <create/> (the owner's <configure/> alone is a request of its own)."""
    children = [element for element in pubsub if isinstance(element.tag, str)]
    for element in children:
        if etree.QName(element).localname not in ("publish-options", "configure"):
            return element
    if children:
        return children[0]
    raise PubsubError("bad-request", text="an empty pubsub request")


def _node_name(element: etree._Element) -> str:
    node = element.get("node")
    if not node:
        raise PubsubError("bad-request", "nodeid-required", "the request names no node")
    _check_length(node, "a node name")
    return node


def _check_length(text: str, what: str) -> None:
    if len(text) > MAX_NAME_LENGTH:
        raise PubsubError("not-acceptable", text=f"{what} has at most {MAX_NAME_LENGTH} characters")


def form_values_of(options: etree._Element | None, form_kind: str) -> dict[str, list[str]]:
    """The fields of <publish-options><x/></publish-options>; bad options are unmet preconditions."""
    if options is None:
        return {}
    form = options.find(qname(NS_DATA, "x"))
    if form is None:
        return {}
    try:
        return form_values(form, form_kind)
    except BadOption as error:
        raise PubsubError("bad-request", "invalid-options", str(error)) from None


def _interests(features: Iterable[str]) -> set[str]:
    """The nodes whose notifications a client wants: NODE for each NODE+notify among its caps."""
    return {f[:-len(NOTIFY_SUFFIX)] for f in features if f.endswith(NOTIFY_SUFFIX)}


def _may_read(config: NodeConfig, contact: RosterItem | None) -> bool:
    """Whether a contact (its item in the owner's roster) may read a node that is not open."""
    if config.access_model == "open":
        return True
    if config.access_model == "whitelist" or contact is None or contact.subscription not in ("from", "both"):
        return False
    return config.access_model == "presence" or bool(set(contact.groups) & set(config.roster_groups_allowed))


def _serialize(payload: etree._Element) -> str:
    # From a copy: the copy leaves behind the namespace declarations inherited from the stream.
    return etree.tostring(deepcopy(payload), encoding="unicode", with_tail=False)


def _item_element(ns: str, item: PepItem, with_payload: bool = True) -> etree._Element:
    element = etree.Element(qname(ns, "item"), id=item.item_id)
    if with_payload:
        element.append(etree.fromstring(item.payload, STORED_PARSER))
    return element


def _event(kind: str, node: str) -> etree._Element:
    event = etree.Element(qname(NS_EVENT, "event"), nsmap={None: NS_EVENT})
    etree.SubElement(event, qname(NS_EVENT, kind), node=node)
    return event


def _notification(owner_bare: str, to: str, event: etree._Element, publisher: str | None) -> etree._Element:
    """XEP-0163 §4.3.1: a headline from the owner's bare JID; the publishing resource as XEP-0033 replyto."""
    message = make("message", {"from": owner_bare, "to": to, "type": "headline", "id": secrets.token_hex(8)})
    message.append(deepcopy(event))
    if publisher:
        addresses = child(message, NS_ADDRESS, "addresses")
        address = etree.SubElement(addresses, qname(NS_ADDRESS, "address"), type="replyto")
        address.set("jid", publisher)
    return message


def _pubsub_result(iq: etree._Element, payload: etree._Element) -> etree._Element:
    pubsub = etree.Element(qname(NS_PUBSUB, "pubsub"), nsmap={None: NS_PUBSUB})
    pubsub.append(payload)
    return iq_result(iq, pubsub)


def _owner_result(iq: etree._Element, payload: etree._Element) -> etree._Element:
    pubsub = etree.Element(qname(NS_OWNER, "pubsub"), nsmap={None: NS_OWNER})
    pubsub.append(payload)
    return iq_result(iq, pubsub)


def _default_element(ns: str, config: NodeConfig) -> etree._Element:
    default = etree.Element(qname(ns, "default"))
    default.append(config_form(config))
    return default


def setup(server: "Server") -> Pep:
    return Pep(server)
