"""XEP-0363 HTTP file upload end to end: slixmpp finds upload.localhost, asks for slots, and real HTTP
requests (http.client) PUT and GET the files on xmppd's own listener. One xmppd per backend; a second,
with files that expire within seconds, for the expiry job. Below them, the storage operations on both
backends and the protocol helpers without sockets."""

from __future__ import annotations

import asyncio
import http.client
import os
import secrets
import ssl
import time
from datetime import datetime, timedelta, timezone
from io import BytesIO
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from lxml import etree
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0363.http_upload import FileTooBig

from tests.conftest import start_xmppd
from tests.harness import Client, free_ports, run
from tests.storage_fixtures import BACKENDS, run as run_storage
from xmppd.stanza import StanzaError
from xmppd.storage import StorageError
from xmppd.storage.models import UploadSlot
from xmppd.upload import parse_content_type, sanitize_filename, sign, verify
from xmppd.upload_http import _disposition

NS_UPLOAD = "urn:xmpp:http:upload:0"
MAX_SIZE = 1000
QUOTA = 3000
UPLOAD = "upload.localhost"
CA: list[str] = []   # the test certificate, trusted by request() for https


def upload_toml(port: int, metrics_port: int = 0, **extra: object) -> str:
    settings = {"port": port, "interfaces": '["127.0.0.1"]', "public_url": f'"http://127.0.0.1:{port}/files"',
                "max_file_size": MAX_SIZE, "quota": QUOTA, "slot_timeout": 10.0, **extra}
    lines = "\n".join(f"{key} = {value}" for key, value in settings.items())
    return f"""require_encryption = false

[modules]
enabled = ["register", "upload"]

[metrics]
port = {metrics_port}

[upload]
{lines}
"""


@pytest.fixture(scope="module", params=BACKENDS)
def xmppd(request, tmp_path_factory, certificate):
    port, metrics_port = free_ports(2)
    server = start_xmppd(request, tmp_path_factory, certificate, request.param, upload_toml(port, metrics_port))
    server.upload_port, server.metrics_port = port, metrics_port
    return server


@pytest.fixture
def user(xmppd):
    password = secrets.token_urlsafe(12)
    return xmppd.add_user(f"u-{secrets.token_hex(4)}", password), password


async def login(xmppd, jid: str, password: str) -> Client:
    client = Client(xmppd, jid, password)
    client.register_plugin("xep_0363")
    return await client.login()


async def request(method: str, url: str, body: bytes | list[bytes] | None = None, headers: dict | None = None):
    """(status, headers, body) of one HTTP request, made in a thread so slixmpp keeps running. A list body
    is sent in chunked transfer encoding, one chunk per item."""
    def call():
        parts = urlsplit(url)
        if parts.scheme == "https":
            context = ssl.create_default_context(cafile=CA[0])
            connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=10, context=context)
        else:
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        chunked = isinstance(body, list)
        try:
            connection.request(method, parts.path, body=iter(body) if chunked else body, headers=headers or {},
                               encode_chunked=chunked)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    return await asyncio.to_thread(call)


async def slot(client: Client, filename: str, size: int, content_type: str = "application/octet-stream"):
    """(put url, put headers, get url) of a new slot."""
    answer = await client.plugin["xep_0363"].request_slot(UPLOAD, filename, size, content_type, timeout=10)
    put = answer["http_upload_slot"]["put"]
    headers = {header["name"]: header["value"] for header in put["headers"]}
    return put["url"], headers, answer["http_upload_slot"]["get"]["url"]


async def slot_error(client: Client, filename: str, size: int, content_type: str = "text/plain"):
    with pytest.raises(IqError) as caught:
        await slot(client, filename, size, content_type)
    return caught.value.iq


def stored_files(xmppd) -> set[str]:
    directory = xmppd.workdir / "uploads"
    return {name for name in os.listdir(directory) if not name.startswith(".")}


# ---------------------------------------------------------------- a real server, both backends

