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
``component_secret = "…"``. The file is checked by xmppd's own configuration
code (config.Schema): every problem is reported with the file, "[section] key",
the value and what is allowed, all of them at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..config import (AppServerConfig, ConfigError, Int, LoggingConfig, Schema, StorageConfig, Text,
                      _dsn_for_postgresql, _option, _push_apps_consistent)
from ..config import load_config as load_xmppd_style_config
from ..storage import open_storage
from .component import NS_COMPONENT, AppServer
from .external import ComponentConnection

log = logging.getLogger("xmppd.appserver")


@dataclass(frozen=True)
class ComponentAppServerConfig(AppServerConfig):
    """[appserver] of the standalone app server: xmppd's keys, plus where the XMPP server is."""

    component_host: str = _option(
        "127.0.0.1", Text(), "The XMPP server's host for components (XEP-0114).")
    component_port: int = _option(
        5347, Int(1, 65535), "The XMPP server's component port (Prosody: 5347).")
    component_secret: str = _option(
        "", Text(empty_ok=True), "The secret the XMPP server has for this component (required).")


@dataclass(frozen=True)
class StandaloneConfig:
    """What `python -m xmppd.appserver` reads (see the module docstring for the file)."""

    path: str | None = None
    appserver: ComponentAppServerConfig = field(default_factory=ComponentAppServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def _component_keys(get) -> Iterator[tuple[str, str, str]]:
    for key in ("domain", "component_secret"):
        if not get("appserver", key):
            yield "appserver", key, "is missing; the standalone app server needs it"


STANDALONE = Schema(StandaloneConfig, (_dsn_for_postgresql, _push_apps_consistent, _component_keys))


def load_config(path: str) -> StandaloneConfig:
    """Read and check the standalone app server's file: the same checks and messages as xmppd's."""
    return load_xmppd_style_config(path, schema=STANDALONE)


async def serve(config: StandaloneConfig, stop: asyncio.Event | None = None) -> None:
    """Open storage, connect to the XMPP server and push until `stop` is set (or forever)."""
    settings = config.appserver
    storage = await open_storage(config.storage.backend, sqlite_path=config.storage.sqlite_path,
                                 postgresql_dsn=config.storage.postgresql_dsn,
                                 pool_size=config.storage.postgresql_pool_size)
    try:
        connection = ComponentConnection(settings.component_host, settings.component_port, settings.domain,
                                         settings.component_secret)
        server = AppServer.from_settings(settings.domain, connection.send, storage, settings, stanza_ns=NS_COMPONENT)
        connection.handler = server.handle
        server.start()
        connection.start()
        log.info("push app server %s: apps %s; connecting to %s:%s", settings.domain,
                 ", ".join(f"{a.name} ({a.type})" for a in settings.apps) or "none",
                 settings.component_host, settings.component_port)
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
