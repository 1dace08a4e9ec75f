"""XEP-0227 portable import/export: move accounts between xmppd, Prosody and ejabberd (`xmppctl import/export`).

A file is <server-data xmlns='urn:xmpp:pie:0'> with one <host jid=…> per domain and one <user name=…> per
account (the older namespace http://www.xmpp.org/extensions/xep-0227.html#ns is read too). Prosody's
prosody-migrator writes one such document per user; ejabberd's export_piefxis writes a main file that
XIncludes one file per host. Both layouts are read: includes are followed when their href is a relative path
inside the main file's directory.

Each kind of account data is one Section: it turns storage into the children of <user/> (export), checks
and decodes those children without I/O (parse), and writes what it decoded (store). A feature that keeps
more per-account data (PEP, private XML storage, an archive) adds its own Section to SECTIONS; nothing else
changes. Children of <user/> that no section claims are skipped with a warning, as XEP-0227 §4 asks.

Import reads every file completely before it writes anything, so a broken or refused file changes nothing.
Files are parsed with no DTD (refused), no entity expansion and no network access.
"""

from __future__ import annotations

import base64
import binascii
import copy
import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any

from lxml import etree

from .files import replaced_atomically
from .jid import JID, InvalidJID, normalize_domain, normalize_localpart
from .roster import GROUP, ITEM, MAX_GROUPS, MAX_NAME_LENGTH, MAX_ROSTER_SIZE, NS_ROSTER, QUERY as ROSTER_QUERY, \
    item_element
from .sasl import derive_credentials
from .stanza import MESSAGE, NS_CLIENT, NS_DELAY, PRESENCE, STORED_PARSER, child, make, qname, with_delay
from .storage import Storage, StorageError
from .storage.models import SCRAM_MECHANISMS, SUBSCRIPTIONS, RosterItem, ScramCredentials
from .vcard import MAX_VCARD_BYTES, VCARD

NS_PIE = "urn:xmpp:pie:0"
NS_PIE_OLD = "http://www.xmpp.org/extensions/xep-0227.html#ns"   # XEP-0227 0.2, still read by ejabberd
NS_SCRAM = "urn:xmpp:pie:0#scram"
NS_XINCLUDE = "http://www.w3.org/2001/XInclude"
SCRAM_CREDENTIALS = qname(NS_SCRAM, "scram-credentials")
INCLUDE = qname(NS_XINCLUDE, "include")

# How deep XIncludes may nest (ejabberd: main file -> host file), and how much of a file may come before its
# root element (the XML declaration and comments; a DTD is refused).
MAX_INCLUDE_DEPTH = 4
MAX_PROLOG_BYTES = 64 * 1024
# Rows read from storage at a time when exporting offline messages.
EXPORT_BATCH = 500
_DIGEST_SIZES = {"SCRAM-SHA-1": 20, "SCRAM-SHA-256": 32}
_PROLOG_ITEM = re.compile(rb"\s+|<\?.*?\?>|<!--.*?-->", re.S)


class PortableError(Exception):
    """The file cannot be imported (or the export cannot be written); nothing was changed. For the operator."""


@dataclass
class Notes:
    """Warnings about data that was skipped or changed, gathered by message so that a problem shared by a
    thousand accounts is one line naming a few of them."""

    accounts_by_message: dict[str, list[str]] = field(default_factory=dict)

    def add(self, account: str, message: str) -> None:
        self.accounts_by_message.setdefault(message, []).append(account)

    def lines(self) -> list[str]:
        lines = []
        for message, accounts in self.accounts_by_message.items():
            shown = ", ".join(accounts[:5]) + (f" and {len(accounts) - 5} more" if len(accounts) > 5 else "")
            lines.append(f"{message} ({shown})")
        return lines


@dataclass
class ParseContext:
    """What a section's parse() may use: the account it is reading, where warnings go, and settings."""

    account: str            # user@domain, for messages
    username: str
    domain: str
    scram_iterations: int
    notes: Notes

    def note(self, message: str) -> None:
        self.notes.add(self.account, message)