def test_clients_find_the_service_and_its_limit(xmppd, user):
    async def scenario():
        client = await login(xmppd, *user)
        info = await client.plugin["xep_0363"].find_upload_service(timeout=10)
        assert info is not None and info["from"] == UPLOAD
        identity = info.xml.find("{http://jabber.org/protocol/disco#info}query/"
                                 "{http://jabber.org/protocol/disco#info}identity")
        assert (identity.get("category"), identity.get("type")) == ("store", "file")
        form = info.xml.find(".//{jabber:x:data}x")
        assert form.get("type") == "result"
        fields = {field.get("var"): field.findtext("{jabber:x:data}value") for field in form}
        assert fields == {"FORM_TYPE": NS_UPLOAD, "max-file-size": str(MAX_SIZE)}
        # slixmpp reads the limit from the form and refuses a larger file without asking.
        with pytest.raises(FileTooBig):
            await client.plugin["xep_0363"].upload_file("big.bin", input_file=BytesIO(b"b" * (MAX_SIZE + 1)),
                                                        timeout=10)
        await client.close()

    run(scenario())


def test_upload_then_download_the_same_bytes(xmppd, user):
    data = secrets.token_bytes(700)

    async def scenario():
        client = await login(xmppd, *user)
        url = await client.plugin["xep_0363"].upload_file("photo of us.jpg", input_file=BytesIO(data),
                                                          content_type="image/jpeg", timeout=10)
        assert url.startswith(f"http://127.0.0.1:{xmppd.upload_port}/files/")
        assert url.endswith("/photo%20of%20us.jpg")
        status, headers, body = await request("GET", url)
        assert (status, body) == (200, data)
        assert headers["content-type"] == "image/jpeg"
        assert headers["content-length"] == str(len(data))
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["access-control-allow-origin"] == "*"
        assert headers["content-disposition"].startswith("inline;")
        assert "immutable" in headers["cache-control"]
        status, head_headers, body = await request("HEAD", url)
        assert (status, body, head_headers["content-length"]) == (200, b"", str(len(data)))
        status, headers, body = await request("GET", url, headers={"Range": "bytes=10-19"})
        assert (status, body) == (206, data[10:20])
        status, _, _ = await request("GET", url, headers={"If-None-Match": head_headers["etag"]})
        assert status == 304
        status, headers, _ = await request("OPTIONS", url, headers={"Origin": "https://web.example",
                                                                     "Access-Control-Request-Method": "PUT"})
        assert status == 204 and "PUT" in headers["access-control-allow-methods"]
        assert "Authorization" in headers["access-control-allow-headers"]
        await client.close()

    run(scenario())


def test_other_types_are_downloads_not_pages(xmppd, user):
    page = b"<html><script>alert(1)</script></html>"

    async def scenario():
        client = await login(xmppd, *user)
        put, headers, get = await slot(client, "page.html", len(page), "text/html")
        status, _, _ = await request("PUT", put, page, {**headers, "Content-Type": "text/html"})
        assert status == 201
        status, headers, body = await request("GET", get)
        assert (status, body) == (200, page)
        assert headers["content-disposition"] == "attachment; filename=\"page.html\"; filename*=UTF-8''page.html"
        assert "default-src 'none'" in headers["content-security-policy"]
        await client.close()

    run(scenario())


def test_too_large_is_refused_with_the_limit(xmppd, user):
    async def scenario():
        client = await login(xmppd, *user)
        error = await slot_error(client, "big.bin", MAX_SIZE + 1)
        assert error["error"]["condition"] == "not-acceptable"
        limit = error.xml.find(f"{{jabber:client}}error/{{{NS_UPLOAD}}}file-too-large/{{{NS_UPLOAD}}}max-file-size")
        assert limit is not None and limit.text == str(MAX_SIZE)
        for bad_size in ("0", "-5", "ten"):
            iq = client.Iq(stype="get", sto=UPLOAD)
            iq.xml.append(xml_element(f"<request xmlns='{NS_UPLOAD}' filename='a.txt' size='{bad_size}'/>"))
            with pytest.raises(IqError) as caught:
                await iq.send(timeout=10)
            assert caught.value.iq["error"]["condition"] == "bad-request"
        await client.close()

    run(scenario())


