"""XEP-0313 Message Archive Management: each account's 1:1 messages, kept on the server.

Why: a phone that slept, or a second device that was off, reads what it missed
from the server, including what the account's other devices sent. Every
message importance.is_archived() accepts is archived for both parties that are
local accounts (the sender's copy as sent, the recipient's as delivered), once
per account however many resources get it. The recipient's copy carries a
XEP-0359 <stanza-id by='user@domain'/> naming its archive id, stamped before
delivery; a stanza-id a client claims in our name is removed.

Delivery never waits for the archive: rows go to ArchiveWriter, which writes
them in group commits, and a query waits for barrier() first, so it sees
everything archived before it. Archive ids are "<seq>-<tag>" in hex: seq is
unique and ordered (microseconds since the epoch, bumped so that it never
repeats), so the archive's order is seq order and a time filter is a seq range;
tag is random, so ids cannot be guessed (XEP-0313 §3).

Preferences (XEP-0441, on urn:xmpp:mam:2) are read once per account and cached;
with default "roster" a message with someone in neither list costs a roster read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Awaitable

from lxml import etree

from . import rsm
from .aio import reactor_clock, run_soon
from .dataforms import FIELD, NS_DATA, VALUE, add_field, form_type
from .importance import is_archived
from .jid import JID, InvalidJID
from .router import require_owner
from .server import SCOPE_ACCOUNT
from .stanza import NS_DELAY, StanzaError, iq_result, make, qname, serialize
from .storage import ArchiveFilter, ArchivedMessage, ArchivePrefs, ArchiveRow, Storage, StorageError

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

log = logging.getLogger("xmppd.mam")

NS_MAM = "urn:xmpp:mam:2"
NS_MAM_EXTENDED = "urn:xmpp:mam:2#extended"
NS_SID = "urn:xmpp:sid:0"
NS_FORWARD = "urn:xmpp:forward:0"
NS_XDATA_VALIDATE = "http://jabber.org/protocol/xdata-validate"
STANZA_ID = qname(NS_SID, "stanza-id")

# Rows per storage call; the rest waits for the next one.
MAX_BATCH = 1000
# Accounts whose preferences are kept in memory; the oldest entry goes when it is full.
PREFS_CACHE_SIZE = 10000
# JIDs in one preference list; more is a policy violation.
MAX_PREFS_JIDS = 1000
# Expiry: every hour, in batches of this many rows.
EXPIRY_INTERVAL = 3600.0
EXPIRY_BATCH = 5000
FORM_FIELDS = ("with", "start", "end", "before-id", "after-id", "ids")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# ---------------------------------------------------------------- ids and time

class SeqClock:
    """Archive seqs: the current time in microseconds, but always above the last one given out."""

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def next(self) -> int:
        self.last = max(time.time_ns() // 1000, self.last + 1)
        return self.last


class RandomTags:
    """Unguessable 32-bit tags from the system's CSPRNG, read 4 KiB at a time: one getrandom() call
    per thousand archived messages instead of one each (secrets.randbits makes a system call)."""

    def __init__(self, chunk: int = 4096) -> None:
        self._chunk = chunk
        self._buffer = b""
        self._position = 0

    def next(self) -> int:
        if self._position + 4 > len(self._buffer):
            self._buffer, self._position = os.urandom(self._chunk), 0
        tag = int.from_bytes(self._buffer[self._position:self._position + 4], "big")
        self._position += 4
        return tag


def archive_id(seq: int, tag: int) -> str:
    return f"{seq:x}-{tag:08x}"


def parse_archive_id(text: str) -> tuple[int, int]:
    """(seq, tag) of an id this server gave out; item-not-found for anything else (XEP-0313 §4.1.3)."""
    seq_text, _, tag_text = text.partition("-")
    try:
        seq, tag = int(seq_text, 16), int(tag_text, 16)
    except ValueError:
        raise StanzaError("item-not-found", f"no message {text!r} in the archive") from None
    if archive_id(seq, tag) != text:
        raise StanzaError("item-not-found", f"no message {text!r} in the archive")
    return seq, tag


def seq_time(seq: int) -> datetime:
    return datetime.fromtimestamp(seq / 1_000_000, timezone.utc)


def xep0082(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str, name: str) -> int:
    """A XEP-0082 date-time as a seq bound (microseconds since the epoch)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise StanzaError("bad-request", f"'{name}' must be a XEP-0082 date-time such as 2024-05-06T07:08:09Z")
    return (moment - EPOCH) // timedelta(microseconds=1)


