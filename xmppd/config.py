"""The server's one configuration file: a TOML document read at start-up.

Every option is declared once, as a field of the section dataclasses below
(default, validator, help text). Parsing, validation, defaults,
render_config() and the option table of docs/configuration.md are derived
from those declarations, so they cannot disagree with each other.

Problems are collected, not raised at the first one, so that an operator can
fix a broken file in one round: every line names the file, "[section] key",
the bad value and what is allowed.
"""

import dataclasses
import difflib
import ipaddress
import math
import os
import tomllib
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict

from . import jid

# Optional feature modules an operator may enable; the server imports this
# tuple too, so the set of names lives only here.
OPTIONAL_MODULES = ("version", "vcard", "register", "offline", "csi", "stream_mgmt", "push", "appserver",
                    "upload", "extdisco", "pep", "private", "carbons", "blocking",
                    "mam")

# SASL mechanisms the server implements (the -PLUS variants follow
# auth.channel_binding rather than being listed).
SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")

LOG_LEVELS = ("debug", "info", "warning", "error")
STORAGE_BACKENDS = ("sqlite", "postgresql")


class ConfigError(Exception):
    """The configuration cannot be used; str(e) is the report for the operator.

    The report holds one problem per line, each naming the file and the key.
    """

    @property
    def errors(self) -> tuple[str, ...]:
        """The report split into its problems, one per line."""
        return tuple(str(self).splitlines())