def test_other_requests_to_the_service_get_errors(xmppd, user):
    async def scenario():
        client = await login(xmppd, *user)
        for kind, payload, condition in (
                ("set", f"<request xmlns='{NS_UPLOAD}' filename='a.txt' size='5'/>", "service-unavailable"),
                ("get", "<query xmlns='jabber:iq:version'/>", "service-unavailable"),
                ("get", "<query xmlns='http://jabber.org/protocol/disco#info' node='x'/>", "item-not-found")):
            iq = client.Iq(stype=kind, sto=UPLOAD)
            iq.xml.append(xml_element(payload))
            with pytest.raises(IqError) as caught:
                await iq.send(timeout=10)
            assert caught.value.iq["error"]["condition"] == condition, payload
        assert (await client.plugin["xep_0199"].ping(UPLOAD, timeout=10)) is not None
        client.send_message(mto=UPLOAD, mbody="hello?")
        error = await client.next_message(timeout=10)
        assert (error["type"], error["error"]["condition"]) == ("error", "service-unavailable")
        await client.close()

    run(scenario())


def test_quota_counts_slots_and_files(xmppd, user):
    async def scenario():
        client = await login(xmppd, *user)
        for index in range(QUOTA // MAX_SIZE):
            await slot(client, f"part{index}.bin", MAX_SIZE)
        error = await slot_error(client, "one-more.bin", 1)
        assert (error["error"]["condition"], error["error"]["type"]) == ("resource-constraint", "wait")
        assert "Quota" in error["error"]["text"]
        await client.close()

    run(scenario())


def test_bad_puts_get_the_http_errors(xmppd, user):
    data = b"x" * 100

    async def scenario():
        client = await login(xmppd, *user)
        put, headers, get = await slot(client, "notes.txt", len(data), "text/plain")
        other_put, other_headers, _ = await slot(client, "other.txt", len(data), "text/plain")
        plain = {"Content-Type": "text/plain"}
        assert (await request("PUT", put, data, plain))[0] == 401
        assert (await request("PUT", put, data, {**plain, **other_headers}))[0] == 403
        assert (await request("PUT", put, data, {**plain, "Authorization": "Bearer 99.nonsense"}))[0] == 403
        assert (await request("PUT", put, data[:-1], {**plain, **headers}))[0] == 400
        assert (await request("PUT", put, data + b"x", {**plain, **headers}))[0] == 413
        assert (await request("PUT", put, data, {"Content-Type": "image/png", **headers}))[0] == 400
        assert (await request("GET", get))[0] == 404   # nothing stored yet
        assert (await request("PUT", put.replace("notes.txt", "other.txt"), data, {**plain, **headers}))[0] == 404
        assert (await request("PUT", put, data, {**plain, **headers}))[0] == 201
        assert (await request("PUT", put, b"y" * 100, {**plain, **headers}))[0] == 409
        status, _, body = await request("GET", get)
        assert (status, body) == (200, data)
        # A body larger than any slot is refused before it is read.
        status, _, _ = await request("PUT", other_put, b"z" * (MAX_SIZE + 1), {**plain, **other_headers})
        assert status == 413
        assert (await request("GET", get.replace(get.split("/")[-2], "A" * 32)))[0] == 404
        assert (await request("GET", get.rsplit("/", 1)[0] + "/..%2F..%2Fxmppd.toml"))[0] == 404
        await client.close()

    run(scenario())
    assert "stored 100 bytes" in xmppd.log()


def test_chunked_uploads_are_counted_as_they_come(xmppd, user):
    async def scenario():
        client = await login(xmppd, *user)
        put, headers, get = await slot(client, "streamed.bin", 700)
        too_many = [b"a" * 400] * 3   # past max_file_size while it arrives
        assert (await request("PUT", put, too_many, headers))[0] == 413
        assert (await request("PUT", put, [b"a" * 400, b"b" * 299], headers))[0] == 400
        assert (await request("PUT", put, [b"a" * 400, b"b" * 300], headers))[0] == 201
        status, _, body = await request("GET", get)
        assert (status, body) == (200, b"a" * 400 + b"b" * 300)
        await client.close()

    run(scenario())
    incoming = xmppd.workdir / "uploads" / ".incoming"
    assert os.listdir(incoming) == []   # no temporary file is left behind


def test_metrics_count_slots_puts_and_bytes(xmppd, user):
    async def scenario():
        client = await login(xmppd, *user)
        put, headers, _ = await slot(client, "counted.txt", 10, "text/plain")
        await slot_error(client, "huge.bin", MAX_SIZE + 1)
        assert (await request("PUT", put, b"0123456789", {"Content-Type": "text/plain"}))[0] == 401
        assert (await request("PUT", put, b"0123456789", {"Content-Type": "text/plain", **headers}))[0] == 201
        _, _, body = await request("GET", f"http://127.0.0.1:{xmppd.metrics_port}/metrics")
        await client.close()
        return body.decode()

    text = run(scenario())
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("xmppd_upload"))
    assert float(samples['xmppd_upload_slot_requests_total{result="granted"}']) >= 1
    assert float(samples['xmppd_upload_slot_requests_total{result="not-acceptable"}']) >= 1
    assert float(samples['xmppd_upload_puts_total{status="201"}']) >= 1
    assert float(samples['xmppd_upload_puts_total{status="401"}']) >= 1
    assert float(samples["xmppd_upload_stored_bytes_total"]) >= 10