class Section:
    """One kind of per-account data. Subclasses set `name` (a plural noun for the summary) and `elements`
    (Clark names of the <user/> children they read), and implement the three steps."""

    name: str = ""
    elements: tuple[str, ...] = ()

    async def export(self, storage: Storage, username: str, domain: str) -> list[etree._Element]:
        """The children of <user/> that carry this data (none if the account has none)."""
        raise NotImplementedError

    def parse(self, user: etree._Element, children: list[etree._Element], context: ParseContext) -> Any:
        """Check and decode this section's children of one <user/> (no I/O); None when there is nothing to
        store. Bad parts are skipped with context.note(); PortableError refuses the whole file."""
        raise NotImplementedError

    async def store(self, storage: Storage, username: str, data: Any) -> int:
        """Write what parse() returned for an account that exists now; returns how many things were stored."""
        raise NotImplementedError

    @staticmethod
    def count(children: list[etree._Element]) -> int:
        """How many things export() produced, for the summary (one per element unless a section says otherwise)."""
        return len(children)


# ---------------------------------------------------------------------------------------------- sections

class AccountSection(Section):
    """The account and its password: SCRAM keys as stored (urn:xmpp:pie:0#scram), or a plaintext password
    (the 'password' attribute), from which both SCRAM-SHA-1 and SCRAM-SHA-256 keys are derived. Runs first:
    its store() creates the account the other sections write to."""

    name = "accounts"
    elements = (SCRAM_CREDENTIALS,)

    async def export(self, storage, username, domain):
        children = []
        for mechanism in SCRAM_MECHANISMS:
            stored = await storage.get_credentials(username, mechanism)
            if stored is None:
                continue
            element = etree.Element(SCRAM_CREDENTIALS, nsmap={None: NS_SCRAM}, mechanism=mechanism)
            for tag, text in (("iter-count", str(stored.iterations)), ("salt", _b64(stored.salt)),
                              ("server-key", _b64(stored.server_key)), ("stored-key", _b64(stored.stored_key))):
                etree.SubElement(element, qname(NS_SCRAM, tag)).text = text
            children.append(element)
        return children

    def parse(self, user, children, context):
        password = user.get("password")
        if password and password.startswith("scram:"):
            credentials = _ejabberd_legacy_scram(password[len("scram:"):], context)
        elif password:
            try:
                return derive_credentials(password, context.scram_iterations)
            except ValueError as error:
                context.note(f"password not usable ({error}); account imported without one")
                return {}
        else:
            credentials = {}
        for element in children:
            mechanism = element.get("mechanism", "")
            if mechanism not in _DIGEST_SIZES:
                context.note(f"{mechanism or 'unnamed'} credentials skipped: xmppd uses "
                             f"{' and '.join(SCRAM_MECHANISMS)}")
                continue
            fields = {tag: (element.findtext(qname(NS_SCRAM, tag)) or "").strip()
                      for tag in ("iter-count", "salt", "server-key", "stored-key")}
            decoded = _scram(mechanism, fields["salt"], fields["iter-count"], fields["stored-key"],
                             fields["server-key"], context)
            if decoded is not None:
                credentials[mechanism] = decoded
        missing = [m for m in SCRAM_MECHANISMS if m not in credentials]
        if not credentials:
            context.note("no usable password or SCRAM credentials: the account cannot log in until "
                         "'xmppctl passwd' sets a password")
        elif missing:
            have = " and ".join(credentials)
            context.note(f"only {have} credentials: {have} and PLAIN logins work, {' and '.join(missing)} "
                         "logins only after the next password change")
        return credentials

    @staticmethod
    def count(children):
        return 1   # one account, whatever credentials it has

    async def store(self, storage, username, data):
        if not await storage.create_user(username, data):
            raise StorageError(f"account {username} was created by someone else during the import")
        return 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scram(mechanism: str, salt: str, iterations: str, stored_key: str, server_key: str,
           context: ParseContext) -> ScramCredentials | None:
    try:
        credentials = ScramCredentials(base64.b64decode(salt, validate=True), int(iterations),
                                       base64.b64decode(stored_key, validate=True),
                                       base64.b64decode(server_key, validate=True))
    except (ValueError, binascii.Error):
        context.note(f"{mechanism} credentials are not base64 keys and a number; skipped")
        return None
    size = _DIGEST_SIZES[mechanism]
    if credentials.iterations < 1 or not credentials.salt or \
            len(credentials.stored_key) != size or len(credentials.server_key) != size:
        context.note(f"{mechanism} credentials skipped: keys must be {size} bytes, iterations positive")
        return None
    return credentials