# ---------------------------------------------------------------- queries (sans-IO)

@dataclass(frozen=True, slots=True)
class Query:
    """A parsed archive query: the form's filter, the ids it names, RSM, and how to send the page."""

    where: ArchiveFilter
    known: tuple[tuple[int, int], ...]   # (seq, tag) of every id the client named: each must exist
    page: rsm.PageRequest
    limit: int
    backwards: bool
    flip: bool
    queryid: str | None


def parse_query(query: etree._Element, max_page: int) -> Query:
    """Read <query xmlns='urn:xmpp:mam:2'/>: its data form (XEP-0313 §4.1), RSM <set/> and <flip-page/>."""
    fields = _form_fields(query)
    known: list[tuple[int, int]] = []
    with_bare = with_resource = None
    start = end = after = before = None
    ids = None
    if "with" in fields:
        with_jid = _jid(_single(fields, "with"))
        with_bare, with_resource = str(with_jid.bare), with_jid.resource
    if "start" in fields:
        start = parse_time(_single(fields, "start"), "start")
    if "end" in fields:
        end = parse_time(_single(fields, "end"), "end")
    if "after-id" in fields:
        after, tag = parse_archive_id(_single(fields, "after-id"))
        known.append((after, tag))
    if "before-id" in fields:
        before, tag = parse_archive_id(_single(fields, "before-id"))
        known.append((before, tag))
    if "ids" in fields:
        if len(fields["ids"]) > max_page:
            raise StanzaError("policy-violation", f"at most {max_page} ids in one query")
        pairs = [parse_archive_id(text) for text in fields["ids"]]
        known.extend(pairs)
        ids = tuple(seq for seq, _ in pairs)
    page = rsm.parse_request(query)
    backwards = page.before is not None
    if page.after is not None:
        seq, tag = parse_archive_id(page.after)
        known.append((seq, tag))
        after = seq if after is None else max(after, seq)
    if page.before:
        seq, tag = parse_archive_id(page.before)
        known.append((seq, tag))
        before = seq if before is None else min(before, seq)
    limit = max_page if page.max is None else min(page.max, max_page)
    where = ArchiveFilter(with_bare, with_resource, start, end, after, before, ids)
    flip = query.find(qname(NS_MAM, "flip-page")) is not None
    return Query(where, tuple(known), page, limit, backwards, flip, query.get("queryid"))


def _form_fields(query: etree._Element) -> dict[str, list[str]]:
    form = query.find(qname(NS_DATA, "x"))
    if form is None:
        return {}
    if form.get("type", "submit") != "submit":
        raise StanzaError("bad-request", "the query form must be of type 'submit'")
    if form_type(form) not in (None, NS_MAM):
        raise StanzaError("bad-request", f"the query form's FORM_TYPE must be {NS_MAM}")
    fields: dict[str, list[str]] = {}
    for field in form.iterchildren(FIELD):
        var = field.get("var")
        if var == "FORM_TYPE":
            continue
        if var not in FORM_FIELDS:
            raise StanzaError("feature-not-implemented", f"unknown query field {var!r}")
        values = [value.text or "" for value in field.iterchildren(VALUE)]
        if values:
            fields[var] = values
    return fields


def _single(fields: dict[str, list[str]], name: str) -> str:
    values = fields[name]
    if len(values) != 1:
        raise StanzaError("bad-request", f"the field '{name}' takes one value")
    return values[0]


def _jid(text: str) -> JID:
    try:
        return JID.parse(text.strip())
    except InvalidJID as error:
        raise StanzaError("jid-malformed", f"{text!r} is not a JID: {error}") from None


@dataclass(frozen=True, slots=True)
class Page:
    messages: list[ArchivedMessage]   # in archive order
    complete: bool
    first_index: int | None
    count: int | None


