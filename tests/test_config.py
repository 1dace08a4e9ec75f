"""Tests for xmppd.config: every refusal is checked word for word, because
those messages are the interface an operator sees."""

import dataclasses
import os
import tomllib
from pathlib import Path

import pytest

from xmppd.config import (
    OPTIONAL_MODULES,
    OPTIONS,
    Config,
    ConfigError,
    default_config,
    load_config,
    options_markdown,
    parse_config,
    render_config,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "conf" / "xmppd.toml"
DOCS = ROOT / "docs" / "configuration.md"

TLS = {"tls": {"certificate": '"certs/fullchain.pem"', "private_key": '"certs/privkey.pem"'}}


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A configuration directory with (dummy) PEM files where TLS expects them."""
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "fullchain.pem").write_text("certificate\n")
    (tmp_path / "certs" / "privkey.pem").write_text("key\n")
    return tmp_path


def document(sections: dict[str, dict[str, str]]) -> str:
    """TOML text from {section: {key: TOML literal}}."""
    out = []
    for section, keys in sections.items():
        out.append(f"[{section}]")
        out += [f"{key} = {literal}" for key, literal in keys.items()]
    return "\n".join(out) + "\n"


def parse(base: Path, **sections: dict[str, str]) -> Config:
    """Parse the given sections on top of a valid [tls] section."""
    merged = {section: dict(keys) for section, keys in TLS.items()}
    for section, keys in sections.items():
        merged.setdefault(section, {}).update(keys)
    return parse_config(document(merged), source="test.toml", base_dir=str(base))


def refusal(base: Path, **sections: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(base, **sections)
    return str(caught.value).splitlines()


# One bad value per key, with the exact message; {base} is the config dir.
BAD = [
    ("server", "domain", '"a..b"',
     'invalid domain name (empty label in domainpart); must be a DNS domain name such as '
     '"example.org" (internationalized names allowed)'),
    ("server", "admins", '["alice"]',
     '"alice" is not a bare JID (user@domain); must be a list of distinct bare JIDs '
     '(user@domain) at [server] domain'),
    ("logging", "level", '"verbose"', 'must be one of "debug", "info", "warning", "error"'),
    ("logging", "file", "5", 'must be a file path, or "" for standard error'),
    ("storage", "backend", '"mysql"', 'must be one of "sqlite", "postgresql"'),
    ("storage", "sqlite_path", '""', "must be a file path"),
    ("storage", "postgresql_dsn", '"nonsense"',
     'invalid connection string (missing "=" after "nonsense" in connection info '
     'string); must be a libpq connection string such as "host=/run/postgresql '
     'dbname=xmppd" or "postgresql://xmppd@db.example.org/xmppd", or "" for none'),
    ("storage", "postgresql_pool_size", "0", "must be an integer from 1 to 1000"),
    ("tls", "certificate", '"missing.pem"',
     "cannot read {base}/missing.pem: No such file or directory"),
    ("tls", "private_key", '"certs"', "cannot read {base}/certs: Is a directory"),
    ("c2s", "interfaces", '["127.0.0.1", "localhost"]',
     '"localhost" is not an IP address; must be a non-empty list of distinct IP '
     'addresses ("0.0.0.0" and "::" mean all)'),
    ("c2s", "port", "70000",
     "must be an integer from 0 to 65535 (0 disables the listener)"),
    ("c2s", "direct_tls_port", "-1",
     "must be an integer from 0 to 65535 (0 disables the listener)"),
    ("c2s", "require_encryption", '"yes"', "must be true or false"),
    ("c2s", "max_stanza_size", "9999", "must be an integer from 10000 to 16777216 (bytes)"),
    ("c2s", "connection_timeout", "0", "must be a number greater than 0 (seconds)"),
    ("c2s", "ping_interval", "-1.5", "must be a number greater than 0 (seconds)"),
    ("c2s", "ping_timeout", "inf", "must be a number greater than 0 (seconds)"),
    ("c2s", "max_bytes_per_second", "-1",
     "must be an integer from 0 to 1000000000 (bytes per second; 0 turns the limit off)"),
    ("c2s", "max_unauthenticated_per_address", "0", "must be an integer from 1 to 100000"),
    ("c2s", "max_resources_per_account", "10001", "must be an integer from 1 to 10000"),
    ("offline", "max_messages", "0", "must be an integer from 1 to 1000000 (messages)"),
    ("pep", "max_items", "0", "must be an integer from 1 to 100000 (items)"),
    ("pep", "max_nodes", "100001", "must be an integer from 1 to 100000 (nodes)"),
    ("blocking", "max_items", "100001", "must be an integer from 1 to 100000 (JIDs)"),
    ("csi", "max_hold", "0.05", "must be a number from 0.1 to 3600 (seconds)"),
    ("csi", "max_buffered", "0", "must be an integer from 1 to 10000 (stanzas)"),
    ("stream_mgmt", "resume_timeout", "0", "must be a number from 1 to 86400 (seconds)"),
    ("stream_mgmt", "max_queue", "5", "must be an integer from 10 to 1000000 (stanzas)"),
    ("stream_mgmt", "request_after_stanzas", "0", "must be an integer from 1 to 10000 (stanzas)"),
    ("stream_mgmt", "request_after_seconds", "true", "must be a number from 0.1 to 3600 (seconds)"),
    ("stream_mgmt", "ack_timeout", "7200", "must be a number from 1 to 3600 (seconds)"),
    ("push", "max_registrations", "0", "must be an integer from 1 to 100 (devices)"),
    ("push", "registration_expiry", "0.5", "must be a number from 1 to 3650 (days)"),
    ("push", "coalesce_window", "-1", "must be a number from 0 to 600 (seconds)"),
    ("push", "max_strikes", "0", "must be an integer from 1 to 1000 (failures)"),
    ("push", "include_sender", '"no"', "must be true or false"),
    ("push", "include_body", "1", "must be true or false"),
    ("push", "hibernation_timeout", "-1", "must be a number from 0 to 2592000 (seconds)"),
    ("appserver", "domain", "5", 'must be a string, or ""'),
    ("appserver", "default_apns_app", "[]", 'must be a string, or ""'),
    ("appserver", "default_fcm_app", "false", 'must be a string, or ""'),
    ("appserver", "rate_limit", "0", "must be a number from 0.01 to 1000 (pushes per second)"),
    ("appserver", "rate_burst", "0", "must be an integer from 1 to 1000 (pushes)"),
    ("appserver", "registration_expiry", "0", "must be a number from 1 to 3650 (days)"),
    ("appserver", "apps", "3",
     "must be tables [appserver.apps.NAME] with the keys listed under [appserver.apps.NAME]"),
    ("auth", "mechanisms", "[]",
     'must be a non-empty list of distinct names from "SCRAM-SHA-256", '
     '"SCRAM-SHA-1", "PLAIN"'),
    ("auth", "channel_binding", "1", "must be true or false"),
    ("auth", "allow_unencrypted_plain", "\"yes\"", "must be true or false"),
    ("auth", "scram_iterations", "4095", "must be an integer from 4096 to 1000000"),
    ("auth", "throttle_free_failures", "1001", "must be an integer from 0 to 1000"),
    ("auth", "throttle_max_delay", "3600.5", "must be a number from 0 to 3600 (seconds)"),
    ("auth", "throttle_window", "0.0", "must be a number greater than 0 (seconds)"),
    ("modules", "enabled", '["vcard", "muc"]',
     '"muc" is not one of these; must be a list of distinct names from "version", '
     '"vcard", "register", "offline", "csi", "stream_mgmt", "push", "appserver", "upload", "extdisco", "pep", "private", "carbons", "blocking", "mam"'),
    ("version", "show_os", '"false"', "must be true or false"),
    ("mam", "default", '"sometimes"', 'must be one of "always", "never", "roster"'),
    ("mam", "retention", "-1", "must be a number from 0 to 36500 (days; 0 keeps messages for ever)"),
    ("mam", "max_page_size", "0", "must be an integer from 1 to 10000 (messages)"),
    ("metrics", "port", "70000", "must be an integer from 0 to 65535 (0 turns the endpoint off)"),
    ("metrics", "interface", '""', "must be a string (not empty)"),
    ("control", "socket", "5", 'must be a file path of at most 107 bytes, or "" for no control socket'),
    ("register", "min_interval", "-1",
     "must be a number of at least 0 (seconds; 0 turns the limit off)"),
    ("register", "min_password_length", "0",
     "must be an integer from 1 to 1024 (characters)"),
    ("upload", "domain", "1", 'must be a string, or ""'),
    ("upload", "interfaces", "[]",
     'must be a non-empty list of distinct IP addresses ("0.0.0.0" and "::" mean all)'),
    ("upload", "port", "0", "must be an integer from 1 to 65535"),
    ("upload", "tls", '"yes"', "must be true or false"),
    ("upload", "public_url", "[]", 'must be a string, or ""'),
    ("upload", "directory", '""', "must be a directory path"),
    ("upload", "max_file_size", "0", "must be an integer from 1 to 1099511627776 (bytes)"),
    ("upload", "quota", "-1", "must be an integer from 0 to 1125899906842624 (bytes; 0: no quota)"),
    ("upload", "expire_after", "-1",
     "must be a number from 0 to 36500 (days; 0: files are kept until their account is deleted)"),
    ("upload", "slot_timeout", "5", "must be a number from 10 to 86400 (seconds)"),
    ("upload", "max_filename_length", "8", "must be an integer from 16 to 1024 (characters)"),
    ("extdisco", "services", '"turn.example.org"',
     "must be [[extdisco.services]] tables with the keys type, host, port (optional), transport (optional), "
     "secret (optional), ttl (optional), name (optional)"),
]


def test_every_option_has_a_refusal_test():
    assert {(s, k) for s, k, _, _ in BAD} == {(o.section, o.key) for o in OPTIONS}


@pytest.mark.parametrize("section,key,literal,message", BAD,
                         ids=[f"{s}.{k}" for s, k, _, _ in BAD])
def test_bad_value_message(base, section, key, literal, message):
    expected = f"test.toml: [{section}] {key} = {literal}: {message.format(base=base)}"
    assert refusal(base, **{section: {key: literal}}) == [expected]


# --- types ------------------------------------------------------------------

@pytest.mark.parametrize("literal", ["true", "5222.0", '"5222"', "[5222]"])
def test_integer_keys_take_only_integers(base, literal):
    assert refusal(base, c2s={"port": literal}) == [
        f"test.toml: [c2s] port = {literal}: "
        "must be an integer from 0 to 65535 (0 disables the listener)"]


def test_numbers_accept_integers_and_refuse_booleans(base):
    config = parse(base, c2s={"connection_timeout": "30"})
    assert config.c2s.connection_timeout == 30.0
    assert type(config.c2s.connection_timeout) is float
    assert refusal(base, c2s={"ping_timeout": "true"}) == [
        "test.toml: [c2s] ping_timeout = true: must be a number greater than 0 (seconds)"]


def test_huge_integer_for_a_number_is_refused(base):
    literal = "1" + "0" * 400
    assert refusal(base, register={"min_interval": literal}) == [
        f"test.toml: [register] min_interval = {literal}: "
        "must be a number of at least 0 (seconds; 0 turns the limit off)"]


def test_lists_become_tuples(base):
    config = parse(base, auth={"mechanisms": '["PLAIN", "SCRAM-SHA-1"]'},
                   modules={"enabled": "[]"})
    assert config.auth.mechanisms == ("PLAIN", "SCRAM-SHA-1")
    assert config.modules.enabled == ()


def test_list_of_non_strings_is_refused(base):
    assert refusal(base, c2s={"interfaces": "[1, 2]"}) == [
        'test.toml: [c2s] interfaces = [1, 2]: must be a non-empty list of distinct IP '
        'addresses ("0.0.0.0" and "::" mean all)']


def test_duplicates_in_lists_are_refused_after_normalizing(base):
    assert refusal(base, c2s={"interfaces": '["::1", "0:0::1"]'}) == [
        'test.toml: [c2s] interfaces = ["::1", "0:0::1"]: "0:0::1" is listed twice; '
        'must be a non-empty list of distinct IP addresses ("0.0.0.0" and "::" mean all)']


def test_a_table_where_a_value_belongs(base):
    assert refusal(base, c2s={"port": "{ number = 5222 }"}) == [
        "test.toml: [c2s] port = { number = 5222 }: "
        "must be an integer from 0 to 65535 (0 disables the listener)"]


# --- normalization ----------------------------------------------------------

@pytest.mark.parametrize("written,stored", [
    ('"Example.ORG."', "example.org"),
    ('"BÜCHER.example"', "bücher.example"),
    ('"xn--bcher-kva.example"', "bücher.example"),
    ('"localhost"', "localhost"),
])
def test_domain_is_normalized(base, written, stored):
    assert parse(base, server={"domain": written}).server.domain == stored


@pytest.mark.parametrize("written,reason", [
    ('"example.org.."', "invalid domain name (empty label in domainpart)"),
    ('"-bad.example"', "invalid domain name (invalid domainpart: Label must not start or end with a hyphen)"),
])
def test_domain_refusals_say_why(base, written, reason):
    assert refusal(base, server={"domain": written}) == [
        f"test.toml: [server] domain = {written}: {reason}; must be a DNS domain name "
        'such as "example.org" (internationalized names allowed)']


def test_domain_refusal_names_the_bad_character(base):
    # The idna library words this one differently across versions.
    [line] = refusal(base, server={"domain": '"under_score.example"'})
    assert line.startswith(
        'test.toml: [server] domain = "under_score.example": invalid domain name (')
    assert "U+005F" in line
    assert line.endswith('); must be a DNS domain name such as "example.org" '
                         "(internationalized names allowed)")


def test_admins_are_normalized_bare_jids_at_the_domain(base):
    config = parse(base, server={"domain": '"Example.org"',
                                 "admins": '["Alice@EXAMPLE.org", "bob@example.org."]'})
    assert config.server.admins == ("alice@example.org", "bob@example.org")


@pytest.mark.parametrize("jid,reason", [
    ("alice@example.org/phone", "is not a bare JID (user@domain)"),
    ("@example.org", "is not a valid JID (empty localpart)"),
    ("a b@example.org", "is not a valid JID (invalid localpart: DISALLOWED/spaces)"),
    ("alice@exa..mple.org", "is not a valid JID (empty label in domainpart)"),
])
def test_admin_refusals(base, jid, reason):
    assert refusal(base, server={"admins": f'["{jid}"]'}) == [
        f'test.toml: [server] admins = ["{jid}"]: "{jid}" {reason}; must be a list of '
        'distinct bare JIDs (user@domain) at [server] domain']


def test_admins_must_be_at_the_domain(base):
    assert refusal(base, server={"domain": '"example.org"',
                                 "admins": '["a@example.org", "b@other.org", "c@x.org"]'}) == [
        'test.toml: [server] admins = ["a@example.org", "b@other.org", "c@x.org"]: '
        '"b@other.org", "c@x.org" are not at [server] domain = "example.org"']


def test_interfaces_are_normalized(base):
    config = parse(base, c2s={"interfaces": '["::0001", "0.0.0.0", "fe80::1%eth0"]'})
    assert config.c2s.interfaces == ("::1", "0.0.0.0", "fe80::1%eth0")


# --- unknown names ----------------------------------------------------------

def test_unknown_key_lists_allowed_keys(base):
    assert refusal(base, c2s={"prot": "5222"}) == [
        "test.toml: [c2s] prot = 5222: unknown key (did you mean port?); allowed keys in "
        "[c2s]: interfaces, port, direct_tls_port, require_encryption, max_stanza_size, "
        "connection_timeout, ping_interval, ping_timeout, max_bytes_per_second, "
        "max_unauthenticated_per_address, "
        "max_resources_per_account"]


def test_unknown_key_without_a_close_match(base):
    assert refusal(base, version={"zzz": "1"}) == [
        "test.toml: [version] zzz = 1: unknown key; allowed keys in [version]: show_os"]


def test_unknown_section_lists_allowed_sections(base):
    assert refusal(base, srever={"domain": '"example.org"'}) == [
        "test.toml: [srever]: unknown section (did you mean [server]?); allowed sections: "
        "[server], [logging], [storage], [tls], [c2s], [auth], [modules], [metrics], [control], [version], "
        "[register], [offline], [csi], [stream_mgmt], [push], [appserver], [upload], [extdisco], [pep], [blocking], [mam]"]


def test_top_level_key_points_to_its_section(base):
    text = 'domain = "example.org"\n' + document(TLS)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="test.toml", base_dir=str(base))
    assert str(caught.value) == (
        'test.toml: domain = "example.org": unknown top-level key (did you mean [server] '
        "domain?); every key belongs in a section: [server], [logging], [storage], [tls], "
        "[c2s], [auth], [modules], [metrics], [control], [version], [register], [offline], [csi], [stream_mgmt], [push], [appserver], [upload], [extdisco], [pep], [blocking], [mam]")


def test_section_that_is_not_a_table(base):
    text = 'server = "example.org"\n' + document(TLS)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="test.toml", base_dir=str(base))
    assert str(caught.value) == (
        'test.toml: server = "example.org": must be a table, written as a [server] section')


# --- several problems, rules across keys -----------------------------------

def test_all_problems_are_reported_at_once(base):
    text = ('[server]\ndomain = "a..b"\n[c2s]\nport = 70000\nprot = 1\n'
            '[auth]\nscram_iterations = 1\n[bogus]\n')
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="conf/xmppd.toml", base_dir=str(base))
    assert caught.value.errors == (
        "conf/xmppd.toml: [bogus]: unknown section; allowed sections: [server], [logging], "
        "[storage], [tls], [c2s], [auth], [modules], [metrics], [control], [version], [register], [offline], [csi], [stream_mgmt], [push], [appserver], [upload], [extdisco], [pep], [blocking], [mam]",
        'conf/xmppd.toml: [server] domain = "a..b": invalid domain name (empty label in domainpart); '
        'must be a DNS domain name such as "example.org" (internationalized names allowed)',
        "conf/xmppd.toml: [c2s] prot = 1: unknown key (did you mean port?); allowed keys "
        "in [c2s]: interfaces, port, direct_tls_port, require_encryption, max_stanza_size, "
        "connection_timeout, ping_interval, ping_timeout, max_bytes_per_second, "
        "max_unauthenticated_per_address, "
        "max_resources_per_account",
        "conf/xmppd.toml: [c2s] port = 70000: must be an integer from 0 to 65535 "
        "(0 disables the listener)",
        "conf/xmppd.toml: [auth] scram_iterations = 1: must be an integer from 4096 to "
        "1000000",
        'conf/xmppd.toml: [tls] certificate = "": required because [c2s] direct_tls_port '
        "= 5223 turns on the direct TLS listener and [c2s] require_encryption = true",
        'conf/xmppd.toml: [tls] private_key = "": required because [c2s] direct_tls_port '
        "= 5223 turns on the direct TLS listener and [c2s] require_encryption = true",
    )
    assert str(caught.value) == "\n".join(caught.value.errors)


def test_tls_files_required_by_encryption_alone(base):
    text = "[c2s]\ndirect_tls_port = 0\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="x.toml", base_dir=str(base))
    assert caught.value.errors == (
        'x.toml: [tls] certificate = "": required because [c2s] require_encryption = true',
        'x.toml: [tls] private_key = "": required because [c2s] require_encryption = true',
    )


def test_unencrypted_plain_needs_unencrypted_streams(base):
    text = "[c2s]\ndirect_tls_port = 0\nrequire_encryption = false\n[auth]\nallow_unencrypted_plain = true\n"
    assert parse_config(text, source="x.toml", base_dir=str(base)).auth.allow_unencrypted_plain
    text = ('[c2s]\ndirect_tls_port = 0\n[auth]\nallow_unencrypted_plain = true\n'
            '[tls]\ncertificate = "c.pem"\nprivate_key = "k.pem"\n')
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="x.toml", base_dir=str(base), check_files=False)
    assert str(caught.value) == ("x.toml: [auth] allow_unencrypted_plain = true: has no effect while "
                                 "[c2s] require_encryption = true (no login happens without TLS then)")


def test_tls_key_required_with_certificate(base):
    text = ('[c2s]\ndirect_tls_port = 0\nrequire_encryption = false\n'
            '[tls]\ncertificate = "certs/fullchain.pem"\n')
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="x.toml", base_dir=str(base))
    assert str(caught.value) == (
        'x.toml: [tls] private_key = "": required because [tls] certificate is set')


def test_no_tls_files_needed_when_tls_is_off(base):
    config = parse_config("[c2s]\ndirect_tls_port = 0\nrequire_encryption = false\n",
                          base_dir=str(base))
    assert (config.tls.certificate, config.tls.private_key) == ("", "")


def test_tls_files_are_stored_absolute(base):
    config = parse(base)
    assert config.tls.certificate == str(base / "certs" / "fullchain.pem")
    assert config.tls.private_key == str(base / "certs" / "privkey.pem")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_tls_file(base):
    (base / "certs" / "privkey.pem").chmod(0)
    assert refusal(base) == [
        f'test.toml: [tls] private_key = "certs/privkey.pem": cannot read '
        f"{base}/certs/privkey.pem: Permission denied"]


def test_postgresql_needs_a_dsn(base):
    assert refusal(base, storage={"backend": '"postgresql"'}) == [
        'test.toml: [storage] postgresql_dsn = "": required when [storage] backend = '
        '"postgresql"']
    config = parse(base, storage={"backend": '"postgresql"',
                                  "postgresql_dsn": '"host=127.0.0.1 dbname=test"'})
    assert config.storage.postgresql_dsn == "host=127.0.0.1 dbname=test"


def test_listeners_need_distinct_ports(base):
    assert refusal(base, c2s={"port": "5223"}) == [
        "test.toml: [c2s] direct_tls_port = 5223: must differ from [c2s] port = 5223"]
    config = parse(base, c2s={"port": "0", "direct_tls_port": "0"})
    assert (config.c2s.port, config.c2s.direct_tls_port) == (0, 0)


def test_rules_skip_keys_that_already_failed(base):
    # The bad port is reported once; the TLS rule does not guess around it.
    assert refusal(base, c2s={"direct_tls_port": '"x"'}, tls={"certificate": '""'}) == [
        'test.toml: [c2s] direct_tls_port = "x": must be an integer from 0 to 65535 '
        "(0 disables the listener)"]


# --- paths ---------------------------------------------------------------------

def test_relative_paths_resolve_against_base_dir(base):
    config = parse(base, storage={"sqlite_path": '"data/../db/x.sqlite3"'},
                   logging={"file": '"log/xmppd.log"'})
    assert config.storage.sqlite_path == str(base / "db" / "x.sqlite3")
    assert config.logging.file == str(base / "log" / "xmppd.log")


def test_absolute_and_empty_paths_stay(base):
    config = parse(base, storage={"sqlite_path": '"/var/lib/xmppd/xmppd.sqlite3"'},
                   logging={"file": '""'})
    assert config.storage.sqlite_path == "/var/lib/xmppd/xmppd.sqlite3"
    assert config.logging.file == ""


def test_load_config_resolves_against_the_files_directory(base, tmp_path_factory,
                                                          monkeypatch):
    path = base / "xmppd.toml"
    path.write_text(document({**TLS, "storage": {"sqlite_path": '"x.sqlite3"'}}))
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    config = load_config(path)
    assert config.path == str(path)
    assert config.storage.sqlite_path == str(base / "x.sqlite3")
    assert config.tls.certificate == str(base / "certs" / "fullchain.pem")


def test_load_config_relative_path_is_stored_absolute(base, monkeypatch):
    (base / "xmppd.toml").write_text(document(TLS))
    monkeypatch.chdir(base)
    assert load_config("xmppd.toml").path == str(base / "xmppd.toml")


# --- reading the file ----------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}: cannot read the configuration file: No such file or directory")


def test_syntax_error_names_the_line(base):
    with pytest.raises(ConfigError) as caught:
        parse_config('[server]\ndomain = "x"\nport 5222\n', source="x.toml")
    # The wording is tomllib's; the line number is what the operator needs.
    assert str(caught.value).startswith("x.toml: invalid TOML: ")
    assert "(at line 3, column 6)" in str(caught.value)


def test_syntax_error_at_end_of_document_names_the_line():
    with pytest.raises(ConfigError) as caught:
        parse_config("[server]\n\ndomain =", source="x.toml")
    assert str(caught.value).startswith("x.toml: invalid TOML: ")
    assert str(caught.value).endswith("(at end of document, line 3)")


def test_duplicate_key_is_a_syntax_error():
    with pytest.raises(ConfigError) as caught:
        parse_config("[c2s]\nport = 1\nport = 2\n[auth]\n", source="x.toml")
    assert str(caught.value).startswith("x.toml: invalid TOML: ")
    assert "(at line 3, column 9)" in str(caught.value)


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[server]\n# caf\u00e9\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: invalid TOML: not UTF-8 (at line 2)"


# --- defaults, example, rendering, docs ----------------------------------------

def test_defaults(tmp_path):
    config = default_config(str(tmp_path))
    assert config.path is None
    assert config.server.domain == "localhost"
    assert config.server.admins == ()
    assert config.storage.sqlite_path == str(tmp_path / "xmppd.sqlite3")
    assert config.control.socket == str(tmp_path / "xmppd.sock")
    assert config.c2s.interfaces == ("127.0.0.1", "::1")
    assert config.auth.mechanisms == ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")
    assert config.modules.enabled == ("version", "vcard", "offline", "csi", "stream_mgmt", "push", "pep", "private",
                                      "carbons", "blocking", "mam")
    assert config.upload.directory == str(tmp_path / "uploads")
    for option in OPTIONS:
        if (option.section, option.key) not in (("storage", "sqlite_path"), ("upload", "directory"),
                                                ("control", "socket")):
            assert getattr(getattr(config, option.section), option.key) == option.default
    assert set(config.modules.enabled) <= set(OPTIONAL_MODULES)


def test_a_file_with_only_tls_takes_every_default(base):
    assert dataclasses.replace(parse(base), tls=default_config(str(base)).tls) == \
        default_config(str(base))


def example_text() -> str:
    return EXAMPLE.read_text(encoding="utf-8")


def test_example_loads_with_tls_files_present(base):
    config = parse_config(example_text(), source=str(EXAMPLE), base_dir=str(base))
    assert config.tls.certificate == str(base / "certs" / "fullchain.pem")
    assert config.storage.sqlite_path == "/var/lib/xmppd/xmppd.sqlite3"


def test_example_in_place_fails_only_for_the_tls_files():
    if (EXAMPLE.parent / "certs").exists():
        pytest.skip("conf/certs exists in this tree")
    with pytest.raises(ConfigError) as caught:
        load_config(EXAMPLE)
    assert caught.value.errors == (
        f'{EXAMPLE}: [tls] certificate = "certs/fullchain.pem": cannot read '
        f"{EXAMPLE.parent}/certs/fullchain.pem: No such file or directory",
        f'{EXAMPLE}: [tls] private_key = "certs/privkey.pem": cannot read '
        f"{EXAMPLE.parent}/certs/privkey.pem: No such file or directory",
    )


def test_example_lists_every_key_at_its_default():
    data = tomllib.loads(example_text())
    production = {("storage", "sqlite_path"), ("tls", "certificate"), ("tls", "private_key"),
                  ("control", "socket"), ("upload", "directory")}
    listed = {(section, key) for section, keys in data.items() for key in keys}
    # Tables of tables ([appserver.apps.NAME], [[extdisco.services]]) are shown commented out: their default is none.
    tables = {(o.section, o.key) for o in OPTIONS if o.type in ("table of tables", "array of tables")}
    assert listed == {(o.section, o.key) for o in OPTIONS} - tables
    for section, key in tables:
        assert f"# [{section}.{key}." in example_text() or f"# [[{section}.{key}]]" in example_text()
    for option in OPTIONS:
        if (option.section, option.key) not in production | tables:
            written = data[option.section][option.key]
            expected = list(option.default) if isinstance(option.default, tuple) \
                else option.default
            assert written == expected, (option.section, option.key)


def test_render_config_reparses_to_an_equal_config(base):
    config = parse(base, server={"domain": '"Bücher.Example"',
                                 "admins": '["Root@bücher.example"]'},
                   logging={"file": '"log/x.log"', "level": '"debug"'},
                   storage={"backend": '"postgresql"',
                            "postgresql_dsn": '"host=127.0.0.1 dbname=\'te st\'"'},
                   c2s={"ping_interval": "0.1", "connection_timeout": "1e3"},
                   modules={"enabled": '["register"]'})
    text = render_config(config)
    again = parse_config(text, source="rendered", base_dir="/nonexistent")
    assert again == config
    assert again.server.domain == "bücher.example"


def test_render_config_of_a_loaded_file(base):
    path = base / "xmppd.toml"
    path.write_text(example_text(), encoding="utf-8")
    config = load_config(path)
    text = render_config(config)
    assert text.startswith(f"# Effective xmppd configuration (loaded from {path}).\n")
    assert parse_config(text) == dataclasses.replace(config, path=None)


def test_render_config_lists_every_key(tmp_path):
    data = tomllib.loads(render_config(default_config(str(tmp_path))))
    assert {(s, k) for s, keys in data.items() for k in keys} == \
        {(o.section, o.key) for o in OPTIONS if o.type != "table of tables"}   # no apps by default
    assert data["c2s"]["interfaces"] == ["127.0.0.1", "::1"]


def test_push_apps_render_and_reparse(base):
    key = base / "AuthKey.p8"
    key.write_text("not checked here")
    account = base / "firebase.json"
    account.write_text("{}")
    text = document(TLS) + f"""
[appserver]
default_apns_app = "ios"
default_fcm_app = "droid"
[appserver.apps.ios]
type = "apns"
key_file = "{key}"
key_id = "ABCDE12345"
team_id = "TEAM123456"
topic = "org.example.app"
sandbox = true
push_modules = ["exampleProdiOS", "exampleSandboxiOS"]
[appserver.apps.droid]
type = "fcm"
service_account_file = "{account}"
"""
    config = parse_config(text, source="test.toml", base_dir=str(base))
    ios, droid = config.appserver.apps
    assert (ios.name, ios.type, ios.topic, ios.sandbox, ios.push_modules) == \
        ("ios", "apns", "org.example.app", True, ("exampleProdiOS", "exampleSandboxiOS"))
    assert (droid.type, droid.service_account_file, droid.project_id) == ("fcm", str(account), "")
    assert parse_config(render_config(config), base_dir=str(base)) == config


@pytest.mark.parametrize("app, message", [
    ('type = "apns"\nkey_id = 3',
     "test.toml: [appserver.apps.x] key_id = 3: must be a string (not empty)"),
    ('type = "gcm"', 'test.toml: [appserver.apps.x] type = "gcm": must be one of "apns", "fcm"'),
    ('kind = "fcm"', 'test.toml: [appserver.apps.x] kind = "fcm": unknown key (did you mean key_id?); allowed keys in '
     "[appserver.apps.x]: type, push_modules, key_file, key_id, team_id, topic, sandbox, "
     "service_account_file, project_id, endpoint, ca_file"),
    ('type = "fcm"', "test.toml: [appserver.apps.x] service_account_file: is missing; fcm apps need it"),
    ('type = "apns"\nkey_id = "K"', "test.toml: [appserver.apps.x] key_file: is missing; apns apps need it"),
])
def test_push_app_errors_name_the_inner_key(base, app, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(document(TLS) + f"\n[appserver.apps.x]\n{app}\n", source="test.toml", base_dir=str(base))
    assert caught.value.errors == (message,)


def test_push_app_names_must_fit(base):
    text = document(TLS) + """
[appserver]
default_fcm_app = "ios"
[appserver.apps.ios]
type = "apns"
key_file = "/etc/hostname"
key_id = "K"
team_id = "T"
topic = "t"
push_modules = ["m"]
[appserver.apps.ios2]
type = "apns"
key_file = "/etc/hostname"
key_id = "K"
team_id = "T"
topic = "t"
push_modules = ["m"]
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="test.toml", base_dir=str(base))
    assert caught.value.errors == (
        'test.toml: [appserver] default_fcm_app = "ios": must name an fcm app of [appserver.apps] (there: none)',
        'test.toml: [appserver.apps.ios2] push_modules: "m" is listed by [appserver.apps.ios] too; '
        'a pushModule names one app',
    )