def _ejabberd_legacy_scram(value: str, context: ParseContext) -> dict[str, ScramCredentials]:
    """ejabberd before XEP-0227's SCRAM extension: password='scram:[sha256,]StoredKey,ServerKey,Salt,Iterations'."""
    parts = value.split(",")
    mechanism = "SCRAM-SHA-1"
    if len(parts) == 5:
        hash_name = parts.pop(0)
        mechanism = {"sha": "SCRAM-SHA-1", "sha256": "SCRAM-SHA-256"}.get(hash_name, hash_name)
    if len(parts) != 4 or mechanism not in _DIGEST_SIZES:
        context.note("password='scram:…' in a form xmppd does not read; skipped")
        return {}
    stored_key, server_key, salt, iterations = parts
    decoded = _scram(mechanism, salt, iterations, stored_key, server_key, context)
    return {mechanism: decoded} if decoded is not None else {}


class RosterSection(Section):
    """The roster (jabber:iq:roster) with names, groups, subscription, ask and pre-approval (RFC 6121)."""

    name = "roster items"
    elements = (ROSTER_QUERY,)

    async def export(self, storage, username, domain):
        _, items = await storage.get_roster(username)
        if not items:
            return []
        query = etree.Element(ROSTER_QUERY, nsmap={None: NS_ROSTER})
        for item in items:
            query.append(item_element(item))
        return [query]

    def parse(self, user, children, context):
        items: dict[str, RosterItem] = {}
        for element in (item for query in children for item in query.iter(ITEM)):
            item = _roster_item(element, context)
            if item is not None:
                items[item.jid] = item
        if len(items) > MAX_ROSTER_SIZE:
            context.note(f"roster has {len(items)} contacts, more than the {MAX_ROSTER_SIZE} a client may add; "
                         "imported all the same")
        return list(items.values()) or None

    async def store(self, storage, username, data):
        await storage.set_roster_items(username, data)
        return len(data)

    @staticmethod
    def count(children):
        return sum(len(query) for query in children)


def _roster_item(element: etree._Element, context: ParseContext) -> RosterItem | None:
    try:
        contact = JID.parse(element.get("jid", ""))
    except InvalidJID as error:
        context.note(f"roster item with an invalid JID skipped ({error})")
        return None
    if _address_of(str(contact), context) is not None:
        return None   # the account itself: Prosody skips such items as well
    subscription = element.get("subscription", "none")
    if subscription not in SUBSCRIPTIONS:
        context.note(f"roster item with subscription={subscription!r} skipped")
        return None
    name = element.get("name") or None
    groups = sorted({g.text for g in element.iter(GROUP) if g.text})
    if (name and len(name.encode()) > MAX_NAME_LENGTH) or len(groups) > MAX_GROUPS or \
            any(len(g.encode()) > MAX_NAME_LENGTH for g in groups):
        context.note(f"roster item names or groups longer than {MAX_NAME_LENGTH} bytes, or more than "
                     f"{MAX_GROUPS} groups; kept as they are")
    return RosterItem(jid=str(contact), name=name, subscription=subscription,
                      ask=element.get("ask") == "subscribe",
                      approved=element.get("approved") in ("true", "1"), groups=groups)


class PendingSubscriptionSection(Section):
    """Subscription requests the account has not answered yet: <presence type='subscribe'/> children of
    <user/> (RFC 6121 "Pending In"). ejabberd writes them in jabber:client, Prosody without a namespace of
    their own (so in XEP-0227's); both are stored as the jabber:client request a contact would have sent,
    with its <status/> and payloads of other namespaces (a XEP-0172 nick)."""

    name = "pending subscription requests"
    elements = (PRESENCE, qname(NS_PIE, "presence"))

    async def export(self, storage, username, domain):
        return [etree.fromstring(xml, STORED_PARSER) for _, xml in await storage.list_pending_subscriptions(username)]

    def parse(self, user, children, context):
        pending: dict[str, str] = {}
        for presence in children:
            if presence.get("type") != "subscribe":
                context.note(f"<presence type='{presence.get('type', '')}'/> skipped: only subscription "
                             "requests are kept")
                continue
            try:
                sender = str(JID.parse(presence.get("from", "")).bare)
            except InvalidJID as error:
                context.note(f"subscription request with an invalid 'from' skipped ({error})")
                continue
            stanza = make("presence", {"from": sender, "to": f"{context.username}@{context.domain}",
                                       "type": "subscribe"})
            for payload in presence:
                namespace = etree.QName(payload).namespace
                if namespace in (NS_CLIENT, NS_PIE):
                    if etree.QName(payload).localname == "status" and payload.text:
                        child(stanza, NS_CLIENT, "status", payload.text)
                else:
                    stanza.append(_detached(payload))
            pending[sender] = etree.tostring(stanza, encoding="unicode")
        return list(pending.items()) or None

    async def store(self, storage, username, data):
        for sender, xml in data:
            await storage.add_pending_subscription(username, sender, xml)
        return len(data)


