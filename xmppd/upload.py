"""XEP-0363 HTTP File Upload (module "upload"): a slot service on upload.<domain>.

A client asks the service (hosted in this process with Server.add_component, like
the push app server) for a slot for one file: name, size, content type. It gets
two URLs on xmppd's own HTTP listener (upload_http.py): one to PUT the file to,
with an Authorization header, and one to share. The slot is a row in storage from
the request on, so its bytes count against the account's quota at once, and a
slot that is never used expires after [upload] slot_timeout.

The header carries an HMAC of (slot, size, content type, expiry) under a key kept
next to the files, so the HTTP side can tell a PUT that the slot request
authorised from one made by someone who only saw the URL. Files expire after
[upload] expire_after days: a periodic job deletes their rows, then the files;
files that no row names (an account deleted with xmppctl, a crash between the two
steps) are swept from disk as well.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import unicodedata
from collections import Counter
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from lxml import etree

from .aio import reactor_clock, run_soon
from .dataforms import add_field, result_form
from .jid import JID, InvalidJID
from .stanza import IQ, MESSAGE, StanzaError, error_reply, iq_result, qname
from .storage import StorageError
from .storage.models import UploadSlot

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("xmppd.upload")

NS_UPLOAD = "urn:xmpp:http:upload:0"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_PING = "urn:xmpp:ping"
DEFAULT_CONTENT_TYPE = "application/octet-stream"

# A slot id: 24 random bytes, URL-safe base64 (192 bits: not guessable, one path segment).
SLOT_BYTES = 24
SLOT_PATTERN = re.compile(r"[A-Za-z0-9_-]{32}")
# RFC 9110 §8.3.1: type "/" subtype, both tokens; parameters (charset) are kept as given.
CONTENT_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+"
                          r"(\s*;\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+=(\"[^\"\\\x00-\x1f]*\"|[!#$%&'*+.^_`|~0-9A-Za-z-]+))*")
MAX_CONTENT_TYPE_LENGTH = 255
# An upload that started in time may take this long to arrive before its unused slot is deleted.
UPLOAD_GRACE = 3600.0
# Most often the expiry job runs; files are swept for orphans at most once an hour.
JOB_INTERVAL = 60.0
SWEEP_INTERVAL = 3600.0
KEY_FILE = ".slot-key"
TEMP_DIR = ".incoming"


# ---------------------------------------------------------------- the protocol, without I/O

def sanitize_filename(name: str | None, max_length: int) -> str:
    """The name a slot keeps for its file, or StanzaError(bad-request / not-acceptable).

    A file name is one path segment: no slashes, no '.' or '..', no control or
    formatting characters (which could hide an extension or break a header); it
    is NFC-normalised so that the URL and the disk agree on one spelling."""
    if not name:
        raise StanzaError("bad-request", "the request needs a filename")
    name = unicodedata.normalize("NFC", name).strip()
    if len(name) > max_length:
        raise StanzaError("not-acceptable", f"the file name is longer than {max_length} characters")
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        raise StanzaError("bad-request", "the file name must be a name, not a path")
    if any(unicodedata.category(char)[0] == "C" for char in name):
        raise StanzaError("bad-request", "the file name holds control characters")
    return name


def parse_content_type(text: str | None) -> str:
    """The slot's content type: as given (type and subtype lower-cased), application/octet-stream if none."""
    if not text:
        return DEFAULT_CONTENT_TYPE
    if len(text) > MAX_CONTENT_TYPE_LENGTH or not CONTENT_TYPE.fullmatch(text):
        raise StanzaError("bad-request", "the content-type is not a media type (type/subtype)")
    media_type, _, parameters = text.partition(";")
    return media_type.lower() + (";" + parameters if parameters else "")


def parse_size(text: str | None) -> int:
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 20 or int(text) < 1:
        raise StanzaError("bad-request", "the size must be a positive whole number of bytes")
    return int(text)


def new_slot_id() -> str:
    return secrets.token_urlsafe(SLOT_BYTES)


def sign(key: bytes, slot: UploadSlot, expires: int) -> str:
    """The bearer token that authorises the PUT of exactly this file until `expires` (Unix time)."""
    message = "\0".join((slot.slot, str(slot.size), slot.content_type, str(expires))).encode()
    mac = hmac.new(key, message, hashlib.sha256).digest()
    return f"{expires}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