def test_file_names_are_checked(xmppd, user):
    name = "été 😀 photo.jpg"
    data = b"\xff\xd8" + b"j" * 50

    async def scenario():
        client = await login(xmppd, *user)
        for bad in ("../../xmppd.toml", "a/b.txt", "..", "x\u202egpj.exe", "a\\b"):
            assert (await slot_error(client, bad, 10))["error"]["condition"] == "bad-request", bad
        assert (await slot_error(client, "n" * 256, 10))["error"]["condition"] == "not-acceptable"
        put, headers, get = await slot(client, name, len(data), "image/jpeg")
        assert get.endswith("/" + quote(name, safe=""))
        assert (await request("PUT", put, data, {"Content-Type": "image/jpeg", **headers}))[0] == 201
        status, headers, body = await request("GET", get)
        assert (status, body) == (200, data)
        assert "filename*=UTF-8''" + quote(name, safe="") in headers["content-disposition"]
        await client.close()

    run(scenario())


def test_an_unused_slot_expires(xmppd, user):
    async def scenario():
        client = await login(xmppd, *user)
        put, headers, _ = await slot(client, "late.txt", 5, "text/plain")
        await asyncio.sleep(11)   # [upload] slot_timeout = 10
        status, _, body = await request("PUT", put, b"hello", {"Content-Type": "text/plain", **headers})
        assert status == 410, body
        await client.close()

    run(scenario())


def test_removing_the_account_removes_its_files(xmppd, user):
    async def scenario():
        client = await login(xmppd, *user)
        put, headers, get = await slot(client, "mine.txt", 5, "text/plain")
        assert (await request("PUT", put, b"hello", {"Content-Type": "text/plain", **headers}))[0] == 201
        slot_id = get.split("/")[-2]
        assert slot_id in stored_files(xmppd)
        await client.plugin["xep_0077"].cancel_registration(timeout=10)
        deadline = time.monotonic() + 15
        while slot_id in stored_files(xmppd) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert slot_id not in stored_files(xmppd)
        assert (await request("GET", get))[0] == 404
        client.abort()

    run(scenario())


def xml_element(text: str):
    import xml.etree.ElementTree as ET

    return ET.fromstring(text)


# ---------------------------------------------------------------- expiry, on a server whose files last seconds

@pytest.fixture(scope="module", params=BACKENDS)
def short_lived(request, tmp_path_factory, certificate):
    """Files expire after 8.6 seconds; the listener speaks HTTPS with the server's certificate."""
    [port] = free_ports(1)
    CA[:] = [certificate[0]]
    return start_xmppd(request, tmp_path_factory, certificate, request.param,
                       upload_toml(port, expire_after=0.0001, tls="true",
                                   public_url=f'"https://127.0.0.1:{port}/files"'))


