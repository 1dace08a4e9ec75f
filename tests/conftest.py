"""Fixtures shared by the test modules: a certificate, and real xmppd processes on both backends."""

from __future__ import annotations

import secrets

import pytest

from tests.harness import XmppdProcess
from tests.storage_fixtures import BACKENDS, storage  # noqa: F401  (the storage fixture)
from xmppd.certs import generate_self_signed




@pytest.fixture(scope="session")
def certificate(tmp_path_factory) -> tuple[str, str]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "localhost.crt"), str(directory / "localhost.key")
    generate_self_signed("localhost", cert, key, extra_names=("127.0.0.1",))
    return cert, key


def start_xmppd(request, tmp_path_factory, certificate, backend: str, extra_toml: str = "") -> XmppdProcess:
    """Start an xmppd process that is stopped (and its data removed) when the requesting scope ends."""
    workdir = tmp_path_factory.mktemp(f"xmppd-{backend}")
    server = XmppdProcess(workdir, backend, *certificate, extra_toml=extra_toml)
    request.addfinalizer(server.cleanup)
    server.start()
    return server


@pytest.fixture(scope="module", params=BACKENDS)
def xmppd(request, tmp_path_factory, certificate) -> XmppdProcess:
    """One server per test module and backend; tests keep apart by using fresh accounts."""
    return start_xmppd(request, tmp_path_factory, certificate, request.param,
                       getattr(request.module, "XMPPD_EXTRA_CONFIG", ""))


@pytest.fixture
def account(xmppd):
    """A factory of fresh accounts: account() -> (jid, password)."""
    def make(prefix: str = "user") -> tuple[str, str]:
        password = secrets.token_urlsafe(12)
        return xmppd.add_user(f"{prefix}-{secrets.token_hex(4)}", password), password

    return make