def verify(key: bytes, slot: UploadSlot, token: str) -> int | None:
    """The token's expiry if the key signed it for this slot, else None."""
    expires_text, _, _ = token.partition(".")
    if not expires_text.isascii() or not expires_text.isdigit() or len(expires_text) > 12:
        return None
    expires = int(expires_text)
    return expires if hmac.compare_digest(sign(key, slot, expires), token) else None


def file_url(base: str, slot: UploadSlot) -> str:
    return f"{base}/{slot.slot}/{quote(slot.filename, safe='')}"


def too_large(iq: etree._Element, max_size: int) -> etree._Element:
    """XEP-0363 §5: not-acceptable with <file-too-large><max-file-size/>."""
    reply = error_reply(iq, "not-acceptable", f"File too large. The maximum file size is {max_size} bytes")
    error = reply.find("{jabber:client}error")
    detail = etree.SubElement(error, qname(NS_UPLOAD, "file-too-large"), nsmap={None: NS_UPLOAD})
    etree.SubElement(detail, qname(NS_UPLOAD, "max-file-size")).text = str(max_size)
    return reply


# ---------------------------------------------------------------- files on disk

class FileStore:
    """The upload directory: <slot> per stored file, .incoming/ for PUTs in progress, and the HMAC key."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.incoming = os.path.join(directory, TEMP_DIR)
        os.makedirs(self.incoming, mode=0o750, exist_ok=True)
        self.key = self._key()

    def _key(self) -> bytes:
        path = os.path.join(self.directory, KEY_FILE)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            with open(path, "rb") as file:
                key = file.read()
            if len(key) < 32:
                raise OSError(f"{path} is damaged (shorter than 32 bytes); delete it to make a new key") from None
            return key
        key = secrets.token_bytes(32)
        with os.fdopen(fd, "wb") as file:
            file.write(key)
            file.flush()
            os.fsync(file.fileno())
        return key

    def path(self, slot_id: str) -> str:
        if not SLOT_PATTERN.fullmatch(slot_id):
            raise ValueError(f"not a slot id: {slot_id!r}")
        return os.path.join(self.directory, slot_id)

    def delete(self, slot_id: str) -> None:
        try:
            os.unlink(self.path(slot_id))
        except FileNotFoundError:
            pass

    def stored(self) -> list[str]:
        """The slot ids of the files on disk."""
        with os.scandir(self.directory) as entries:
            return [entry.name for entry in entries if SLOT_PATTERN.fullmatch(entry.name) and entry.is_file()]

    def stale_incoming(self, older_than: float) -> list[str]:
        """Temporary files of PUTs that died (the server stopped mid-upload)."""
        with os.scandir(self.incoming) as entries:
            return [entry.path for entry in entries if entry.stat().st_mtime < older_than]


# ---------------------------------------------------------------- the service

class UploadService:
    def __init__(self, server: "Server", clock: Any = None) -> None:
        settings = server.config.upload
        self.server = server
        self.settings = settings
        self.clock = reactor_clock(clock)
        self.domain = settings.domain or f"upload.{server.domain}"
        scheme = "https" if settings.tls else "http"
        self.public_url = (settings.public_url or f"{scheme}://{self.domain}:{settings.port}/upload").rstrip("/")
        self.files = FileStore(settings.directory)
        self.ports: list = []
        self._timer = None
        self._last_sweep = 0.0
        self._job: Any = None
        # For the metrics endpoint: slot requests by outcome, PUTs by HTTP status, bytes stored.
        self.slot_requests: Counter = Counter()
        self.puts: Counter = Counter()
        self.bytes_stored = 0
        server.add_component(self.domain, self.handle)
        # In-band account removal: its rows are gone with the account; sweep its files now.
        server.on("account-deleted", lambda username: self.run_job(sweep=True, queue=True))

    # ------------------------------------------------------------ XMPP side
    def handle(self, stanza: etree._Element) -> None:
        """A stanza for upload.<domain> (from a trusted 'from': the router stamped it). Never raises."""
        try:
            self._dispatch(stanza)
        except Exception:
            log.exception("upload: handling a stanza from %s failed", stanza.get("from"))

    def _dispatch(self, stanza: etree._Element) -> None:
        kind = stanza.get("type")
        if not stanza.get("from"):
            return   # nowhere to answer (the router stamps 'from' on everything a client sends)
        if stanza.tag == MESSAGE and kind != "error":
            self._send(error_reply(stanza, "service-unavailable", "this service takes no messages"))
        if stanza.tag != IQ or kind not in ("get", "set"):
            return   # presence, errors and results: the service asks nothing and has no presence
        to = JID.parse(stanza.get("to"))
        payload = stanza[0] if len(stanza) else None
        if to.local is not None or to.resource is not None or payload is None:
            self._send(error_reply(stanza, "service-unavailable"))
        elif payload.tag == qname(NS_UPLOAD, "request") and kind == "get":
            run_soon(self._answer(stanza, self.request_slot(stanza, payload)), "an upload slot request")
        elif payload.tag in (qname(NS_DISCO_INFO, "query"), qname(NS_DISCO_ITEMS, "query")) and kind == "get":
            if payload.get("node"):
                self._send(error_reply(stanza, "item-not-found", "no such node"))
            elif payload.tag == qname(NS_DISCO_INFO, "query"):
                self._send(iq_result(stanza, self.disco_info()))
            else:
                self._send(iq_result(stanza, etree.Element(qname(NS_DISCO_ITEMS, "query"),
                                                           nsmap={None: NS_DISCO_ITEMS})))
        elif payload.tag == qname(NS_PING, "ping") and kind == "get":
            self._send(iq_result(stanza))
        else:
            self._send(error_reply(stanza, "service-unavailable"))

    async def _answer(self, iq: etree._Element, pending) -> None:
        try:
            reply = await pending
        except StanzaError as error:
            log.info("upload: refused a slot for %s: %s", iq.get("from"), error)
            reply = error_reply(iq, error.condition, error.text, error.error_type)
        except StorageError as error:
            log.error("upload: a slot for %s could not be stored: %s", iq.get("from"), error)
            reply = error_reply(iq, "internal-server-error", "the upload service cannot store slots now")
        condition = reply.find("{jabber:client}error/*")
        self.slot_requests["granted" if condition is None else etree.QName(condition).localname] += 1
        self._send(reply)

    def disco_info(self) -> etree._Element:
        query = etree.Element(qname(NS_DISCO_INFO, "query"), nsmap={None: NS_DISCO_INFO})
        etree.SubElement(query, qname(NS_DISCO_INFO, "identity"), category="store", type="file",
                         name="HTTP File Upload")
        for var in (NS_DISCO_INFO, NS_DISCO_ITEMS, NS_UPLOAD, NS_PING):
            etree.SubElement(query, qname(NS_DISCO_INFO, "feature"), var=var)
        form = result_form(NS_UPLOAD)   # XEP-0128: the limit, so clients refuse large files before asking
        add_field(form, "max-file-size", str(self.settings.max_file_size))
        query.append(form)
        return query

    async def request_slot(self, iq: etree._Element, request: etree._Element) -> etree._Element:
        """XEP-0363 §4: a slot for one file of a local account, within the size limit and the quota."""
        sender = JID.parse(iq.get("from"))
        if sender.domain != self.server.domain or sender.local is None:
            raise StanzaError("not-allowed", f"only accounts of {self.server.domain} may upload files here")
        size = parse_size(request.get("size"))
        if size > self.settings.max_file_size:
            log.info("upload: %s asked for a slot of %d bytes, more than %d", sender, size,
                     self.settings.max_file_size)
            return too_large(iq, self.settings.max_file_size)
        filename = sanitize_filename(request.get("filename"), self.settings.max_filename_length)
        content_type = parse_content_type(request.get("content-type"))
        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        slot = UploadSlot(new_slot_id(), sender.local, filename, size, content_type, now)
        used = await self.server.storage.upload_reserve(slot, self.settings.quota)
        if used is not None:
            log.info("upload: %s is over quota (%d bytes stored, %d more asked, quota %d)", sender.bare, used,
                     size, self.settings.quota)
            raise StanzaError("resource-constraint",
                              f"Quota reached: {used} of {self.settings.quota} bytes are in use; files expire "
                              f"after {self.settings.expire_after:g} days", "wait")
        expires = int(self.clock.seconds() + self.settings.slot_timeout)
        url = file_url(self.public_url, slot)
        answer = etree.Element(qname(NS_UPLOAD, "slot"), nsmap={None: NS_UPLOAD})
        put = etree.SubElement(answer, qname(NS_UPLOAD, "put"), url=url)
        etree.SubElement(put, qname(NS_UPLOAD, "header"), name="Authorization").text = \
            f"Bearer {sign(self.files.key, slot, expires)}"
        etree.SubElement(answer, qname(NS_UPLOAD, "get"), url=url)
        log.debug("upload: slot %s for %s: %r, %d bytes, %s", slot.slot, sender.bare, filename, size, content_type)
        return iq_result(iq, answer)

    def _send(self, stanza: etree._Element) -> None:
        try:
            to = JID.parse(stanza.get("to"))
        except InvalidJID:
            return
        run_soon(self.server.router.route(stanza, to), f"a stanza from {self.domain}")

    # ------------------------------------------------------------ expiry
    def start(self, reactor: Any) -> None:
        """Listen for HTTP and start the expiry job."""
        from .upload_http import listen

        self.ports = listen(self, reactor)
        self._timer = self.clock.callLater(0, self._tick)

    def _tick(self) -> None:
        self.run_job(sweep=self.clock.seconds() - self._last_sweep >= SWEEP_INTERVAL)
        self._timer = self.clock.callLater(min(JOB_INTERVAL, self.settings.slot_timeout / 4), self._tick)

    def run_job(self, *, sweep: bool, queue: bool = False) -> None:
        """Run the expiry job now; if one is running, skip (a tick: the next comes soon) or, with
        `queue`, run once it is done."""
        previous = self._job
        if previous is not None and not previous.done() and not queue:
            return
        self._job = run_soon(self._after(previous, sweep), "the upload expiry job")

    async def _after(self, previous: Any, sweep: bool) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        await self.expire(sweep=sweep)

    async def expire(self, *, sweep: bool) -> list[str]:
        """Delete files past [upload] expire_after and slots never used; with `sweep`, also files no
        row names. Returns the slot ids deleted. Rows go first, so that nothing serves a file
        whose row is gone; a crash in between leaves an orphan file, which the sweep finds."""
        now = self.clock.seconds()
        settings = self.settings
        stored_before = (datetime.fromtimestamp(now - settings.expire_after * 86400, timezone.utc)
                         if settings.expire_after else None)
        reserved_before = datetime.fromtimestamp(now - settings.slot_timeout - UPLOAD_GRACE, timezone.utc)
        expired = await self.server.storage.upload_expire(stored_before, reserved_before)
        for slot_id in expired:
            self.files.delete(slot_id)
        if expired:
            log.info("upload: %d expired files and slots deleted", len(expired))
        if sweep:
            self._last_sweep = now
            expired += await self._sweep(now)
        return expired

    async def _sweep(self, now: float) -> list[str]:
        on_disk = self.files.stored()
        known: set[str] = set()
        for start in range(0, len(on_disk), 1000):
            known |= await self.server.storage.upload_known(on_disk[start:start + 1000])
        orphans = sorted(set(on_disk) - known)
        for slot_id in orphans:
            self.files.delete(slot_id)
        for path in self.files.stale_incoming(now - UPLOAD_GRACE):
            os.unlink(path)
        if orphans:
            log.info("upload: %d files without a slot (deleted accounts) removed", len(orphans))
        return orphans

    async def close(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        from twisted.internet.defer import maybeDeferred

        loop = asyncio.get_running_loop()
        await asyncio.gather(*(maybeDeferred(port.stopListening).asFuture(loop) for port in self.ports))


def setup(server: "Server") -> UploadService:
    from twisted.internet import reactor

    service = UploadService(server)
    service.start(reactor)
    log.info("upload service %s: files up to %d bytes at %s", service.domain, service.settings.max_file_size,
             service.public_url)
    return service