def test_the_expiry_job_deletes_old_files(short_lived):
    password = secrets.token_urlsafe(12)
    jid = short_lived.add_user(f"u-{secrets.token_hex(4)}", password)

    async def scenario():
        client = await login(short_lived, jid, password)
        put, headers, get = await slot(client, "soon-gone.txt", 5, "text/plain")
        assert (await request("PUT", put, b"hello", {"Content-Type": "text/plain", **headers}))[0] == 201
        assert get.startswith("https://127.0.0.1:")
        assert (await request("GET", get))[1]["content-type"] == "text/plain"
        slot_id = get.split("/")[-2]
        assert slot_id in stored_files(short_lived)
        deadline = time.monotonic() + 30
        while slot_id in stored_files(short_lived) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert slot_id not in stored_files(short_lived)
        assert (await request("GET", get))[0] == 404
        # Its bytes no longer count: the quota holds a full set of new slots again.
        for index in range(QUOTA // MAX_SIZE):
            await slot(client, f"again{index}.bin", MAX_SIZE)
        await client.close()

    run(scenario())
    assert "expired files and slots deleted" in short_lived.log()


# ---------------------------------------------------------------- storage, both backends

def make_slot(username: str, size: int = 100, created_at: datetime | None = None) -> UploadSlot:
    return UploadSlot(secrets.token_urlsafe(24), username, "f.txt", size, "text/plain",
                      created_at or datetime.now(timezone.utc))


def test_storage_reserves_within_the_quota(storage):
    from xmppd.sasl import derive_credentials

    run_storage(storage.create_user("alice", derive_credentials("pw", 4096)))
    first, second = make_slot("alice", 600), make_slot("alice", 400)
    assert run_storage(storage.upload_reserve(first, 1000)) is None
    assert run_storage(storage.upload_reserve(second, 1000)) is None
    assert run_storage(storage.upload_reserve(make_slot("alice", 1), 1000)) == 1000
    assert run_storage(storage.upload_reserve(make_slot("alice", 1), 0)) is None   # 0: no quota
    with pytest.raises(StorageError):
        run_storage(storage.upload_reserve(make_slot("nobody"), 1000))
    assert run_storage(storage.upload_slot(first.slot)) == first
    assert run_storage(storage.upload_slot("missing")) is None


def test_storage_completes_once_and_expires(storage):
    from xmppd.sasl import derive_credentials

    run_storage(storage.create_user("bob", derive_credentials("pw", 4096)))
    now = datetime.now(timezone.utc)
    old_file, new_file = make_slot("bob", created_at=now - timedelta(days=3)), make_slot("bob", created_at=now)
    unused_old, unused_new = make_slot("bob", created_at=now - timedelta(hours=2)), make_slot("bob", created_at=now)
    for slot_ in (old_file, new_file, unused_old, unused_new):
        run_storage(storage.upload_reserve(slot_, 0))
    assert run_storage(storage.upload_complete(old_file.slot, now - timedelta(days=2)))
    assert not run_storage(storage.upload_complete(old_file.slot, now))   # once
    assert run_storage(storage.upload_complete(new_file.slot, now))
    assert run_storage(storage.upload_slot(new_file.slot)).uploaded_at is not None
    assert run_storage(storage.upload_known([old_file.slot, "gone"])) == {old_file.slot}
    expired = run_storage(storage.upload_expire(now - timedelta(days=1), now - timedelta(hours=1)))
    assert expired == sorted([old_file.slot, unused_old.slot])
    assert run_storage(storage.upload_expire(None, now - timedelta(hours=1))) == []
    assert run_storage(storage.upload_known([new_file.slot, unused_new.slot])) == {new_file.slot, unused_new.slot}
    run_storage(storage.delete_user("bob"))
    assert run_storage(storage.upload_known([new_file.slot, unused_new.slot])) == set()


def test_the_job_deletes_rows_then_files_and_sweeps_orphans(storage, tmp_path):
    """Expiry and the sweep, without HTTP: an account removed behind the server's back (xmppctl deluser)
    leaves files that no row names; a PUT that died leaves a temporary file."""
    import dataclasses

    from xmppd.config import default_config
    from xmppd.sasl import derive_credentials
    from xmppd.server import Server
    from xmppd.upload import UploadService

    config = default_config(str(tmp_path))
    config = dataclasses.replace(config, upload=dataclasses.replace(
        config.upload, directory=str(tmp_path / "up"), expire_after=1.0))
    clock = _FixedClock()
    service = UploadService(Server(config, storage), clock=clock)
    for name in ("dave", "erin"):
        run_storage(storage.create_user(name, derive_credentials("pw", 4096)))
    now = datetime.fromtimestamp(clock.seconds(), timezone.utc)
    old, fresh, orphan = make_slot("dave", created_at=now), make_slot("dave", created_at=now), make_slot("erin")
    for slot_, uploaded in ((old, now - timedelta(days=2)), (fresh, now), (orphan, now)):
        run_storage(storage.upload_reserve(slot_, 0))
        run_storage(storage.upload_complete(slot_.slot, uploaded))
        Path(service.files.path(slot_.slot)).write_bytes(b"data")
    stale = Path(service.files.incoming) / "put-stale"
    stale.write_bytes(b"half")
    os.utime(stale, (clock.seconds() - 7200, clock.seconds() - 7200))
    run_storage(storage.delete_user("erin"))

    assert run_storage(service.expire(sweep=False)) == [old.slot]
    assert set(service.files.stored()) == {fresh.slot, orphan.slot}
    assert run_storage(service.expire(sweep=True)) == [orphan.slot]
    assert service.files.stored() == [fresh.slot]
    assert not stale.exists()
    assert run_storage(storage.upload_slot(fresh.slot)) is not None


# ---------------------------------------------------------------- the protocol helpers

@pytest.mark.parametrize("name, condition", [
    ("", "bad-request"), (".", "bad-request"), ("..", "bad-request"), ("../x", "bad-request"),
    ("a\\b", "bad-request"), ("tab\there", "bad-request"), ("rlo\u202egpj.exe", "bad-request"),
    ("x" * 65, "not-acceptable"),
])
def test_bad_file_names(name, condition):
    with pytest.raises(StanzaError) as caught:
        sanitize_filename(name, 64)
    assert caught.value.condition == condition


def test_file_names_are_normalised():
    assert sanitize_filename(" Cafe\u0301.txt ", 64) == "Café.txt"


def test_content_types():
    assert parse_content_type(None) == "application/octet-stream"
    assert parse_content_type("Image/JPEG") == "image/jpeg"
    assert parse_content_type("text/plain; charset=UTF-8") == "text/plain; charset=UTF-8"
    for bad in ("jpeg", "text/plain\r\nX-Evil: 1", "a/b/c", "x" * 300 + "/y"):
        with pytest.raises(StanzaError):
            parse_content_type(bad)


def test_tokens_bind_slot_size_type_and_expiry():
    key = secrets.token_bytes(32)
    slot_ = make_slot("carol")
    token = sign(key, slot_, 2000000000)
    assert verify(key, slot_, token) == 2000000000
    assert verify(secrets.token_bytes(32), slot_, token) is None
    for changed in (UploadSlot(slot_.slot, "carol", "f.txt", 101, "text/plain", slot_.created_at),
                    UploadSlot(slot_.slot, "carol", "f.txt", 100, "image/png", slot_.created_at)):
        assert verify(key, changed, token) is None
    forged_expiry = "2100000000." + token.split(".", 1)[1]
    assert verify(key, slot_, forged_expiry) is None


def test_disposition():
    assert _disposition("image/png", "a.png") == b"inline; filename=\"a.png\"; filename*=UTF-8''a.png"
    assert _disposition("image/svg+xml", "a.svg").startswith(b"attachment;")
    assert _disposition("application/pdf", 'q"é.pdf') == (
        b"attachment; filename=\"q__.pdf\"; filename*=UTF-8''q%22%C3%A9.pdf")




def test_only_local_accounts_get_slots(tmp_path):
    import dataclasses

    from xmppd.config import default_config
    from xmppd.server import Server
    from xmppd.upload import UploadService

    config = default_config(str(tmp_path))
    config = dataclasses.replace(config, upload=dataclasses.replace(config.upload, directory=str(tmp_path / "up")))
    service = UploadService(Server(config, storage=None), clock=_FixedClock())
    iq = etree.fromstring(f"<iq xmlns='jabber:client' type='get' id='1' from='mallory@elsewhere.example/x' "
                         f"to='{UPLOAD}'><request xmlns='{NS_UPLOAD}' filename='a.txt' size='5'/></iq>")
    with pytest.raises(StanzaError) as caught:
        asyncio.run(service.request_slot(iq, iq[0]))
    assert caught.value.condition == "not-allowed"
    assert (tmp_path / "up" / ".slot-key").stat().st_mode & 0o077 == 0


class _FixedClock:
    def seconds(self) -> float:
        return 1.7e9
