"""Loading certificates: clear errors that name the file, at start rather than at the first client."""

from __future__ import annotations

import pytest

from xmppd.certs import generate_self_signed
from xmppd.tls import TLSError, TLSSettings


@pytest.fixture
def pairs(tmp_path):
    generate_self_signed("one.example", str(tmp_path / "one.crt"), str(tmp_path / "one.key"))
    generate_self_signed("two.example", str(tmp_path / "two.crt"), str(tmp_path / "two.key"))
    return tmp_path


def test_a_matching_pair_loads_and_gives_an_end_point_hash(pairs):
    settings = TLSSettings.load(str(pairs / "one.crt"), str(pairs / "one.key"))
    assert len(settings.server_end_point) == 32   # SHA-256 of the certificate (ECDSA with SHA-256)


def test_a_key_of_another_certificate_is_refused(pairs):
    with pytest.raises(TLSError, match=r"two\.key does not match .*one\.crt"):
        TLSSettings.load(str(pairs / "one.crt"), str(pairs / "two.key"))


def test_missing_and_garbage_files_are_named(pairs):
    with pytest.raises(TLSError, match=r"cannot read certificate .*missing\.crt"):
        TLSSettings.load(str(pairs / "missing.crt"), str(pairs / "one.key"))
    (pairs / "garbage.key").write_text("not a key")
    with pytest.raises(TLSError, match=r"garbage\.key holds no usable PEM private key"):
        TLSSettings.load(str(pairs / "one.crt"), str(pairs / "garbage.key"))


def test_channel_bindings_are_empty_without_tls(pairs):
    settings = TLSSettings.load(str(pairs / "one.crt"), str(pairs / "one.key"))
    assert settings.channel_bindings(object()) == {}


def test_the_daemon_refuses_to_start_with_a_mismatched_pair(pairs):
    import subprocess
    import sys

    config = pairs / "xmppd.toml"
    config.write_text(f'[tls]\ncertificate = "one.crt"\nprivate_key = "two.key"\n'
                      f'[storage]\nsqlite_path = "x.sqlite3"\n[c2s]\nport = 0\ndirect_tls_port = 0\n')
    done = subprocess.run([sys.executable, "-m", "xmppd.main", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "xmppd could not start" in done.stderr and "two.key does not match" in done.stderr