async def read_page(storage: Storage, owner: str, query: Query) -> Page:
    """Run a query against the archive: one storage call (two for RSM's count-only <max>0</max>)."""
    if query.limit == 0:
        if query.known and await storage.mam_query(owner, query.where, limit=0, known=query.known) is None:
            raise StanzaError("item-not-found", "a message the query names is not in the archive")
        count = await storage.mam_count(owner, query.where)
        return Page([], count == 0, None, count)
    offset = query.page.index or 0
    rows = await storage.mam_query(owner, query.where, limit=query.limit + 1, backwards=query.backwards,
                                   offset=offset, known=query.known)
    if rows is None:
        raise StanzaError("item-not-found", "a message the query names is not in the archive")
    complete = len(rows) <= query.limit
    rows = rows[:query.limit]
    if query.backwards:
        rows.reverse()
    # Where the page starts in the whole result set, and its size, are known without counting only
    # when the page runs from the set's first match.
    # (RSM's <after/> and <before/> page through that set; the form's fields define it.)
    from_start = query.page.after is None and not query.page.before and (not query.backwards or complete)
    first_index = offset if from_start else None
    count = len(rows) + offset if from_start and complete else None
    return Page(rows, complete, first_index, count)


def decide(prefs: ArchivePrefs, peer: JID) -> bool | None:
    """Whether to archive a message with `peer` (XEP-0441); None when the roster must be asked. A JID in both
    lists is never archived: when in doubt, keep less."""
    bare, full = str(peer.bare), str(peer)
    if bare in prefs.never or full in prefs.never:
        return False
    if bare in prefs.always or full in prefs.always:
        return True
    if prefs.default == "roster":
        return None
    return prefs.default == "always"


# ---------------------------------------------------------------- the writer

class ArchiveWriter:
    """Group commits of archive rows: everything added while one storage call runs goes into the next.

    A failing storage is retried with back-off; rows wait in memory meanwhile.
    Each row's seq is its primary key, so a batch retried after a commit whose
    answer was lost stores nothing twice.
    """

    def __init__(self, storage: Storage, *, retry_delays: Sequence[float] = (0.5, 1, 2, 5, 10, 30)) -> None:
        self.storage = storage
        self.retry_delays = tuple(retry_delays)
        self._pending: list[ArchiveRow] = []
        self._added = 0       # rows ever added
        self._written = 0     # rows ever settled (stored, or skipped by the storage)
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._writing = False
        self.stored = 0       # counters for metrics
        self.failures = 0

    def add(self, row: ArchiveRow) -> None:
        self._pending.append(row)
        self._added += 1
        if not self._writing:
            self._writing = True
            run_soon(self._write_all(), "writing the message archive")

    async def barrier(self) -> None:
        """Returns once every row added before the call is written."""
        if self._written >= self._added:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((self._added, future))
        await future

    async def _write_all(self) -> None:
        try:
            await asyncio.sleep(0)   # let the rest of this burst join the first batch
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                self.stored += await self._write(batch)
                self._written += len(batch)
                waiting = []
                for target, future in self._waiters:
                    if self._written >= target:
                        if not future.done():
                            future.set_result(None)
                    else:
                        waiting.append((target, future))
                self._waiters = waiting
        except asyncio.CancelledError:
            # Shutdown gave up while the storage kept failing; the messages themselves were delivered or
            # are in the journal, only their archive copies are lost.
            log.error("message archive: %d messages not archived (the storage kept failing until shutdown)",
                      self._added - self._written)
            raise
        finally:
            self._writing = False

    async def _write(self, batch: list[ArchiveRow]) -> int:
        failures = 0
        while True:
            try:
                stored = await self.storage.mam_append(batch)
                break
            except Exception as exc:
                delay = self.retry_delays[min(failures, len(self.retry_delays) - 1)]
                failures += 1
                self.failures += 1
                log.error("archiving %d messages failed (attempt %d): %s; %d wait, retrying in %g s",
                          len(batch), failures, exc, len(batch) + len(self._pending), delay,
                          exc_info=not isinstance(exc, StorageError))
                await asyncio.sleep(delay)
        if failures:
            log.warning("archiving works again after %d failed attempts", failures)
        return stored


# ---------------------------------------------------------------- the module