class Invalid(Exception):
    """A value was refused; the message follows "[section] key = value: ".

    A validator of a table (such as [appserver.apps.NAME]) names the inner key that is wrong with
    `where` ("[appserver.apps.monal] team_id") and its value with `value`, so that the message
    points at the line to fix rather than at the whole table."""

    def __init__(self, message: str, *, where: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.where = where
        self.value = value


# --- rendering values as TOML (config output and error messages) ----------

def toml_value(value: object) -> str:
    """Write one value the way TOML would, so messages quote the file exactly."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if dataclasses.is_dataclass(value):   # a table in an array of tables, such as [[extdisco.services]]
        value = {k: v for k, v in dataclasses.asdict(value).items() if v != ""}
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    return value.isoformat()  # TOML dates, times and date-times


def _toml_string(text: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
               "\f": "\\f", "\r": "\\r"}
    out = []
    for char in text:
        if char in escapes:
            out.append(escapes[char])
        elif char < " " or char == "\x7f":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else _toml_string(key)


def _quoted(names: tuple[str, ...]) -> str:
    return ", ".join(_toml_string(name) for name in names)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


# --- validators --------------------------------------------------------------

class Validator(ABC):
    """Checks one TOML value and returns it in the form the server uses.

    ``describe()`` is what follows "must be" in an error and fills the
    "allowed values" column of the docs; ``type`` names the TOML type.
    """

    type = "string"

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def convert(self, value: object, base_dir: str) -> object: ...

    def refuse(self, reason: str = "") -> Invalid:
        must = f"must be {self.describe()}"
        return Invalid(f"{reason}; {must}" if reason else must)


def _note(note: str) -> str:
    return f" ({note})" if note else ""


@dataclass(frozen=True)
class Int(Validator):
    low: int
    high: int
    note: str = ""
    type = "integer"

    def describe(self) -> str:
        return f"an integer from {self.low} to {self.high}{_note(self.note)}"

    def convert(self, value: object, base_dir: str) -> int:
        # type() rather than isinstance(): TOML true is a bool, not the integer 1.
        if type(value) is not int or not self.low <= value <= self.high:
            raise self.refuse()
        return value


@dataclass(frozen=True)
class Number(Validator):
    """A float; TOML integers are accepted, inf and nan are not."""

    low: float
    high: float | None = None
    low_excluded: bool = False
    note: str = ""
    type = "number"

    def describe(self) -> str:
        if self.high is not None:
            bounds = f"from {_number(self.low)} to {_number(self.high)}"
        elif self.low_excluded:
            bounds = f"greater than {_number(self.low)}"
        else:
            bounds = f"of at least {_number(self.low)}"
        return f"a number {bounds}{_note(self.note)}"

    def convert(self, value: object, base_dir: str) -> float:
        if type(value) not in (int, float):
            raise self.refuse()
        try:
            number = float(value)
        except OverflowError:
            raise self.refuse() from None
        if (not math.isfinite(number) or number < self.low
                or (self.low_excluded and number == self.low)
                or (self.high is not None and number > self.high)):
            raise self.refuse()
        return number


class Bool(Validator):
    type = "boolean"

    def describe(self) -> str:
        return "true or false"

    def convert(self, value: object, base_dir: str) -> bool:
        if not isinstance(value, bool):
            raise self.refuse()
        return value


@dataclass(frozen=True)
class OneOf(Validator):
    choices: tuple[str, ...]

    def describe(self) -> str:
        return f"one of {_quoted(self.choices)}"

    def convert(self, value: object, base_dir: str) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise self.refuse()
        return value


def normalize_domain(text: str) -> str:
    """The domainpart as the server compares it (RFC 7622 §3.2); raises Invalid with the reason."""
    try:
        return jid.normalize_domain(text)
    except jid.InvalidJID as error:
        raise Invalid(f"invalid domain name ({error})") from None


@dataclass(frozen=True)
class Text(Validator):
    """A string of printable characters (an id, a name)."""

    empty_ok: bool = False

    def describe(self) -> str:
        return "a string" + (', or ""' if self.empty_ok else " (not empty)")

    def convert(self, value: object, base_dir: str) -> str:
        if not isinstance(value, str) or (not value and not self.empty_ok) or not value.isprintable():
            raise self.refuse()
        return value


class Domain(Validator):
    def describe(self) -> str:
        return 'a DNS domain name such as "example.org" (internationalized names allowed)'

    def convert(self, value: object, base_dir: str) -> str:
        if not isinstance(value, str):
            raise self.refuse()
        try:
            return normalize_domain(value)
        except Invalid as error:
            raise self.refuse(str(error)) from None


@dataclass(frozen=True)
class Path(Validator):
    """A file name, made absolute against the configuration file's directory.

    ``empty`` says what "" means where "" is allowed; ``readable`` makes the
    server open the file now, so a wrong path fails at start, not at the
    first TLS handshake.
    """

    what: str = "a file path"
    empty: str = ""
    readable: bool = False

    def describe(self) -> str:
        return f'{self.what}, or "" for {self.empty}' if self.empty else self.what

    def convert(self, value: object, base_dir: str) -> str:
        if not isinstance(value, str) or "\0" in value or (value == "" and not self.empty):
            raise self.refuse()
        if value == "":
            return ""
        path = os.path.normpath(os.path.join(base_dir, value))
        if self.readable:
            try:
                with open(path, "rb"):
                    pass
            except OSError as error:
                raise Invalid(f"cannot read {path}: {error.strerror or error}") from None
        return path


class ConnectionString(Validator):
    """A libpq connection string, parsed by libpq itself to catch typos now."""

    def describe(self) -> str:
        return ('a libpq connection string such as "host=/run/postgresql dbname=xmppd" '
                'or "postgresql://xmppd@db.example.org/xmppd", or "" for none')

    def convert(self, value: object, base_dir: str) -> str:
        if not isinstance(value, str):
            raise self.refuse()
        if value:
            try:
                conninfo_to_dict(value)
            except ProgrammingError as error:
                reason = str(error).strip()
                raise self.refuse(f"invalid connection string ({reason})") from None
        return value


@dataclass(frozen=True)
class Strings(Validator):
    """A TOML array of distinct strings, kept as a tuple in the given order.

    Each item is either one of ``choices`` or accepted (and normalized) by
    ``item``, which raises Invalid with a reason such as "is not an IP
    address".
    """

    items: str
    choices: tuple[str, ...] = ()
    item: Callable[[str], str] | None = None
    non_empty: bool = False
    type = "array of strings"

    def describe(self) -> str:
        which = f" from {_quoted(self.choices)}" if self.choices else ""
        return f"a {'non-empty ' if self.non_empty else ''}list of {self.items}{which}"

    def convert(self, value: object, base_dir: str) -> tuple[str, ...]:
        # A tuple is how the declared defaults spell a TOML array.
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise self.refuse()
        if self.non_empty and not value:
            raise self.refuse()
        result: list[str] = []
        for raw in value:
            if self.item is not None:
                try:
                    normal = self.item(raw)
                except Invalid as error:
                    raise self.refuse(f"{_toml_string(raw)} {error}") from None
            elif raw in self.choices:
                normal = raw
            else:
                raise self.refuse(f"{_toml_string(raw)} is not one of these")
            if normal in result:
                raise self.refuse(f"{_toml_string(raw)} is listed twice")
            result.append(normal)
        return tuple(result)


def _ip_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise Invalid("is not an IP address") from None


def _name(text: str) -> str:
    if not text or not text.isprintable():
        raise Invalid("is not a name (printable, not empty)")
    return text


def _bare_jid(text: str) -> str:
    """Normalize user@domain the way the server will compare it (RFC 7622)."""
    try:
        address = jid.JID.parse(text)
    except jid.InvalidJID as error:
        raise Invalid(f"is not a valid JID ({error})") from None
    if address.local is None or address.resource is not None:
        raise Invalid("is not a bare JID (user@domain)")
    return str(address)


# --- the options --------------------------------------------------------------

def _option(default: object, validator: Validator, help: str) -> object:
    return field(default=default, metadata={"validator": validator, "help": help})


_SECONDS = "seconds"


@dataclass(frozen=True)
class ServerConfig:
    """Which XMPP service this server is."""

    domain: str = _option(
        "localhost", Domain(),
        "The domain this server hosts; accounts are user@domain. Stored lower-cased, "
        "without a final dot, internationalized names in Unicode form.")
    admins: tuple[str, ...] = _option(
        (), Strings("distinct bare JIDs (user@domain) at [server] domain", item=_bare_jid),
        "Local accounts with administrator rights.")


@dataclass(frozen=True)
class LoggingConfig:
    """Where the one log goes and how much it says."""

    level: str = _option(
        "info", OneOf(LOG_LEVELS),
        "Least severe kind of message written to the log.")
    file: str = _option(
        "", Path(empty="standard error"),
        'Log file. "" writes to standard error, which systemd sends to the journal.')


@dataclass(frozen=True)
class StorageConfig:
    """Where accounts, rosters and offline messages are kept."""

    backend: str = _option(
        "sqlite", OneOf(STORAGE_BACKENDS),
        '"sqlite" needs no set-up; "postgresql" suits large or replicated deployments.')
    sqlite_path: str = _option(
        "xmppd.sqlite3", Path(),
        "SQLite database file (backend sqlite). Its directory must be writable by the "
        "server, which keeps the journal next to it.")
    postgresql_dsn: str = _option(
        "", ConnectionString(),
        'Where to connect (backend postgresql; required there). Keep the password in '
        'a ~/.pgpass file rather than here: `xmppctl check-config` prints this value.')
    postgresql_pool_size: int = _option(
        10, Int(1, 1000),
        "Most PostgreSQL connections open at once.")


@dataclass(frozen=True)
class TLSConfig:
    """The certificate clients see; required unless every TLS use is off."""

    certificate: str = _option(
        "", Path("the path of a readable PEM file", empty="none", readable=True),
        "PEM certificate chain for [server] domain, server certificate first. Required "
        "when [c2s] direct_tls_port is not 0 or [c2s] require_encryption is true.")
    private_key: str = _option(
        "", Path("the path of a readable PEM file", empty="none", readable=True),
        "PEM private key of the certificate; only the server's user should be able "
        "to read it.")


@dataclass(frozen=True)
class C2SConfig:
    """The listeners clients connect to, and the limits that protect them."""

    interfaces: tuple[str, ...] = _option(
        ("127.0.0.1", "::1"),
        Strings('distinct IP addresses ("0.0.0.0" and "::" mean all)', item=_ip_address,
                non_empty=True),
        "Addresses both client listeners bind to; the default accepts local clients only.")
    port: int = _option(
        5222, Int(0, 65535, "0 disables the listener"),
        "Client port where streams start in plain text and upgrade with STARTTLS (RFC 6120).")
    direct_tls_port: int = _option(
        5223, Int(0, 65535, "0 disables the listener"),
        "Client port where TLS starts at once (XEP-0368).")
    require_encryption: bool = _option(
        True, Bool(),
        "Make STARTTLS mandatory: no authentication on an unencrypted stream.")
    max_stanza_size: int = _option(
        262144, Int(10000, 16777216, "bytes"),
        "Largest stanza a client may send; a larger one ends the stream with "
        "<policy-violation/>.")
    connection_timeout: float = _option(
        60.0, Number(0, low_excluded=True, note=_SECONDS),
        "Time a new connection has to authenticate and bind a resource before it is closed.")
    ping_interval: float = _option(
        300.0, Number(0, low_excluded=True, note=_SECONDS),
        "Silence from a client after which the server pings it.")
    ping_timeout: float = _option(
        60.0, Number(0, low_excluded=True, note=_SECONDS),
        "Time to wait for the answer to a ping (or any data) before dropping the connection.")
    max_bytes_per_second: int = _option(
        100000, Int(0, 1000000000, "bytes per second; 0 turns the limit off"),
        "Sustained rate at which one connection is read; faster senders wait (bursts up to "
        "max_stanza_size pass at once). Protects the CPU from one flooding client.")
    max_unauthenticated_per_address: int = _option(
        32, Int(1, 100000),
        "Connections from one IP address that may be open before logging in; more are refused.")
    max_resources_per_account: int = _option(
        50, Int(1, 10000),
        "Sessions one account may have at once; another bind gets <resource-constraint/>.")


@dataclass(frozen=True)
class AuthConfig:
    """How clients log in (SASL) and how guessing passwords is slowed down."""

    mechanisms: tuple[str, ...] = _option(
        SASL_MECHANISMS,
        Strings("distinct names", choices=SASL_MECHANISMS, non_empty=True),
        "SASL mechanisms offered, most preferred first.")
    channel_binding: bool = _option(
        True, Bool(),
        "Also offer the SCRAM -PLUS variants, which bind the login to the TLS "
        "connection, when that connection supports channel binding.")
    allow_unencrypted_plain: bool = _option(
        False, Bool(),
        "Offer PLAIN on streams without TLS too (needs [c2s] require_encryption = false), as "
        "Prosody's allow_unencrypted_plain_auth does: the password crosses the network in clear, "
        "so only for load tests or a listener reachable from this machine alone.")
    scram_iterations: int = _option(
        4096, Int(4096, 1000000),
        "PBKDF2 iterations for passwords set from now on; stored ones keep theirs "
        "until they change.")
    throttle_free_failures: int = _option(
        3, Int(0, 1000),
        "Failed logins allowed within throttle_window before further attempts are delayed.")
    throttle_max_delay: float = _option(
        30.0, Number(0, 3600, note=_SECONDS),
        "Longest delay imposed on a login attempt after repeated failures; 0 turns "
        "throttling off.")
    throttle_window: float = _option(
        600.0, Number(0, low_excluded=True, note=_SECONDS),
        "How long a failed login is remembered.")


@dataclass(frozen=True)
class ModulesConfig:
    """Optional features; the core protocol is always on."""

    enabled: tuple[str, ...] = _option(
        ("version", "vcard", "offline", "csi", "stream_mgmt", "push", "pep", "private", "carbons", "blocking",
         "mam"),
        Strings("distinct names", choices=OPTIONAL_MODULES),
        "Optional modules to load: version (XEP-0092), vcard (XEP-0054), "
        "register (XEP-0077 in-band registration: anyone who can connect can create "
        "an account), offline (XEP-0160: keep messages for accounts that are offline; "
        "without it their senders get <service-unavailable/>), csi (XEP-0352: hold "
        "presence, chat states, receipts, markers and PEP notifications for a client "
        "that says it is inactive, such as a phone with its screen off), stream_mgmt "
        "(XEP-0198: acknowledgements, and sessions that survive a broken connection and "
        "are resumed; it loads offline too), push (XEP-0357: wake a sleeping phone through "
        "its push app server; see [push]), appserver (the built-in push app server on "
        "[appserver] domain, which sends to APNs and FCM; see [appserver]), upload (XEP-0363 "
        "HTTP file upload on [upload] domain, with its own HTTP listener; see [upload]), "
        "extdisco (XEP-0215: tell clients about STUN/TURN servers for calls, with "
        "time-limited TURN credentials; see [extdisco]), pep (XEP-0163: each account a pubsub "
        "service for OMEMO keys, avatars, bookmarks; see [pep]), private (XEP-0049 private XML "
        "storage: bookmarks of older clients), carbons (XEP-0280: every device of an account gets "
        "copies of the chats the others send and receive, so a call answered on one stops ringing "
        "on the others), blocking (XEP-0191: users block JIDs and domains; see [blocking]), mam "
        "(XEP-0313: every account's messages are archived on the server, so that each of its "
        "devices reads what it missed; see [mam]).")


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics (/metrics) and a health check (/health) over HTTP."""

    port: int = _option(
        0, Int(0, 65535, "0 turns the endpoint off"),
        "TCP port of the metrics and health endpoint; 0: none. Prometheus reads "
        "http://<interface>:<port>/metrics; /health answers 200 when storage and the "
        "listeners are up, 503 with the reason otherwise.")
    interface: str = _option(
        "127.0.0.1", Text(),
        "Address the endpoint listens on. It has no authentication: keep it local, or "
        "behind a firewall.")


@dataclass(frozen=True)
class UnixSocketPath(Path):
    """A Unix socket's file name: the kernel takes at most 107 bytes (sun_path)."""

    def convert(self, value: object, base_dir: str) -> str:
        path = super().convert(value, base_dir)
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise self.refuse(f"{path} is {len(os.fsencode(path))} bytes long, more than a Unix socket "
                              f"allows ({UNIX_PATH_MAX})")
        return path


UNIX_PATH_MAX = 107


@dataclass(frozen=True)
class ControlConfig:
    """The local control socket that `xmppctl status`, `kick` and friends talk to."""

    socket: str = _option(
        "xmppd.sock", UnixSocketPath("a file path of at most 107 bytes", empty="no control socket"),
        "Unix socket of the running server (mode 0600: only the server's user and root may use it), "
        "best in the server's state directory. Relative paths are taken from the configuration "
        'file\'s directory. "" turns it off (xmppctl then cannot reach the running server).')


@dataclass(frozen=True)
class VersionConfig:
    """Settings of the version module (XEP-0092 Software Version)."""

    show_os: bool = _option(
        False, Bool(),
        "Include the operating system in the answer; off so as not to help attackers.")


@dataclass(frozen=True)
class RegisterConfig:
    """Settings of the register module (XEP-0077 In-Band Registration)."""

    min_interval: float = _option(
        300.0, Number(0, note="seconds; 0 turns the limit off"),
        "Time between two registrations from the same IP address.")
    min_password_length: int = _option(
        8, Int(1, 1024, "characters"),
        "Shortest password accepted when registering or changing a password.")


@dataclass(frozen=True)
class OfflineConfig:
    """Settings of the offline module (XEP-0160 Offline Message Storage)."""

    max_messages: int = _option(
        1000, Int(1, 1000000, "messages"),
        "Messages kept for one account while it is offline; when full, senders get "
        "<resource-constraint/> and nothing is dropped silently.")


@dataclass(frozen=True)
class PepConfig:
    """Settings of the pep module (XEP-0163 Personal Eventing Protocol)."""

    max_items: int = _option(
        256, Int(1, 100000, "items"),
        "Most items one node keeps; a client asking for max_items 'max' gets this many.")
    max_nodes: int = _option(
        256, Int(1, 100000, "nodes"),
        "Most nodes one account may have (OMEMO needs one per device and version).")


@dataclass(frozen=True)
class CSIConfig:
    """Settings of the csi module (XEP-0352 Client State Indication)."""

    max_hold: float = _option(
        60.0, Number(0.1, 3600, note=_SECONDS),
        "Longest time a stanza that does not matter (presence, chat states, receipts, "
        "markers, PEP notifications) waits for an inactive client; then everything held "
        "is sent. What matters (a message with a body, a call, a subscription request, "
        "any iq or error) is sent at once, after what was held.")
    max_buffered: int = _option(
        100, Int(1, 10000, "stanzas"),
        "Stanzas held for one inactive client (newer presence, chat states, markers and "
        "PEP notifications replace older ones); one more sends them all at once.")


@dataclass(frozen=True)
class StreamMgmtConfig:
    """Settings of the stream_mgmt module (XEP-0198 Stream Management)."""

    resume_timeout: float = _option(
        300.0, Number(1, 86400, note=_SECONDS),
        "Longest time a session whose connection broke stays resumable (hibernated: it "
        "stays online and queues what arrives). A client asking for less (max) gets "
        "less. When it is over, unacknowledged messages go to offline storage.")
    max_queue: int = _option(
        1000, Int(10, 1000000, "stanzas"),
        "Unacknowledged stanzas kept for one session. Past it, messages that matter go "
        "to offline storage (nothing is overwritten or dropped) and come back once the "
        "client acknowledges again or resumes; iq requests get an error; presence and "
        "chat states are dropped.")
    request_after_stanzas: int = _option(
        5, Int(1, 10000, "stanzas"),
        "Ask the client for an acknowledgement (<r/>) once this many stanzas are "
        "unacknowledged.")
    request_after_seconds: float = _option(
        10.0, Number(0.1, 3600, note=_SECONDS),
        "Ask for an acknowledgement when a stanza has waited this long for one, however "
        "few are unacknowledged.")
    ack_timeout: float = _option(
        60.0, Number(1, 3600, note=_SECONDS),
        "A client that leaves a request for an acknowledgement unanswered this long is "
        "considered gone: its connection is closed and its session hibernates.")


@dataclass(frozen=True)
class PushConfig:
    """Settings of the push module (XEP-0357 Push Notifications: the account side)."""

    max_registrations: int = _option(
        5, Int(1, 100, "devices"),
        "Push registrations kept per account; enabling one more forgets the least "
        "recently used.")
    registration_expiry: float = _option(
        30.0, Number(1, 3650, note="days"),
        "A registration without a successful push for this long is forgotten.")
    coalesce_window: float = _option(
        2.0, Number(0, 600, note=_SECONDS),
        "The first push for a device goes out at once; what matters within this window "
        "after it is merged into one trailing push. Calls are never delayed or merged.")
    max_strikes: int = _option(
        5, Int(1, 1000, "failures"),
        "Consecutive failed pushes (errors other than 'wait') after which a registration "
        "is disabled; a dead token reported by the app server disables it at once.")
    include_sender: bool = _option(
        False, Bool(),
        "Tell the app server who sent the last message (last-message-sender); off for "
        "privacy: the app server and Apple/Google then learn only that something arrived.")
    include_body: bool = _option(
        False, Bool(),
        "Tell the app server the text of the last message (last-message-body); off for "
        "privacy. Encrypted messages never have their text sent.")
    hibernation_timeout: float = _option(
        259200.0, Number(0, 2592000, note=_SECONDS),
        "How long a hibernated session of a device with push stays resumable, so that the "
        "app a push woke resumes instead of starting over. After [stream_mgmt] "
        "resume_timeout its contacts see it offline; messages go to offline storage and "
        "come back when it resumes. 0: no longer than resume_timeout.")


@dataclass(frozen=True)
class MamConfig:
    """Settings of the mam module (XEP-0313 Message Archive Management)."""

    default: str = _option(
        "always", OneOf(("always", "never", "roster")),
        "What is archived for an account that has not chosen (XEP-0441 preferences): "
        "\"always\" every message with content, \"never\" none, \"roster\" only messages "
        "with contacts in its roster (each such message costs a roster read).")
    retention: float = _option(
        0.0, Number(0, 36500, note="days; 0 keeps messages for ever"),
        "Archived messages older than this are deleted (checked every hour, oldest first).")
    max_page_size: int = _option(
        250, Int(1, 10000, "messages"),
        "Most messages one query returns; a client asking for more (or for no limit) gets "
        "this many and pages on with RSM.")


@dataclass(frozen=True)
class PushApp:
    """One app the push app server can reach: an iOS app through APNs or an Android app through FCM."""

    name: str
    type: str                       # "apns" | "fcm"
    push_modules: tuple[str, ...]   # Monal/fpush 'pushModule' names that mean this app
    key_file: str = ""              # APNs: the .p8 token-signing key
    key_id: str = ""
    team_id: str = ""
    topic: str = ""                 # APNs: the app's bundle id
    sandbox: bool = False
    service_account_file: str = ""  # FCM: the service account JSON
    project_id: str = ""
    endpoint: str = ""              # another APNs host:port or FCM base URL (a proxy, a test double)
    ca_file: str = ""               # APNs: the CA to trust for that endpoint


# key -> (validator, types that require it, help)
PUSH_APP_KEYS: dict[str, tuple[Validator, tuple[str, ...], str]] = {
    "type": (OneOf(("apns", "fcm")), ("apns", "fcm"), "apns for iOS apps, fcm for Android apps."),
    "push_modules": (Strings("distinct names", item=lambda text: _name(text)), (),
                     "pushModule names (Monal/fpush style registration) that mean this app."),
    "key_file": (Path("a file path", readable=True), ("apns",),
                 "APNs: the token-signing key (AuthKey_XXXXXXXXXX.p8) from Apple's developer account."),
    "key_id": (Text(), ("apns",), "APNs: the key's id (the XXXXXXXXXX of its file name)."),
    "team_id": (Text(), ("apns",), "APNs: the Apple developer team id."),
    "topic": (Text(), ("apns",), "APNs: the app's bundle id; VoIP pushes go to <topic>.voip."),
    "sandbox": (Bool(), (), "APNs: use the development (sandbox) environment."),
    "service_account_file": (Path("a file path", readable=True), ("fcm",),
                             "FCM: the Firebase service account JSON file."),
    "project_id": (Text(), (), "FCM: the Firebase project id (default: the one in the service account file)."),
    "endpoint": (Text(), (), 'Where to send instead of Apple\'s or Google\'s servers: "host:port" for APNs, '
                 "a base URL for FCM (a proxy, or a local test double)."),
    "ca_file": (Path("a file path", readable=True), (),
                "APNs with an endpoint: the CA certificate that endpoint's TLS certificate is checked against."),
}


@dataclass(frozen=True)
class PushApps(Validator):
    """[appserver.apps.NAME] tables, each one app."""

    type = "table of tables"

    def describe(self) -> str:
        return "tables [appserver.apps.NAME] with the keys listed under [appserver.apps.NAME]"

    def convert(self, value: object, base_dir: str) -> tuple[PushApp, ...]:
        if isinstance(value, tuple):
            return value   # the declared default
        if not isinstance(value, dict):
            raise self.refuse()
        apps = []
        for name, table in value.items():
            where = f"[appserver.apps.{_toml_key(name)}]"
            if not isinstance(table, dict):
                raise Invalid(f"must be a table, written as a {where} section", where=where, value=table)
            for key in table:
                if key not in PUSH_APP_KEYS:
                    hint = _did_you_mean(key, list(PUSH_APP_KEYS), str)
                    raise Invalid(f"unknown key{hint}; allowed keys in {where}: {', '.join(PUSH_APP_KEYS)}",
                                  where=f"{where} {_toml_key(key)}", value=table[key])
            fields: dict[str, object] = {}
            app_type = None
            for key, (validator, required_for, _) in PUSH_APP_KEYS.items():
                if key not in table:
                    continue
                try:
                    fields[key] = validator.convert(table[key], base_dir)
                except Invalid as error:
                    raise Invalid(str(error), where=f"{where} {key}", value=table[key]) from None
                if key == "type":
                    app_type = fields[key]
            if app_type is None:
                raise Invalid('is missing; must be "apns" or "fcm"', where=f"{where} type")
            for key, (_, required_for, _) in PUSH_APP_KEYS.items():
                if app_type in required_for and not fields.get(key):
                    raise Invalid(f"is missing; {app_type} apps need it", where=f"{where} {key}")
            apps.append(PushApp(name=name, push_modules=fields.pop("push_modules", ()), **fields))
        return tuple(apps)


@dataclass(frozen=True)
class AppServerConfig:
    """Settings of the appserver module: the built-in push app server (XEP-0357 app server)."""

    domain: str = _option(
        "", Text(empty_ok=True),
        'The app server\'s own domain; "" means push.<[server] domain>. Clients register '
        "with it and their server publishes notifications to it.")
    default_apns_app: str = _option(
        "", Text(empty_ok=True),
        "The app that Conversations-style (register-push-apns) registrations belong to; "
        '"" refuses them.')
    default_fcm_app: str = _option(
        "", Text(empty_ok=True),
        "The app that Conversations-style (register-push-fcm) registrations belong to; "
        '"" refuses them.')
    rate_limit: float = _option(
        1.0, Number(0.01, 1000, note="pushes per second"),
        "Pushes per second to one device; faster ones are delayed, never dropped. Calls "
        "are never delayed.")
    rate_burst: int = _option(
        5, Int(1, 1000, "pushes"),
        "Pushes to one device that may go out at once before rate_limit applies.")
    registration_expiry: float = _option(
        90.0, Number(1, 3650, note="days"),
        "A device registration nobody pushed to for this long is forgotten.")
    apps: tuple = _option(
        (), PushApps(),
        "The apps this app server sends to, one [appserver.apps.NAME] table each (keys "
        "below).")


@dataclass(frozen=True)
class UploadConfig:
    """Settings of the upload module (XEP-0363 HTTP File Upload), served over HTTP by xmppd itself."""

    domain: str = _option(
        "", Text(empty_ok=True),
        'The upload service\'s own XMPP domain; "" means upload.<[server] domain>. Clients '
        "find it in the server's disco#items and ask it for slots.")
    interfaces: tuple[str, ...] = _option(
        ("127.0.0.1", "::1"),
        Strings('distinct IP addresses ("0.0.0.0" and "::" mean all)', item=_ip_address, non_empty=True),
        "Addresses the HTTP listener binds to. The default suits a reverse proxy on the same "
        "host; serve the network directly with [\"0.0.0.0\", \"::\"] and tls = true.")
    port: int = _option(
        5280, Int(1, 65535),
        "TCP port of the HTTP listener for uploads (PUT) and downloads (GET).")
    tls: bool = _option(
        False, Bool(),
        "Serve HTTPS with [tls] certificate and private_key (which must then name a "
        "certificate valid for the host in public_url). Off: plain HTTP, for a reverse proxy "
        "that terminates TLS.")
    public_url: str = _option(
        "", Text(empty_ok=True),
        'The URL clients reach the listener at, such as "https://upload.example.org/upload" '
        "behind a reverse proxy; slot URLs start with it. \"\" means "
        "http(s)://<domain>:<port>/upload.")
    directory: str = _option(
        "uploads", Path("a directory path"),
        "Where files are kept (created if missing); it must be writable by the server.")
    max_file_size: int = _option(
        104857600, Int(1, 1 << 40, "bytes"),
        "Largest file one slot may hold; advertised to clients (max-file-size).")
    quota: int = _option(
        1073741824, Int(0, 1 << 50, "bytes; 0: no quota"),
        "Bytes of files one account may have stored at once (files not yet expired, and "
        "slots not yet used); a slot request past it gets <resource-constraint/>.")
    expire_after: float = _option(
        30.0, Number(0, 36500, note="days; 0: files are kept until their account is deleted"),
        "Files are deleted this long after their upload, and their URLs stop working.")
    slot_timeout: float = _option(
        300.0, Number(10, 86400, note=_SECONDS),
        "A PUT must start within this time after the slot request. The bytes of a slot never "
        "used stop counting against the quota an hour after that (an upload that started in "
        "time may take so long).")
    max_filename_length: int = _option(
        255, Int(16, 1024, "characters"),
        "Longest file name accepted in a slot request (longer ones get <not-acceptable/>).")


EXTDISCO_TYPES = ("stun", "turn", "turns")
TRANSPORTS = ("udp", "tcp")


@dataclass(frozen=True)
class ExternalService:
    """One STUN or TURN server told to clients (XEP-0215)."""

    type: str
    host: str
    port: int
    transport: str
    secret: str = ""      # coturn's static-auth-secret: credentials are made for each request
    ttl: int = 86400      # seconds the made credentials are valid
    name: str = ""


# key -> (validator, required, help)
EXTERNAL_SERVICE_KEYS: dict[str, tuple[Validator, bool, str]] = {
    "type": (OneOf(EXTDISCO_TYPES), True, "stun, turn (TURN over UDP or TCP) or turns (TURN over TLS)."),
    "host": (Text(), True, "Host name or IP address clients connect to."),
    "port": (Int(1, 65535), False, "Port; default 3478 (5349 for turns)."),
    "transport": (OneOf(TRANSPORTS), False, "udp or tcp; default udp (tcp for turns)."),
    "secret": (Text(), False, "coturn's static-auth-secret (use-auth-secret): clients get a username and "
                              "password made from it that expire after ttl. Without it, no credentials."),
    "ttl": (Int(60, 2592000), False, "Seconds the credentials are valid; default 86400."),
    "name": (Text(), False, "A name clients may show."),
}


@dataclass(frozen=True)
class ExternalServices(Validator):
    """[[extdisco.services]] tables, each one STUN or TURN server."""

    type = "array of tables"

    def describe(self) -> str:
        keys = ", ".join(f"{key}{'' if required else ' (optional)'}"
                         for key, (_, required, _) in EXTERNAL_SERVICE_KEYS.items())
        return f"[[extdisco.services]] tables with the keys {keys}"

    def convert(self, value: object, base_dir: str) -> tuple[ExternalService, ...]:
        if isinstance(value, tuple):
            return value   # the declared default
        if not isinstance(value, list):
            raise self.refuse()
        services = []
        for index, table in enumerate(value, start=1):
            where = f"[[extdisco.services]] #{index}"
            if not isinstance(table, dict):
                raise Invalid("must be a table, written as a [[extdisco.services]] section", where=where, value=table)
            fields: dict[str, object] = {}
            for key, raw in table.items():
                if key not in EXTERNAL_SERVICE_KEYS:
                    hint = _did_you_mean(key, list(EXTERNAL_SERVICE_KEYS), str)
                    raise Invalid(f"unknown key{hint}; allowed keys: {', '.join(EXTERNAL_SERVICE_KEYS)}",
                                  where=f"{where} {_toml_key(key)}", value=raw)
                try:
                    fields[key] = EXTERNAL_SERVICE_KEYS[key][0].convert(raw, base_dir)
                except Invalid as error:
                    raise Invalid(str(error), where=f"{where} {key}", value=raw) from None
            for key, (_, required, _) in EXTERNAL_SERVICE_KEYS.items():
                if required and key not in fields:
                    raise Invalid("is missing", where=f"{where} {key}")
            tls = fields["type"] == "turns"
            fields.setdefault("port", 5349 if tls else 3478)
            fields.setdefault("transport", "tcp" if tls else "udp")
            if tls and fields["transport"] != "tcp":
                raise Invalid('must be "tcp" for turns (TURN over TLS)', where=f"{where} transport",
                              value=fields["transport"])
            services.append(ExternalService(**fields))
        return tuple(services)


@dataclass(frozen=True)
class ExtDiscoConfig:
    """Settings of the extdisco module (XEP-0215 External Service Discovery): STUN and TURN for calls."""

    services: tuple = _option(
        (), ExternalServices(),
        "The STUN and TURN servers clients are told about, one [[extdisco.services]] table each. "
        "Only local accounts that are logged in are answered.")


@dataclass(frozen=True)
class BlockingConfig:
    """Settings of the blocking module (XEP-0191 Blocking Command)."""

    max_items: int = _option(
        1000, Int(1, 100000, "JIDs"),
        "JIDs and domains one account may block; a block command that would exceed it is "
        "refused with <policy-violation/> and changes nothing.")


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``path`` is the file it came from, if any."""

    path: str | None = None
    server: ServerConfig = field(default_factory=ServerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    c2s: C2SConfig = field(default_factory=C2SConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    modules: ModulesConfig = field(default_factory=ModulesConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    version: VersionConfig = field(default_factory=VersionConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    csi: CSIConfig = field(default_factory=CSIConfig)
    stream_mgmt: StreamMgmtConfig = field(default_factory=StreamMgmtConfig)
    push: PushConfig = field(default_factory=PushConfig)
    appserver: AppServerConfig = field(default_factory=AppServerConfig)
    upload: UploadConfig = field(default_factory=UploadConfig)
    extdisco: ExtDiscoConfig = field(default_factory=ExtDiscoConfig)
    pep: PepConfig = field(default_factory=PepConfig)
    blocking: BlockingConfig = field(default_factory=BlockingConfig)
    mam: MamConfig = field(default_factory=MamConfig)


@dataclass(frozen=True)
class Option:
    """One row of the option table, read from the section dataclasses."""

    section: str
    key: str
    type: str
    default: object
    validator: Validator
    help: str


class Schema:
    """A kind of configuration file: a dataclass with one field per section (and `path`), and the
    rules that tie keys together. xmppd's file is SCHEMA; the standalone push app server
    (appserver/__main__.py) has its own, checked by the same code."""

    def __init__(self, result: type, rules: tuple = ()) -> None:
        self.result = result
        self.rules = rules
        types = typing.get_type_hints(result)   # field types may be strings (postponed annotations)
        self.sections: dict[str, type] = {
            f.name: types[f.name] for f in dataclasses.fields(result) if f.name != "path"}
        self.options: tuple[Option, ...] = tuple(
            Option(section, f.name, f.metadata["validator"].type, f.default,
                   f.metadata["validator"], f.metadata["help"])
            for section, cls in self.sections.items() for f in dataclasses.fields(cls))
        self.by_section: dict[str, dict[str, Option]] = {
            section: {o.key: o for o in self.options if o.section == section} for section in self.sections}


# --- rules that involve several keys ----------------------------------------

class _Skip(Exception):
    """A rule needs a key that already failed; its own error suffices."""


Lookup = Callable[[str, str], object]


def _dsn_for_postgresql(get: Lookup) -> Iterator[tuple[str, str, str]]:
    if get("storage", "backend") == "postgresql" and not get("storage", "postgresql_dsn"):
        yield "storage", "postgresql_dsn", 'required when [storage] backend = "postgresql"'


def _tls_files_when_needed(get: Lookup) -> Iterator[tuple[str, str, str]]:
    reasons = []
    if port := get("c2s", "direct_tls_port"):
        reasons.append(f"[c2s] direct_tls_port = {port} turns on the direct TLS listener")
    if get("c2s", "require_encryption"):
        reasons.append("[c2s] require_encryption = true")
    for key, partner in (("certificate", "private_key"), ("private_key", "certificate")):
        why = reasons + ([f"[tls] {partner} is set"] if get("tls", partner) else [])
        if why and not get("tls", key):
            yield "tls", key, "required because " + " and ".join(why)


def _plain_needs_unencrypted_streams(get: Lookup) -> Iterator[tuple[str, str, str]]:
    if get("auth", "allow_unencrypted_plain") and get("c2s", "require_encryption"):
        yield ("auth", "allow_unencrypted_plain",
               "has no effect while [c2s] require_encryption = true (no login happens without TLS then)")


def _distinct_ports(get: Lookup) -> Iterator[tuple[str, str, str]]:
    port = get("c2s", "port")
    if port and port == get("c2s", "direct_tls_port"):
        yield "c2s", "direct_tls_port", f"must differ from [c2s] port = {port}"


def _admins_are_local(get: Lookup) -> Iterator[tuple[str, str, str]]:
    domain = get("server", "domain")
    strangers = [jid for jid in get("server", "admins") if jid.rpartition("@")[2] != domain]
    if strangers:
        verb = "is" if len(strangers) == 1 else "are"
        yield ("server", "admins",
               f"{_quoted(tuple(strangers))} {verb} not at [server] domain = "
               f"{_toml_string(domain)}")


def _push_apps_consistent(get: Lookup) -> Iterator[tuple[str, str, str]]:
    apps = {app.name: app for app in get("appserver", "apps")}
    for key, app_type in (("default_apns_app", "apns"), ("default_fcm_app", "fcm")):
        name = get("appserver", key)
        if name and (name not in apps or apps[name].type != app_type):
            known = _quoted(tuple(n for n, a in apps.items() if a.type == app_type)) or "none"
            yield "appserver", key, f"must name an {app_type} app of [appserver.apps] (there: {known})"
    owners: dict[str, str] = {}
    for app in apps.values():
        for module in app.push_modules:
            if module in owners:
                yield (f"appserver.apps.{_toml_key(app.name)}", "push_modules",
                       f'"{module}" is listed by [appserver.apps.{_toml_key(owners[module])}] too; '
                       "a pushModule names one app")
            owners[module] = app.name


def _upload_settings_consistent(get: Lookup) -> Iterator[tuple[str, str, str]]:
    if get("upload", "tls") and not (get("tls", "certificate") and get("tls", "private_key")):
        yield "upload", "tls", "needs [tls] certificate and private_key"
    url = get("upload", "public_url")
    if url and not (url.startswith("http://") or url.startswith("https://")):
        yield "upload", "public_url", 'must start with "http://" or "https://"'
    if get("upload", "port") in (get("c2s", "port"), get("c2s", "direct_tls_port"), get("metrics", "port")):
        yield "upload", "port", "must differ from the ports of [c2s] and [metrics]"


SCHEMA = Schema(Config, (_dsn_for_postgresql, _tls_files_when_needed, _plain_needs_unencrypted_streams,
                          _distinct_ports, _admins_are_local, _push_apps_consistent,
                          _upload_settings_consistent))
SECTIONS = SCHEMA.sections
OPTIONS = SCHEMA.options
_BY_SECTION = SCHEMA.by_section


# --- loading -------------------------------------------------------------------

def _did_you_mean(name: str, candidates: list[str], show: Callable[[str], str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1)
    return f" (did you mean {show(close[0])}?)" if close else ""


def _section_list(schema: Schema) -> str:
    return ", ".join(f"[{s}]" for s in schema.sections)


def _top_level_errors(data: dict, source: str, schema: Schema) -> Iterator[str]:
    for name, table in data.items():
        if name in schema.sections:
            if not isinstance(table, dict):
                yield (f"{source}: {_toml_key(name)} = {toml_value(table)}: must be a table, "
                       f"written as a [{name}] section")
        elif isinstance(table, dict):
            hint = _did_you_mean(name, list(schema.sections), lambda s: f"[{s}]")
            yield (f"{source}: [{name}]: unknown section{hint}; "
                   f"allowed sections: {_section_list(schema)}")
        else:
            homes = [o for o in schema.options if o.key == name]
            hint = f" (did you mean [{homes[0].section}] {name}?)" if homes else ""
            yield (f"{source}: {_toml_key(name)} = {toml_value(table)}: unknown top-level "
                   f"key{hint}; every key belongs in a section: {_section_list(schema)}")


def _build(data: dict, source: str, base_dir: str, rules: bool, check_files: bool = True,
           schema: Schema = SCHEMA):
    errors = list(_top_level_errors(data, source, schema))
    values: dict[tuple[str, str], object] = {}
    shown: dict[tuple[str, str], object] = {}
    failed: set[tuple[str, str]] = set()

    for section, options in schema.by_section.items():
        table = data.get(section)
        table = table if isinstance(table, dict) else {}
        for key, raw in table.items():
            if key not in options:
                hint = _did_you_mean(key, list(options), str)
                errors.append(
                    f"{source}: [{section}] {_toml_key(key)} = {toml_value(raw)}: unknown "
                    f"key{hint}; allowed keys in [{section}]: {', '.join(options)}")
        for key, option in options.items():
            raw = shown[section, key] = table.get(key, option.default)
            validator = option.validator
            if not check_files and isinstance(validator, Path):
                validator = dataclasses.replace(validator, readable=False)
            try:
                values[section, key] = validator.convert(raw, base_dir)
            except Invalid as error:
                failed.add((section, key))
                if error.where is not None:
                    shown_value = "" if error.value is None else f" = {toml_value(error.value)}"
                    errors.append(f"{source}: {error.where}{shown_value}: {error}")
                else:
                    errors.append(f"{source}: [{section}] {key} = {toml_value(raw)}: {error}")

    def get(section: str, key: str) -> object:
        if (section, key) in failed:
            raise _Skip
        return values[section, key]

    for rule in schema.rules if rules else ():
        try:
            for section, key, message in rule(get):
                value = f" = {toml_value(shown[section, key])}" if (section, key) in shown else ""
                errors.append(f"{source}: [{section}] {key}{value}: {message}")
        except _Skip:
            pass

    if errors:
        raise ConfigError("\n".join(errors))
    return schema.result(**{
        section: cls(**{key: values[section, key] for key in schema.by_section[section]})
        for section, cls in schema.sections.items()})


def parse_config(text: str, *, source: str = "<config>", base_dir: str = ".",
                 check_files: bool = True, schema: Schema = SCHEMA):
    """Parse and check a whole configuration given as TOML text.

    Relative paths are resolved against ``base_dir``; ``source`` names the
    text in error messages. ``check_files=False`` skips opening the files the
    config names (for `xmppctl cert generate`, which is about to create them).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        # tomllib says "at end of document" without a line; operators want one.
        last_line = max(1, len(text.splitlines()))
        message = str(error).replace(
            "(at end of document)", f"(at end of document, line {last_line})")
        raise ConfigError(f"{source}: invalid TOML: {message}") from None
    return _build(data, source, os.path.abspath(base_dir), rules=True, check_files=check_files, schema=schema)


def load_config(path: str | os.PathLike, *, check_files: bool = True, schema: Schema = SCHEMA):
    """Read, parse and check the configuration file at ``path``."""
    source = os.fsdecode(path)
    try:
        with open(source, "rb") as file:
            raw = file.read()
    except OSError as error:
        raise ConfigError(
            f"{source}: cannot read the configuration file: {error.strerror or error}"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise ConfigError(f"{source}: invalid TOML: not UTF-8 (at line {line})") from None
    absolute = os.path.abspath(source)
    config = parse_config(text, source=source, base_dir=os.path.dirname(absolute), check_files=check_files,
                          schema=schema)
    return dataclasses.replace(config, path=absolute)


def default_config(base_dir: str = ".") -> Config:
    """Every option at its default, relative paths resolved against ``base_dir``.

    The rules that tie keys together are not applied: the defaults ask for
    TLS, but name no certificate, which only a real file can supply.
    """
    return _build({}, "<defaults>", os.path.abspath(base_dir), rules=False)


def render_config(config: Config) -> str:
    """The effective configuration as TOML, every key included.

    parse_config() of the output gives back an equal Config (paths are
    written absolute); ``xmppctl check-config`` prints it.
    """
    origin = f"loaded from {config.path}" if config.path else "not loaded from a file"
    lines = [f"# Effective xmppd configuration ({origin}).",
             "# Every option is listed; docs/configuration.md explains them."]
    for section, options in _BY_SECTION.items():
        values = getattr(config, section)
        lines += ["", f"[{section}]"]
        tables = []
        for key, option in options.items():
            value = getattr(values, key)
            if option.type == "table of tables":
                tables += [(f"{section}.{key}.{_toml_key(app.name)}", app) for app in value]
            else:
                lines.append(f"{key} = {toml_value(value)}")
        for name, app in tables:
            lines += ["", f"[{name}]"]
            lines += [f"{key} = {toml_value(getattr(app, key))}" for key in PUSH_APP_KEYS
                      if getattr(app, key) not in ("", ())]
    return "\n".join(lines) + "\n"


def options_markdown() -> str:
    """The option reference of docs/configuration.md, one table per section."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    parts = []
    for section, cls in SECTIONS.items():
        parts += [f"### [{section}]", "", cls.__doc__.strip(), "",
                  "| Key | Default | Allowed values | Description |",
                  "|---|---|---|---|"]
        parts += [f"| `{o.key}` | `{cell(toml_value(o.default))}` | "
                  f"{cell(o.validator.describe())} | {cell(o.help)} |"
                  for o in _BY_SECTION[section].values()]
        parts.append("")
        if section == "appserver":
            parts += ["### [appserver.apps.NAME]", "", PushApp.__doc__.strip(), "",
                      "| Key | Required for | Allowed values | Description |", "|---|---|---|---|"]
            parts += [f"| `{key}` | {', '.join(required) or 'optional'} | {cell(validator.describe())} | "
                      f"{cell(help_)} |" for key, (validator, required, help_) in PUSH_APP_KEYS.items()]
            parts.append("")
    return "\n".join(parts)
