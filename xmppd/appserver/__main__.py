"""Run the push app server on its own, as a XEP-0114 component of any XMPP server.

    python -m xmppd.appserver --config appserver.toml

The file is TOML with the same keys as xmppd's own [appserver], [storage] and
[logging] sections, plus where the XMPP server's component port is::

    [appserver]
    domain = "push.example.org"        # the component's JID, as the XMPP server knows it
    component_host = "127.0.0.1"       # the XMPP server's component port (Prosody: 5347)
    component_port = 5347
    component_secret = "…"             # the shared secret the XMPP server has for this component
    default_apns_app = "siskin"        # apps of Conversations-style registrations ("" refuses them)
    default_fcm_app = "conversations"
    rate_limit = 1.0                   # pushes per second per device, and the burst allowed
    rate_burst = 5
    registration_expiry = 90           # days without a push after which a registration is forgotten

    [appserver.apps.conversations]
    type = "fcm"
    service_account_file = "/etc/xmppd/fcm-service-account.json"

    [appserver.apps.siskin]
    type = "apns"
    key_file = "/etc/xmppd/AuthKey_ABCDE12345.p8"
    key_id = "ABCDE12345"
    team_id = "TEAM123456"
    topic = "org.example.siskin"
    push_modules = ["siskinProd"]      # Monal/fpush-style pushModule names that mean this app

    [storage]
    backend = "sqlite"                 # or "postgresql" with postgresql_dsn
    sqlite_path = "appserver.sqlite3"

    [logging]
    level = "info"

In Prosody, for example: ``Component "push.example.org"`` with
``component_secret = "…"``. ``load_config()`` is the one place the file is read
and checked; every problem is reported with the file, "[section] key", the value
and what is allowed, all of them at once.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
import tomllib
from dataclasses import dataclass

from ..config import (AppServerConfig, ConfigError, Domain, Int, Invalid, LoggingConfig, Number, PushApp,
                      StorageConfig, Text, toml_value)
from ..storage import open_storage
from .component import NS_COMPONENT, AppServer, providers_from_config, push_modules_of
from .external import ComponentConnection

log = logging.getLogger("xmppd.appserver")


@dataclass(frozen=True)
class StandaloneConfig:
    """What `python -m xmppd.appserver` needs (see the module docstring for the file)."""

    domain: str
    component_host: str
    component_port: int
    component_secret: str
    default_apns_app: str
    default_fcm_app: str
    rate_limit: float
    rate_burst: int
    registration_expiry: float
    apps: tuple[PushApp, ...]
    storage: StorageConfig
    logging: LoggingConfig
    path: str | None = None


# Keys of [appserver] that only the standalone app server has: validator, default (None: required).
_STANDALONE_KEYS = {
    "domain": (Domain(), None),
    "component_host": (Text(), "127.0.0.1"),
    "component_port": (Int(1, 65535), 5347),
    "component_secret": (Text(), None),
    "registration_expiry": (Number(1, 3650, note="days"), 90.0),
}
# Keys shared with xmppd's [appserver] section (their validators and defaults come from config.py).
_SHARED_KEYS = ("default_apns_app", "default_fcm_app", "rate_limit", "rate_burst", "apps")


def load_config(path: str) -> StandaloneConfig:
    """Read and check the standalone app server's TOML file; ConfigError lists every problem."""
    source = os.fsdecode(path)
    try:
        with open(source, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"{source}: cannot read the configuration file: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: invalid TOML: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: invalid TOML: not UTF-8") from None
    base_dir = os.path.dirname(os.path.abspath(source))
    errors: list[str] = []
    sections = {"appserver": None, "storage": StorageConfig, "logging": LoggingConfig}
    for name, value in data.items():
        if name not in sections:
            errors.append(f"{source}: [{name}]: unknown section; allowed sections: "
                          + ", ".join(f"[{s}]" for s in sections))
        elif not isinstance(value, dict):
            errors.append(f"{source}: {name} = {toml_value(value)}: must be a table, written as a [{name}] section")

    def table(name: str) -> dict:
        value = data.get(name, {})
        return value if isinstance(value, dict) else {}

    def check(section: str, key: str, validator, raw):
        try:
            return validator.convert(raw, base_dir)
        except Invalid as error:
            if error.where is not None:
                shown = "" if error.value is None else f" = {toml_value(error.value)}"
                errors.append(f"{source}: {error.where}{shown}: {error}")
            else:
                errors.append(f"{source}: [{section}] {key} = {toml_value(raw)}: {error}")
            return None

    # [storage] and [logging]: exactly xmppd's sections.
    built = {}
    for section, cls in (("storage", StorageConfig), ("logging", LoggingConfig)):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        given = table(section)
        for key in given:
            if key not in fields:
                errors.append(f"{source}: [{section}] {key} = {toml_value(given[key])}: unknown key; "
                              f"allowed keys in [{section}]: {', '.join(fields)}")
        values = {}
        for key, f in fields.items():
            values[key] = check(section, key, f.metadata["validator"], given.get(key, f.default))
        built[section] = values

    # [appserver]: the shared keys with xmppd's validators, plus the standalone ones.
    given = table("appserver")
    shared = {f.name: f for f in dataclasses.fields(AppServerConfig) if f.name in _SHARED_KEYS}
    allowed = list(_STANDALONE_KEYS) + list(shared)
    for key in given:
        if key not in allowed:
            errors.append(f"{source}: [appserver] {key} = {toml_value(given[key])}: unknown key; "
                          f"allowed keys in [appserver]: {', '.join(allowed)}")
    values = {}
    for key, (validator, default) in _STANDALONE_KEYS.items():
        if key not in given and default is None:
            errors.append(f"{source}: [appserver] {key}: is missing; the standalone app server needs it")
            values[key] = None
        else:
            values[key] = check("appserver", key, validator, given.get(key, default))
    for key, f in shared.items():
        values[key] = check("appserver", key, f.metadata["validator"], given.get(key, f.default))

    if values.get("apps") is not None:
        apps = {app.name: app for app in values["apps"]}
        for key, kind in (("default_apns_app", "apns"), ("default_fcm_app", "fcm")):
            name = values.get(key)
            if name and (name not in apps or apps[name].type != kind):
                known = ", ".join(f'"{n}"' for n, a in apps.items() if a.type == kind) or "none"
                errors.append(f"{source}: [appserver] {key} = {toml_value(name)}: must name an {kind} app "
                              f"of [appserver.apps] (there: {known})")
        owners: dict[str, str] = {}
        for app in apps.values():
            for module in app.push_modules:
                if module in owners:
                    errors.append(f"{source}: [appserver.apps.{app.name}] push_modules: \"{module}\" is listed by "
                                  f"[appserver.apps.{owners[module]}] too; a pushModule names one app")
                owners[module] = app.name
    storage = built["storage"]
    if storage.get("backend") == "postgresql" and not storage.get("postgresql_dsn"):
        errors.append(f"{source}: [storage] postgresql_dsn: is missing; the postgresql backend needs it")
    if errors:
        raise ConfigError("\n".join(errors))
    return StandaloneConfig(
        **values, storage=StorageConfig(**built["storage"]), logging=LoggingConfig(**built["logging"]),
        path=os.path.abspath(source))