class MessageArchive:
    def __init__(self, server: "Server", clock: Any = None) -> None:
        self.server = server
        self.storage = server.storage
        self.domain = server.domain
        settings = server.config.mam
        self.default_prefs = ArchivePrefs(settings.default)
        self.retention = settings.retention
        self.max_page = settings.max_page_size
        self.clock = reactor_clock(clock)
        self.seqs = SeqClock()
        self.writer = ArchiveWriter(server.storage)
        self._tags = RandomTags()
        self._prefs: dict[str, ArchivePrefs] = {}
        self._deciding: set[asyncio.Future] = set()   # archive decisions waiting for storage
        self._started = run_soon(self._start(), "starting the message archive")
        for feature in (NS_MAM, NS_MAM_EXTENDED, NS_SID):
            server.add_feature(feature, scopes=(SCOPE_ACCOUNT,))
        server.add_iq_handler(qname(NS_MAM, "query"), self._query, scopes=(SCOPE_ACCOUNT,))
        server.add_iq_handler(qname(NS_MAM, "prefs"), self._prefs_iq, scopes=(SCOPE_ACCOUNT,))
        server.add_iq_handler(qname(NS_MAM, "metadata"), self._metadata, scopes=(SCOPE_ACCOUNT,))
        server.on("message-sent", self._sent)
        server.on("message-to-account", self._arriving)
        server.on("session-bound", lambda session: self._load_prefs(session.username))
        server.on("account-deleted", lambda username: self._prefs.pop(username, None))
        self._expiry_timer = self.clock.callLater(60.0, self._sweep) if self.retention else None

    async def _start(self) -> None:
        """Seqs continue above the newest stored one, even if the clock went back across a restart."""
        self.seqs.last = max(self.seqs.last, await self.storage.mam_last_seq())

    async def close(self) -> None:
        if self._expiry_timer is not None and self._expiry_timer.active():
            self._expiry_timer.cancel()

    # ------------------------------------------------------------ archiving
    def _sent(self, session: "Session", stanza: etree._Element, to: JID) -> Awaitable | None:
        """A client sent a message: drop stanza-ids it claims in our name, archive the sender's copy. A
        message to the sender's own account is archived once, as it arrives."""
        _strip_stanza_ids(stanza, lambda by: by == self.domain or by.endswith("@" + self.domain))
        if to.bare == session.bare_jid or not is_archived(stanza):
            return None
        seq, data = self.seqs.next(), serialize(stanza)
        return self._archive(session.username, to, seq, data, None)

    def _arriving(self, stanza: etree._Element, to: JID) -> Awaitable | None:
        """A message on its way to a local account, before delivery or offline storage."""
        owner_jid = str(to.bare)
        _strip_stanza_ids(stanza, lambda by: by == owner_jid)
        if not is_archived(stanza) or stanza.get("from") is None:
            return None
        try:
            peer = JID.parse(stanza.get("from"))
        except InvalidJID:
            return None
        seq = self.seqs.next()
        return self._archive(to.local, peer, seq, None, stanza)

    def _archive(self, owner: str, peer: JID, seq: int, data: bytes | None,
                 to_stamp: etree._Element | None) -> Awaitable | None:
        """Archive a message with `peer` for `owner` if the preferences say so: at once when they are known,
        else once storage has answered. `to_stamp`, an arriving message, gets its stanza-id before that."""
        prefs = self._prefs.get(owner)
        verdict = None if prefs is None or not self._started.done() else decide(prefs, peer)
        if verdict is not None:
            if verdict:
                self._write(owner, peer, seq, data, to_stamp)
            return None
        pending = asyncio.ensure_future(self._archive_later(owner, peer, seq, data, to_stamp))
        self._deciding.add(pending)
        pending.add_done_callback(self._deciding.discard)
        return pending

    async def _archive_later(self, owner: str, peer: JID, seq: int, data: bytes | None,
                             to_stamp: etree._Element | None) -> None:
        await self._started
        prefs = self._prefs.get(owner) or await self._load_prefs(owner)
        if prefs is None:
            return   # no such account: the router answers the sender
        verdict = decide(prefs, peer)
        if verdict is None:
            verdict = await self.storage.get_roster_item(owner, str(peer.bare)) is not None
        if verdict:
            self._write(owner, peer, seq, data, to_stamp)

    def _write(self, owner: str, peer: JID, seq: int, data: bytes | None, to_stamp: etree._Element | None) -> None:
        tag = self._tags.next()
        if to_stamp is not None:
            stanza_id = etree.SubElement(to_stamp, STANZA_ID, nsmap={None: NS_SID})
            stanza_id.set("id", archive_id(seq, tag))
            stanza_id.set("by", f"{owner}@{self.domain}")
            data = serialize(to_stamp)
        self.writer.add(ArchiveRow(seq, tag, owner, str(peer.bare), peer.resource or "", data.decode()))

    async def _load_prefs(self, username: str) -> ArchivePrefs | None:
        """The account's preferences, cached; None if there is no such account."""
        exists, prefs = await self.storage.mam_prefs(username)
        if not exists:
            return None
        prefs = prefs or self.default_prefs
        if len(self._prefs) >= PREFS_CACHE_SIZE:
            del self._prefs[next(iter(self._prefs))]
        self._prefs[username] = prefs
        return prefs

    async def barrier(self) -> None:
        """Everything archived before this call is readable once it returns."""
        if self._deciding:
            await asyncio.gather(*self._deciding, return_exceptions=True)
        await self.writer.barrier()

    # ------------------------------------------------------------ queries
    async def _query(self, iq: etree._Element, origin: "Session | None", to: JID) -> etree._Element:
        require_owner(origin, to)
        if iq.get("type") == "get":
            return iq_result(iq, _query_form())
        query = parse_query(iq[0], self.max_page)
        await self.barrier()
        page = await read_page(self.storage, to.local, query)
        owner_jid = str(to.bare)
        for message in (reversed(page.messages) if query.flip else page.messages):
            origin.deliver(*_result_message(message, origin.full, owner_jid, query.queryid))
        fin = etree.Element(qname(NS_MAM, "fin"), nsmap={None: NS_MAM})
        if query.queryid is not None:
            fin.set("queryid", query.queryid)
        if page.complete:
            fin.set("complete", "true")
        first = page.messages[0] if page.messages else None
        last = page.messages[-1] if page.messages else None
        fin.append(rsm.result_set(first and archive_id(first.seq, first.tag), last and archive_id(last.seq, last.tag),
                                  first_index=page.first_index, count=page.count))
        return iq_result(iq, fin)

    async def _metadata(self, iq: etree._Element, origin: "Session | None", to: JID) -> etree._Element:
        require_owner(origin, to)
        if iq.get("type") != "get":
            raise StanzaError("bad-request", "archive metadata is read with an iq of type 'get'")
        await self.barrier()
        metadata = etree.Element(qname(NS_MAM, "metadata"), nsmap={None: NS_MAM})
        bounds = await self.storage.mam_bounds(to.local)
        if bounds is not None:
            for name, message in zip(("start", "end"), bounds):
                etree.SubElement(metadata, qname(NS_MAM, name), id=archive_id(message.seq, message.tag),
                                 timestamp=xep0082(seq_time(message.seq)))
        return iq_result(iq, metadata)

    # ------------------------------------------------------------ preferences (XEP-0441)
    async def _prefs_iq(self, iq: etree._Element, origin: "Session | None", to: JID) -> etree._Element:
        require_owner(origin, to)
        if iq.get("type") == "set":
            prefs = parse_prefs(iq[0])
            await self.storage.mam_set_prefs(to.local, prefs)
            self._prefs[to.local] = prefs
            log.info("archiving preferences of %s: default %s, %d always, %d never", to.bare, prefs.default,
                     len(prefs.always), len(prefs.never))
        else:
            prefs = await self._load_prefs(to.local)
            if prefs is None:
                raise StanzaError("service-unavailable")
        return iq_result(iq, prefs_element(prefs))

    # ------------------------------------------------------------ retention
    def _sweep(self) -> None:
        run_soon(self._expire(), "expiring archived messages")
        self._expiry_timer = self.clock.callLater(EXPIRY_INTERVAL, self._sweep)

    async def _expire(self) -> int:
        """Delete messages older than the retention time, oldest first, a batch at a time."""
        before = int((time.time() - self.retention * 86400) * 1_000_000)
        deleted = 0
        while True:
            batch = await self.storage.mam_expire(before, EXPIRY_BATCH)
            deleted += batch
            if batch < EXPIRY_BATCH:
                break
        if deleted:
            log.info("message archive: %d messages older than %g days deleted", deleted, self.retention)
        return deleted