class VCardSection(Section):
    """The vcard-temp vCard (XEP-0054), kept as the element it is."""

    name = "vCards"
    elements = (VCARD,)

    async def export(self, storage, username, domain):
        xml = await storage.get_vcard(username)
        return [] if xml is None else [etree.fromstring(xml, STORED_PARSER)]

    def parse(self, user, children, context):
        vcard = children[-1] if children else None
        if vcard is None or (len(vcard) == 0 and not (vcard.text or "").strip()):
            return None
        xml = etree.tostring(_detached(vcard), encoding="unicode")
        if len(xml.encode()) > MAX_VCARD_BYTES:
            context.note(f"vCard larger than the {MAX_VCARD_BYTES} bytes a client may set; imported all the same")
        return xml

    async def store(self, storage, username, data):
        await storage.set_vcard(username, data)
        return 1


class OfflineMessageSection(Section):
    """Messages kept for the account (XEP-0160), oldest first, each with the XEP-0203 stamp of when the
    server received it. An import stores them as xmppd's own offline messages: delivered, with that stamp,
    when the account next sends initial presence."""

    name = "offline messages"
    elements = (qname(NS_PIE, "offline-messages"), qname(NS_PIE_OLD, "offline-messages"))

    async def export(self, storage, username, domain):
        container = etree.Element(qname(NS_PIE, "offline-messages"), nsmap={None: NS_PIE})
        after = 0
        while True:
            rows = await storage.list_queued(username, after=after, limit=EXPORT_BATCH)
            for row_id, xml, received_at in rows:
                after = row_id
                container.append(etree.fromstring(with_delay(xml.encode(), received_at, domain, "Offline Storage"),
                                                  STORED_PARSER))
            if len(rows) < EXPORT_BATCH:
                break
        return [container] if len(container) else []

    def parse(self, user, children, context):
        messages = []
        for container in children:
            for element in container:
                if element.tag != MESSAGE:
                    context.note(f"{_describe(element)} in <offline-messages/> skipped: not a jabber:client message")
                    continue
                parsed = _offline_message(element, context)
                if parsed is not None:
                    messages.append(parsed)
        return messages or None

    async def store(self, storage, username, data):
        ids = await storage.write_message_queue([(username, xml, received_at, None) for xml, received_at in data],
                                                [])
        return sum(1 for row_id in ids if row_id is not None)

    @staticmethod
    def count(children):
        return sum(len(container) for container in children)


def _offline_message(element: etree._Element, context: ParseContext) -> tuple[str, datetime] | None:
    if not element.get("from"):
        context.note("offline message without a 'from' skipped")
        return None
    message = _detached(element)
    if _address_of(message.get("to", ""), context) is None:
        message.set("to", f"{context.username}@{context.domain}")   # stored for this account, so addressed to it
    received_at = None
    delays = message.findall(qname(NS_DELAY, "delay"))
    # The exporting server's own stamp says when it stored the message; xmppd adds its own on delivery,
    # with the same time, so that one is not kept twice. Stamps by others (a remote server) stay.
    own = [d for d in delays if d.get("from") in (context.domain, None)] or delays[:1]
    if own:
        try:
            received_at = datetime.fromisoformat(own[0].get("stamp", ""))
        except ValueError:
            context.note("offline message with an unreadable delay stamp: stamped with the import time")
        else:
            # XEP-0082 stamps carry a zone; one without is read as UTC, as the XEP's examples are.
            if received_at.tzinfo is None:
                received_at = received_at.replace(tzinfo=timezone.utc)
            received_at = received_at.astimezone(timezone.utc)
            if own[0].get("from") in (context.domain, None):
                message.remove(own[0])
    else:
        context.note("offline message without a delay stamp: stamped with the import time")
    xml = etree.tostring(message, encoding="unicode")
    if not xml.startswith("<message"):
        context.note("offline message written with a namespace prefix skipped")
        return None
    return xml, received_at or datetime.now(timezone.utc)