async def serve(config: StandaloneConfig, stop: asyncio.Event | None = None) -> None:
    """Open storage, connect to the XMPP server and push until `stop` is set (or forever)."""
    storage = await open_storage(config.storage.backend, sqlite_path=config.storage.sqlite_path,
                                 postgresql_dsn=config.storage.postgresql_dsn,
                                 pool_size=config.storage.postgresql_pool_size)
    try:
        providers = providers_from_config(config.apps)
        connection = ComponentConnection(config.component_host, config.component_port, config.domain,
                                         config.component_secret)
        server = AppServer(
            config.domain, connection.send, storage, providers,
            default_apns_app=config.default_apns_app or None, default_fcm_app=config.default_fcm_app or None,
            push_modules=push_modules_of(config.apps), rate_limit=config.rate_limit, rate_burst=config.rate_burst,
            registration_expiry=config.registration_expiry, stanza_ns=NS_COMPONENT)
        connection.handler = server.handle
        server.start()
        connection.start()
        log.info("push app server %s: apps %s; connecting to %s:%s", config.domain,
                 ", ".join(f"{a.name} ({a.type})" for a in config.apps) or "none",
                 config.component_host, config.component_port)
        try:
            await (stop.wait() if stop is not None else asyncio.Event().wait())
        finally:
            await connection.stop()
            await server.close()
    finally:
        await storage.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xmppd.appserver",
                                     description="The xmppd push app server as a XEP-0114 component.")
    parser.add_argument("--config", required=True, help="the app server's TOML file")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.logging.level.upper(), filename=config.logging.file or None,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(config, stop)

    try:
        asyncio.run(run())
    except Exception as error:   # storage or provider set-up failed: say why, no traceback
        log.error("the push app server stopped: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