def _strip_stanza_ids(stanza: etree._Element, ours) -> None:
    """XEP-0359 §5: a stanza-id claiming to be by one of our JIDs, on a stanza that reaches us, is a forgery."""
    for element in stanza.findall(STANZA_ID):
        if ours(element.get("by") or ""):
            stanza.remove(element)


def _result_message(message: ArchivedMessage, to: str, owner_jid: str,
                    queryid: str | None) -> tuple[etree._Element, bytes]:
    """<message><result><forwarded><delay/>the stored message</forwarded></result></message> (XEP-0313 §4.2).

    Returns the envelope element (what CSI and push look at: it holds no body) and the bytes to send:
    the stored message, which this server serialised itself, is spliced in as it is instead of being
    parsed and serialised again, the main cost of a page otherwise."""
    envelope = make("message", {"to": to, "from": owner_jid, "id": secrets.token_hex(8)})
    result = etree.SubElement(envelope, qname(NS_MAM, "result"), nsmap={None: NS_MAM})
    if queryid is not None:
        result.set("queryid", queryid)
    result.set("id", archive_id(message.seq, message.tag))
    forwarded = etree.SubElement(result, qname(NS_FORWARD, "forwarded"), nsmap={None: NS_FORWARD})
    etree.SubElement(forwarded, qname(NS_DELAY, "delay"), nsmap={None: NS_DELAY},
                     stamp=xep0082(seq_time(message.seq)))
    head = serialize(envelope)
    assert head.endswith(_RESULT_TAIL)
    return envelope, head[:-len(_RESULT_TAIL)] + message.stanza_xml.encode() + _RESULT_TAIL