def _address_of(text: str, context: ParseContext) -> JID | None:
    """The JID if it is the account's own (bare or with a resource), else None."""
    try:
        jid = JID.parse(text)
    except InvalidJID:
        return None
    return jid if jid.bare == JID(context.username, context.domain) else None


# Account creation first: the other sections write to the account.
SECTIONS: list[Section] = [AccountSection(), RosterSection(), PendingSubscriptionSection(), VCardSection(),
                           OfflineMessageSection()]

# ---------------------------------------------------------------------------------------------- XML helpers


def _detached(element: etree._Element) -> etree._Element:
    """A copy in its own document: it declares only the namespaces it uses, not the file's (xmlns:xi …)."""
    return copy.deepcopy(element)


def _describe(element: etree._Element) -> str:
    qualified = etree.QName(element)
    return f"<{qualified.localname} xmlns='{qualified.namespace or ''}'>"


# ---------------------------------------------------------------------------------------------- export

@dataclass
class Summary:
    """What an import or export did: accounts and per-section counts, plus warnings."""

    counts: dict[str, int] = field(default_factory=lambda: {s.name: 0 for s in SECTIONS})
    skipped_accounts: list[str] = field(default_factory=list)
    notes: Notes = field(default_factory=Notes)

    def line(self, verb: str) -> str:
        parts = [f"{count} {name}" for name, count in self.counts.items()]
        text = f"{verb} " + ", ".join(parts)
        if self.skipped_accounts:
            text += f"; {len(self.skipped_accounts)} existing accounts left alone"
        return text


async def export_accounts(storage: Storage, domain: str, out: IO[bytes],
                          usernames: list[str] | None = None) -> Summary:
    """Write a XEP-0227 document of the given accounts (all with None) to `out`, one account at a time."""
    summary = Summary()
    if usernames is None:
        usernames = await storage.list_users()
    else:
        missing = [u for u in usernames if not await storage.user_exists(u)]
        if missing:
            raise PortableError("no such account: " + ", ".join(f"{u}@{domain}" for u in missing))
    with etree.xmlfile(out, encoding="utf-8") as document:
        document.write_declaration()
        with document.element(qname(NS_PIE, "server-data"), nsmap={None: NS_PIE}):
            with document.element(qname(NS_PIE, "host"), jid=domain):
                for username in usernames:
                    user = etree.Element(qname(NS_PIE, "user"), nsmap={None: NS_PIE}, name=username)
                    for section in SECTIONS:
                        children = await section.export(storage, username, domain)
                        summary.counts[section.name] += section.count(children)
                        user.extend(children)
                    document.write(user)
    return summary


async def export_per_account(storage: Storage, domain: str, directory: str,
                             usernames: list[str] | None = None) -> Summary:
    """One file per account, DIRECTORY/user@domain.xml: the layout prosody-migrator's xep0227 driver reads."""
    summary = Summary()
    for username in await storage.list_users() if usernames is None else usernames:
        with private_file(os.path.join(directory, f"{username}@{domain}.xml")) as out:
            one = await export_accounts(storage, domain, out, [username])
        for name, count in one.counts.items():
            summary.counts[name] += count
    return summary


@contextmanager
def private_file(path: str) -> Iterator[IO[bytes]]:
    """A new file that only the owner can read (an export holds password keys), moved to `path` once
    complete, so that a failed export never leaves half a file there."""
    with ExitStack() as stack:
        try:
            out = stack.enter_context(replaced_atomically(path, 0o600))
        except OSError as error:
            raise PortableError(f"cannot write {path}: {error.strerror or error}") from None
        yield out


# ---------------------------------------------------------------------------------------------- import

@dataclass
class ParsedAccount:
    """One <user/> of a file, checked and decoded, ready to be stored."""

    username: str
    source: str                               # file and line, for messages
    data: dict[str, Any]                      # section name -> what its parse() returned


