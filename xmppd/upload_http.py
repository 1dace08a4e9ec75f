"""The HTTP side of XEP-0363 (module "upload"): PUT a file into its slot, GET or HEAD it back.

Twisted web on [upload] port, plain or TLS with the server's certificate, serving
under the path of [upload] public_url (/upload by default) so that a reverse proxy
can pass that path through unchanged.

A PUT body is written straight to a temporary file in the upload directory, never
more than [upload] max_file_size bytes (a larger Content-Length, or a chunked body
that grows past it, gets 413 and the connection is closed at once). Once complete,
it is checked against the slot (token, size, type) and linked into place; linking
fails if the file exists, so a slot is filled once (409) even by two PUTs at once.

Status codes follow Prosody's mod_http_file_share: 401 without a bearer token,
403 for a token that is not this slot's, 410 once it has expired, 409 for a slot
already filled, 413 for a body larger than announced, 400 for one that is smaller
or a Content-Type that differs from the slot's, 201 when stored.

GET serves the bytes with the slot's content type, nosniff, a Content-Security-Policy
that runs nothing, Content-Disposition: attachment for what a browser should not
render inline, long-lived caching (the content of a URL never changes), byte ranges,
conditional requests, and CORS so that web clients (converse.js) can upload and read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from datetime import datetime, timezone
from email.utils import formatdate
from io import BytesIO
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from twisted.internet.defer import Deferred
from twisted.web import http, resource, server as web, static

from .storage import StorageError
from .upload import SLOT_PATTERN, verify

if TYPE_CHECKING:
    from .upload import UploadService

log = logging.getLogger("xmppd.upload")

# Served inline; anything else is a download (a browser must not render HTML or SVG from here).
INLINE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/heic", "video/", "audio/",
                "text/plain")
CORS_HEADERS = {
    b"Access-Control-Allow-Origin": b"*",
    b"Access-Control-Allow-Methods": b"GET, HEAD, PUT, OPTIONS",
    b"Access-Control-Allow-Headers": b"Authorization, Content-Type",
    b"Access-Control-Expose-Headers": b"Content-Length, Content-Disposition",
    b"Access-Control-Max-Age": b"86400",
}


def listen(service: "UploadService", reactor: Any) -> list:
    settings = service.settings
    path = [segment.encode() for segment in urlsplit(service.public_url).path.split("/") if segment]
    files = UploadResource(service)
    root = resource.Resource()
    parent = root
    for segment in path[:-1]:
        child = resource.Resource()
        parent.putChild(segment, child)
        parent = child
    if path:
        parent.putChild(path[-1], files)
    else:
        root = files
    site = UploadSite(root, service)
    ports = []
    context = None
    if settings.tls:
        from .tls import TLSSettings

        context = TLSSettings.load(service.server.config.tls.certificate,
                                   service.server.config.tls.private_key).context_factory
    for interface in settings.interfaces:
        if context is None:
            ports.append(reactor.listenTCP(settings.port, site, interface=interface))
        else:
            ports.append(reactor.listenSSL(settings.port, site, context, interface=interface))
    return ports


class UploadSite(web.Site):
    def __init__(self, root: resource.Resource, service: "UploadService") -> None:
        super().__init__(root)
        self.service = service
        self.noisy = False
        self.requestFactory = UploadRequest   # type: ignore[assignment]

    def log(self, request) -> None:
        """Access lines go to the debug log: who fetched which file is nobody's business by default."""
        log.debug("%s %s %s -> %d", request.getClientAddress().host, request.method.decode(),
                  request.uri.decode(errors="replace"), request.code)