_RESULT_TAIL = b"</forwarded></result></message>"


def _query_form() -> etree._Element:
    """The fields a query may use (XEP-0313 §4.1.5), none of them required."""
    query = etree.Element(qname(NS_MAM, "query"), nsmap={None: NS_MAM})
    form = etree.SubElement(query, qname(NS_DATA, "x"), type="form", nsmap={None: NS_DATA})
    add_field(form, "FORM_TYPE", NS_MAM)
    form[0].set("type", "hidden")
    for var, field_type in (("with", "jid-single"), ("start", "text-single"), ("end", "text-single"),
                            ("before-id", "text-single"), ("after-id", "text-single"), ("ids", "list-multi")):
        field = etree.SubElement(form, FIELD, var=var, type=field_type)
        if var == "ids":
            validate = etree.SubElement(field, qname(NS_XDATA_VALIDATE, "validate"), datatype="xs:string",
                                        nsmap={None: NS_XDATA_VALIDATE})
            etree.SubElement(validate, qname(NS_XDATA_VALIDATE, "open"))
    return query


def parse_prefs(element: etree._Element) -> ArchivePrefs:
    default = element.get("default")
    if default not in ("always", "never", "roster"):
        raise StanzaError("bad-request", "'default' must be always, never or roster")
    lists = []
    for name in ("always", "never"):
        jids: list[str] = []
        container = element.find(qname(NS_MAM, name))
        if container is not None:
            for item in container.iterchildren(qname(NS_MAM, "jid")):
                jid = str(_jid(item.text or ""))
                if jid not in jids:
                    jids.append(jid)
        if len(jids) > MAX_PREFS_JIDS:
            raise StanzaError("policy-violation", f"at most {MAX_PREFS_JIDS} JIDs in <{name}/>")
        lists.append(tuple(jids))
    return ArchivePrefs(default, lists[0], lists[1])


def prefs_element(prefs: ArchivePrefs) -> etree._Element:
    element = etree.Element(qname(NS_MAM, "prefs"), nsmap={None: NS_MAM}, default=prefs.default)
    for name, jids in (("always", prefs.always), ("never", prefs.never)):
        container = etree.SubElement(element, qname(NS_MAM, name))
        for jid in jids:
            etree.SubElement(container, qname(NS_MAM, "jid")).text = jid
    return element


def setup(server: "Server") -> MessageArchive:
    return MessageArchive(server)