@pytest.mark.parametrize("service, message", [
    ('host = "turn.example.org"', "test.toml: [[extdisco.services]] #1 type: is missing"),
    ('type = "turn"\nhost = "turn.example.org"\nport = 0',
     "test.toml: [[extdisco.services]] #1 port = 0: must be an integer from 1 to 65535"),
    ('type = "turns"\nhost = "turn.example.org"\ntransport = "udp"',
     'test.toml: [[extdisco.services]] #1 transport = "udp": must be "tcp" for turns (TURN over TLS)'),
    ('type = "turn"\nhost = "turn.example.org"\nsecrt = "x"',
     'test.toml: [[extdisco.services]] #1 secrt = "x": unknown key (did you mean secret?); allowed keys: '
     "type, host, port, transport, secret, ttl, name"),
])
def test_external_service_errors_name_the_inner_key(base, service, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(document(TLS) + f"\n[[extdisco.services]]\n{service}\n", source="test.toml", base_dir=str(base))
    assert caught.value.errors == (message,)


def test_external_services_take_defaults_and_render_back(base):
    text = document(TLS) + """
[[extdisco.services]]
type = "turns"
host = "turn.example.org"
secret = "s3cret"

[[extdisco.services]]
type = "stun"
host = "192.0.2.1"
"""
    config = parse_config(text, base_dir=str(base))
    turns, stun = config.extdisco.services
    assert (turns.port, turns.transport, turns.ttl, turns.secret) == (5349, "tcp", 86400, "s3cret")
    assert (stun.port, stun.transport, stun.secret) == (3478, "udp", "")
    assert parse_config(render_config(config), base_dir=str(base)) == config


def test_upload_rules(base):
    text = document({"c2s": {"direct_tls_port": "0", "require_encryption": "false"}}) + '\n[upload]\ntls = true\nport = 5222\npublic_url = "ftp://x"\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="test.toml", base_dir=str(base))
    assert caught.value.errors == (
        "test.toml: [upload] tls = true: needs [tls] certificate and private_key",
        'test.toml: [upload] public_url = "ftp://x": must start with "http://" or "https://"',
        "test.toml: [upload] port = 5222: must differ from the ports of [c2s] and [metrics]",
    )


def test_render_config_escapes_strings(base):
    config = parse(base, logging={"file": r'"log/a\"b\\c\td\u007fe\u00e9.log"'})
    assert config.logging.file == str(base / "log" / 'a"b\\c\td\x7fe\u00e9.log')
    text = render_config(config)
    assert r'file = "' + str(base) + r'/log/a\"b\\c\td\u007feé.log"' in text
    assert parse_config(text, base_dir=str(base)) == config


def test_docs_hold_the_generated_option_table():
    text = DOCS.read_text(encoding="utf-8")
    begin = "<!-- BEGIN options: generated by xmppd.config.options_markdown() -->"
    end = "<!-- END options -->"
    generated = text.split(begin, 1)[1].split(end, 1)[0]
    assert generated.strip() == options_markdown().strip()
    for option in OPTIONS:
        assert f"| `{option.key}` |" in generated


def test_docs_say_how_the_file_is_found():
    text = DOCS.read_text(encoding="utf-8")
    assert "xmppd --config PATH" in text
    assert "/etc/xmppd/xmppd.toml" in text


def test_a_control_socket_path_too_long_for_the_kernel(base):
    long_path = "/run/" + "x" * 103
    assert refusal(base, control={"socket": f'"{long_path}"'}) == [
        f'test.toml: [control] socket = "{long_path}": {long_path} is 108 bytes long, more than a Unix '
        'socket allows (107); must be a file path of at most 107 bytes, or "" for no control socket']
    assert parse(base, control={"socket": '"/run/' + "x" * 102 + '"'}).control.socket == "/run/" + "x" * 102
    assert parse(base, control={"socket": '""'}).control.socket == ""