def read_files(paths: list[str], domain: str, scram_iterations: int, notes: Notes) -> list[ParsedAccount]:
    """Every account of `domain` in the files, checked and decoded; other domains' accounts are noted."""
    accounts: dict[str, ParsedAccount] = {}
    for path in paths:
        reader = _Reader(os.path.dirname(os.path.abspath(path)), notes)
        for host, user, source in reader.users(path, None, 0):
            account = _parse_user(host, user, source, domain, scram_iterations, notes)
            if account is None:
                continue
            if account.username in accounts:
                notes.add(f"{account.username}@{domain}", f"account appears again at {source}; the first one "
                          f"({accounts[account.username].source}) is imported")
                continue
            accounts[account.username] = account
    return list(accounts.values())


def _parse_user(host: str, user: etree._Element, source: str, domain: str, scram_iterations: int,
                notes: Notes) -> ParsedAccount | None:
    name = user.get("name", "")
    try:
        host_domain = normalize_domain(host)
    except InvalidJID:
        raise PortableError(f"{source}: <host jid='{host}'> is not a valid domain") from None
    if host_domain != domain:
        notes.add(f"{name}@{host}", f"accounts of {host_domain} skipped: this server is {domain}")
        return None
    try:
        username = normalize_localpart(name)
    except InvalidJID as error:
        raise PortableError(f"{source}: <user name='{name}'> is not a valid username: {error}") from None
    context = ParseContext(f"{username}@{domain}", username, domain, scram_iterations, notes)
    claimed: dict[str, list[etree._Element]] = {s.name: [] for s in SECTIONS}
    owner = {tag: s for s in SECTIONS for tag in s.elements}
    for element in user:
        section = owner.get(element.tag)
        if section is None:
            context.note(f"{_describe(element)} skipped: xmppd does not import it")
        else:
            claimed[section.name].append(element)
    data = {s.name: s.parse(user, claimed[s.name], context) for s in SECTIONS}
    return ParsedAccount(username, source, data)


_HOSTS = (qname(NS_PIE, "host"), qname(NS_PIE_OLD, "host"))
_USERS = (qname(NS_PIE, "user"), qname(NS_PIE_OLD, "user"))
_SERVER_DATA = (qname(NS_PIE, "server-data"), qname(NS_PIE_OLD, "server-data"))