class BodySpool:
    """A request body on its way to the upload directory: a temporary file that refuses to grow
    past a limit (calling `overflow` once instead)."""

    def __init__(self, directory: str, limit: int, overflow) -> None:
        fd, self.path = tempfile.mkstemp(dir=directory, prefix="put-")
        self.file = os.fdopen(fd, "w+b")
        self.limit = limit
        self.overflow = overflow
        self.size = 0
        self.refused = False

    def write(self, data: bytes) -> None:
        if self.refused:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.refused = True
            self.overflow()
            return
        self.file.write(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def read(self, size: int = -1) -> bytes:
        return self.file.read(size)

    def close(self) -> None:
        """Twisted closes the body when the request is done: the temporary file goes (a stored file is
        a link to it, made before)."""
        self.file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class UploadRequest(web.Request):
    """A request whose body goes to a BodySpool, limited to [upload] max_file_size."""

    started: float = 0.0
    refused = False

    def gotLength(self, length: int | None) -> None:
        self.started = time.time()
        service = self.channel.site.service
        limit = service.settings.max_file_size
        if length == 0:
            self.content = BytesIO()
        elif length is not None and length > limit:
            self.content = BytesIO()
            self._refuse_body(length)
        else:
            self.content = BodySpool(service.files.incoming, limit, lambda: self._refuse_body(None))

    def _refuse_body(self, length: int | None) -> None:
        """Too large for any slot: answer 413 now and close, rather than read the whole body first."""
        self.refused = True
        self.requestHeaders.removeHeader(b"Expect")   # no "100 Continue" after the answer
        self.channel.site.service.puts[413] += 1
        log.info("upload: %s sent a body of %s bytes, more than max_file_size; connection closed",
                 self.getClientAddress().host, length if length is not None else "more than max_file_size")
        headers = b"".join(b"%s: %s\r\n" % item for item in CORS_HEADERS.items())
        self.channel.transport.write(b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\nContent-Length: 0\r\n"
                                     + headers + b"\r\n")
        self.channel.transport.loseConnection()

    def process(self) -> None:
        if not self.refused:
            super().process()


class UploadResource(resource.Resource):
    """/<slot>/<filename> under the public path."""

    isLeaf = True

    def __init__(self, service: "UploadService") -> None:
        super().__init__()
        self.service = service

    def render(self, request: UploadRequest):
        for name, value in CORS_HEADERS.items():
            request.setHeader(name, value)
        return super().render(request)

    def render_OPTIONS(self, request: UploadRequest) -> bytes:
        request.setResponseCode(204)   # a CORS preflight: the headers are the answer
        return b""

    def render_GET(self, request: UploadRequest):
        return self._async(request, self._get(request))

    def render_HEAD(self, request: UploadRequest):
        return self._async(request, self._get(request))

    def render_PUT(self, request: UploadRequest):
        return self._async(request, self._put(request))

    def _async(self, request: UploadRequest, work) -> int:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))   # the client went away meanwhile

        def done(result: bytes | None) -> None:
            if request.method == b"PUT":
                self.service.puts[request.code] += 1
            if result is not None and not request.finished and not gone:
                request.write(result)
                request.finish()

        def failed(failure) -> None:
            if failure.check(StorageError):
                log.error("upload: storage failed for %s %s: %s", request.method.decode(),
                          request.uri.decode(errors="replace"), failure.value)
            else:
                log.error("upload: %s %s failed", request.method.decode(), request.uri.decode(errors="replace"),
                          exc_info=failure.value)
            done(_status(request, 500, "the upload service failed; try again later"))

        Deferred.fromFuture(asyncio.ensure_future(work)).addCallbacks(done, failed)
        return web.NOT_DONE_YET

    async def _slot(self, request: UploadRequest):
        """The slot the path names (slot id and file name both right), else None."""
        if len(request.postpath) != 2 or not SLOT_PATTERN.fullmatch(request.postpath[0].decode("ascii", "replace")):
            return None
        slot = await self.service.server.storage.upload_slot(request.postpath[0].decode("ascii"))
        if slot is None or request.postpath[1].decode("utf-8", "replace") != slot.filename:
            return None
        return slot

    async def _get(self, request: UploadRequest) -> bytes | None:
        slot = await self._slot(request)
        if slot is None or slot.uploaded_at is None:
            return _status(request, 404, "no such file (it may have expired)")
        path = self.service.files.path(slot.slot)
        if not os.path.exists(path):
            return _status(request, 404, "no such file (it may have expired)")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Content-Security-Policy", b"default-src 'none'; frame-ancestors 'none'; sandbox")
        request.setHeader(b"Content-Disposition", _disposition(slot.content_type, slot.filename))
        expire_after = self.service.settings.expire_after
        if expire_after:
            left = max(0, int(slot.uploaded_at.timestamp() + expire_after * 86400 - time.time()))
            request.setHeader(b"Cache-Control", b"public, max-age=%d, immutable" % left)
            request.setHeader(b"Expires", formatdate(time.time() + left, usegmt=True).encode())
        else:
            request.setHeader(b"Cache-Control", b"public, max-age=31536000, immutable")
        if request.setETag(f'"{slot.slot}"'.encode()) == http.CACHED:
            return b""
        file = static.File(path)
        file.type, file.encoding = slot.content_type, None
        body = file.render_GET(request)   # ranges, HEAD, If-Modified-Since, streaming from disk
        return None if body == web.NOT_DONE_YET else body

    async def _put(self, request: UploadRequest) -> bytes:
        address = request.getClientAddress().host
        authorization = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            request.setHeader(b"WWW-Authenticate", b"Bearer")
            return _status(request, 401, "the PUT needs the Authorization header the slot came with")
        slot = await self._slot(request)
        if slot is None:
            return _status(request, 404, "no such slot (it may have expired)")
        expires = verify(self.service.files.key, slot, token.strip())
        if expires is None:
            log.info("upload: %s tried to fill slot %s with a wrong token", address, slot.slot)
            return _status(request, 403, "this token is not for this slot")
        if expires < request.started:
            return _status(request, 410, "the slot has expired; ask for a new one")
        if slot.uploaded_at is not None:
            return _status(request, 409, "this slot holds a file already")
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
        if content_type and content_type.split(";")[0].strip().lower() != slot.content_type.split(";")[0]:
            return _status(request, 400, f"the slot is for {slot.content_type}, not {content_type}")
        body = request.content
        received = body.size if isinstance(body, BodySpool) else len(body.getvalue())
        if received != slot.size:
            log.info("upload: %s sent %d bytes for slot %s of %d", address, received, slot.slot, slot.size)
            if received > slot.size:
                return _status(request, 413, f"the slot is for {slot.size} bytes, not {received}")
            return _status(request, 400, f"the slot is for {slot.size} bytes, not {received}")
        return await self._store(request, slot, body)

    async def _store(self, request: UploadRequest, slot, body) -> bytes:
        path = self.service.files.path(slot.slot)
        try:
            if isinstance(body, BodySpool):
                body.file.flush()
                os.fsync(body.file.fileno())
                os.link(body.path, path)   # fails if a file is there: one slot, one file
            else:
                _write_new(path, body.getvalue())
        except FileExistsError:
            return _status(request, 409, "this slot holds a file already")
        except (FileNotFoundError, ValueError):   # the client hung up: Twisted closed the body already
            return _status(request, 400, "the upload was interrupted")
        now = datetime.now(timezone.utc)
        if not await self.service.server.storage.upload_complete(slot.slot, now):
            # The slot expired (or its account went) while the body arrived.
            self.service.files.delete(slot.slot)
            return _status(request, 410, "the slot has expired; ask for a new one")
        self.service.bytes_stored += slot.size
        log.info("upload: %s stored %d bytes for %s in slot %s", request.getClientAddress().host, slot.size,
                 slot.username, slot.slot)
        return _status(request, 201, "stored")


def _write_new(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _status(request: UploadRequest, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return text.encode() + b"\n"


def _disposition(content_type: str, filename: str) -> bytes:
    """RFC 6266: inline for what browsers show safely, attachment otherwise; the name in ASCII and in UTF-8."""
    media_type = content_type.split(";")[0]
    kind = "inline" if any(media_type == t or (t.endswith("/") and media_type.startswith(t))
                           for t in INLINE_TYPES) else "attachment"
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}".encode()