@dataclass
class _Reader:
    """Streams the <user/> elements out of a file and the files it includes, checking the structure."""

    root_directory: str     # includes must stay inside it
    notes: Notes

    def users(self, path: str, host: str | None, depth: int) -> Iterator[tuple[str, etree._Element, str]]:
        """(host jid, <user/> element, "file:line"); an included file inherits the including <host/>."""
        _refuse_dtd(path)
        outer_host = host
        try:
            events = etree.iterparse(path, events=("start", "end"), resolve_entities=False, no_network=True,
                                     load_dtd=False, remove_comments=True, remove_pis=True)
            open_tags: list[str] = []     # the elements the parser is inside of
            for event, element in events:
                if event == "start":
                    if not open_tags:
                        self._check_root(path, element, host, depth)
                    if element.tag in _HOSTS and (not open_tags or open_tags[-1] in _SERVER_DATA):
                        host = element.get("jid") or _fail(f"{path}:{element.sourceline}: <host/> without a jid")
                    open_tags.append(element.tag)
                    continue
                open_tags.pop()
                parent = open_tags[-1] if open_tags else None
                if parent is not None and parent not in _SERVER_DATA + _HOSTS:
                    continue   # inside a <user/>: that section's business
                if element.tag in _USERS:
                    yield self._user(path, element, host, parent)
                elif element.tag == INCLUDE:
                    yield from self.users(self._included(path, element, depth), host, depth + 1)
                elif element.tag in _HOSTS:
                    host = outer_host
                elif parent is not None:
                    self.notes.add(os.path.basename(path), f"{_describe(element)} outside a <user/> skipped")
                element.clear()   # done with it: memory stays flat however big the file is
        except etree.XMLSyntaxError as error:
            raise PortableError(f"{path} is not well-formed XML: {error}") from None
        except OSError as error:
            raise PortableError(f"cannot read {path}: {error.strerror or error}") from None

    @staticmethod
    def _user(path: str, element: etree._Element, host: str | None,
              parent: str | None) -> tuple[str, etree._Element, str]:
        if host is None or parent in _SERVER_DATA:
            raise PortableError(f"{path}:{element.sourceline}: <user/> outside a <host/>")
        return host, element, f"{path}:{element.sourceline}"

    @staticmethod
    def _check_root(path: str, root: etree._Element, host: str | None, depth: int) -> None:
        docinfo = root.getroottree().docinfo
        if docinfo.doctype or docinfo.internalDTD is not None:
            raise PortableError(f"{path}: a DTD is not allowed in an import file")
        allowed = _SERVER_DATA if depth == 0 else _SERVER_DATA + _HOSTS + (_USERS if host else ())
        if root.tag not in allowed:
            raise PortableError(f"{path}: the root element is {_describe(root)}, not XEP-0227's "
                                f"<server-data xmlns='{NS_PIE}'>")

    def _included(self, path: str, include: etree._Element, depth: int) -> str:
        """The file an <xi:include href='relative path'/> names; it must lie inside the main file's directory."""
        href = include.get("href", "")
        where = f"{path}:{include.sourceline}"
        if depth + 1 > MAX_INCLUDE_DEPTH:
            raise PortableError(f"{where}: includes nested deeper than {MAX_INCLUDE_DEPTH}")
        if include.get("parse", "xml") != "xml" or include.get("xpointer") is not None:
            raise PortableError(f"{where}: only plain <xi:include href='…'/> of XML files is supported")
        if not href or "://" in href or os.path.isabs(href):
            raise PortableError(f"{where}: include href={href!r} must be a relative file name")
        target = os.path.realpath(os.path.join(os.path.dirname(path), href))
        root = os.path.realpath(self.root_directory)
        if os.path.commonpath([target, root]) != root:
            raise PortableError(f"{where}: include href={href!r} leaves the directory of the imported file")
        return target


def _fail(message: str):
    raise PortableError(message)


def _refuse_dtd(path: str) -> None:
    """A DTD comes before the root element; one there is refused before lxml reads it (entity expansion)."""
    try:
        with open(path, "rb") as file:
            head = file.read(MAX_PROLOG_BYTES)
    except OSError as error:
        raise PortableError(f"cannot read {path}: {error.strerror or error}") from None
    position = 3 if head.startswith(b"\xef\xbb\xbf") else 0
    while (match := _PROLOG_ITEM.match(head, position)) is not None and match.end() > position:
        position = match.end()
    if head[position:position + 9].upper() == b"<!DOCTYPE":
        raise PortableError(f"{path}: a DTD is not allowed in an import file")


async def import_accounts(storage: Storage, accounts: list[ParsedAccount], domain: str, existing: str,
                          summary: Summary) -> None:
    """Write parsed accounts. `existing` says what happens to accounts that exist here already: "refuse"
    imports nothing and names them (PortableError), "skip" leaves them as they are, "replace" deletes each
    with all its data and imports the file's. Each account is written completely or removed again; a
    storage failure stops the import (StorageError, after the accounts before it are in) so that it can
    be run again with existing="skip"."""
    present = [a.username for a in accounts if await storage.user_exists(a.username)]
    if present and existing == "refuse":
        shown = ", ".join(f"{u}@{domain}" for u in present[:10]) + (" …" if len(present) > 10 else "")
        raise PortableError(f"{len(present)} account(s) exist already: {shown}; nothing was imported "
                            "(choose --existing=skip or --existing=replace)")
    for account in accounts:
        if account.username in present:
            if existing == "skip":
                summary.skipped_accounts.append(account.username)
                continue
            await storage.delete_user(account.username)
        await _import_account(storage, account, summary)


async def _import_account(storage: Storage, account: ParsedAccount, summary: Summary) -> None:
    created = False
    counts = {}
    try:
        for section in SECTIONS:
            data = account.data[section.name]
            if data is None:
                continue
            counts[section.name] = await section.store(storage, account.username, data)
            created = True
    except StorageError:
        if created:
            try:
                await storage.delete_user(account.username)
            except StorageError:
                pass   # the original error says what is wrong; the operator re-runs with --existing=replace
        raise
    for name, count in counts.items():
        summary.counts[name] += count
