"""The `xmppd` daemon: read the config, open storage, listen, run.

Twisted runs on its asyncio reactor so that asyncio libraries (psycopg's async
API, aioapns) share one event loop with the network code.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field

from . import __version__, sdnotify
from .config import Config, ConfigError, load_config

log = logging.getLogger("xmppd")

DEFAULT_CONFIG = "/etc/xmppd/xmppd.toml"
FAKE_SECRET_KEY = "sasl-unknown-user-secret"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xmppd", description="XMPP server for phones that sleep.")
    parser.add_argument("-c", "--config", default=os.environ.get("XMPPD_CONFIG", DEFAULT_CONFIG),
                        help=f"configuration file (default {DEFAULT_CONFIG}, or $XMPPD_CONFIG)")
    parser.add_argument("--demo", metavar="DIR",
                        help="set up DIR (config, SQLite, self-signed certificate, a demo account whose "
                             "password is printed) if needed, then run from it; --config is ignored")
    parser.add_argument("--version", action="version", version=f"xmppd {__version__}")
    args = parser.parse_args(argv)
    try:
        if args.demo:
            from .demo import prepare_demo

            config = prepare_demo(args.demo)
        else:
            config = load_config(args.config)
    except ConfigError as error:
        print(f"xmppd: configuration error:\n{error}", file=sys.stderr)
        return 2
    setup_logging(config)
    return run(config)


def setup_logging(config: Config) -> None:
    """One log for everything, Twisted's messages included."""
    apply_logging(config)
    from twisted.logger import STDLibLogObserver, globalLogBeginner

    globalLogBeginner.beginLoggingTo([STDLibLogObserver(name="twisted")], redirectStandardIO=False)


def apply_logging(config: Config) -> None:
    """Open the log (again: a reload reopens the file, after logrotate moved it) and set the level.
    Raises OSError, with the log unchanged, if the file cannot be opened."""
    handler: logging.Handler
    if config.logging.file:
        handler = logging.FileHandler(config.logging.file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old = list(root.handlers)
    root.handlers[:] = [handler]
    root.setLevel(config.logging.level.upper())
    for previous in old:
        previous.close()


def run(config: Config) -> int:
    from twisted.internet import asyncioreactor

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    from twisted.internet import reactor

    _raise_open_files_limit()
    state = Running(config)
    exit_code = [0]

    def failed(error: BaseException) -> None:
        log.critical("xmppd could not start: %s", error)
        sdnotify.status(f"could not start: {error}")
        exit_code[0] = 1
        reactor.stop()

    def begin() -> None:
        task = asyncio.ensure_future(state.start(reactor))
        task.add_done_callback(lambda t: failed(t.exception()) if not t.cancelled() and t.exception() else None)

    def reload_soon(signum, frame) -> None:
        reactor.callFromThread(state.reload)

    reactor.callWhenRunning(begin)
    reactor.callWhenRunning(signal.signal, signal.SIGHUP, reload_soon)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: _as_deferred(state.stop()))
    reactor.run()
    return exit_code[0]


def _raise_open_files_limit() -> None:
    """Every client is a socket: use all the file descriptors the system allows (the soft limit is
    often 1024, the hard one much higher)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
        except (ValueError, OSError) as error:
            log.warning("could not raise the open files limit from %d: %s", soft, error)


def _as_deferred(coroutine):
    from twisted.internet.defer import Deferred

    return Deferred.fromFuture(asyncio.ensure_future(coroutine))


@dataclass
class Running:
    """Everything a started server holds, so that stop() can release it in order."""
    config: Config
    storage: object = None
    server: object = None
    ports: list = field(default_factory=list)
    factories: list = field(default_factory=list)
    metrics: object = None
    stopping: bool = False
    settings: object = None        # the StreamSettings new client connections get
    tls_listener: object = None    # the direct TLS listener's CurrentCertificate

    async def start(self, reactor) -> None:
        from .auth_throttle import AuthThrottle
        from .c2s import C2SFactory
        from .eager_tcp import listen_tcp, listen_tls
        from .c2s_machine import StreamSettings
        from .config import OPTIONAL_MODULES
        from .server import CORE_MODULES, Server
        from .accounts import open_configured_storage
        from .tls import CurrentCertificate, TLSSettings

        config = self.config
        self.storage = await open_configured_storage(config)
        if self.stopping:
            return  # SIGTERM arrived while storage was opening; stop() takes it from here
        fake_secret = await self.storage.set_setting_if_absent(FAKE_SECRET_KEY, secrets.token_hex(32))
        server = self.server = Server(config, self.storage)
        server.load_modules(CORE_MODULES + tuple(m for m in OPTIONAL_MODULES if m in config.modules.enabled))
        await self._restore_sessions()
        tls = TLSSettings.load(config.tls.certificate, config.tls.private_key) if config.tls.certificate else None
        c2s = config.c2s
        auth = config.auth
        settings = self.settings = StreamSettings(
            domain=server.domain, require_encryption=c2s.require_encryption, tls_available=tls is not None,
            allow_unencrypted_plain=auth.allow_unencrypted_plain,
            mechanisms=auth.mechanisms, channel_binding=auth.channel_binding,
            max_stanza_size=c2s.max_stanza_size, scram_iterations=auth.scram_iterations,
            fake_secret=fake_secret.encode(), register_before_auth="register" in config.modules.enabled,
            bound_features=server.stream_features)
        throttle = AuthThrottle(free_failures=auth.throttle_free_failures, max_delay=auth.throttle_max_delay,
                                base_delay=min(1.0, auth.throttle_max_delay) or 1.0, window=auth.throttle_window)
        listeners = []
        if config.control.socket:
            from .control import ControlCommands, listen

            commands = ControlCommands(server, self.factories, time.monotonic())
            self.ports.append(listen(reactor, config.control.socket, commands))
            listeners.append(f"{config.control.socket} (control)")
        if c2s.port:
            factory = C2SFactory(server, settings, tls, throttle, reactor)
            self.factories.append(factory)
            for interface in c2s.interfaces:
                self.ports.append(listen_tcp(reactor, c2s.port, factory, backlog=1024, interface=interface))
                listeners.append(f"{_host(interface)}:{c2s.port}")
        if c2s.direct_tls_port and tls is not None:
            factory = C2SFactory(server, settings, tls, throttle, reactor, direct_tls=True)
            self.factories.append(factory)
            self.tls_listener = CurrentCertificate(tls)
            for interface in c2s.interfaces:
                self.ports.append(listen_tls(reactor, c2s.direct_tls_port, factory, self.tls_listener,
                                             backlog=1024, interface=interface))
                listeners.append(f"{_host(interface)}:{c2s.direct_tls_port} (direct TLS)")
        if config.metrics.port:
            from .metrics import MetricsEndpoint

            self.metrics = MetricsEndpoint(server, self.factories, self.ports)
            self.ports.append(self.metrics.listen(reactor, config.metrics.port, config.metrics.interface))
            listeners.append(f"{_host(config.metrics.interface)}:{config.metrics.port} (metrics)")
        log.info("xmppd %s serving %s with %s storage; listening on %s", __version__, server.domain,
                 config.storage.backend, ", ".join(listeners) or "nothing")
        sdnotify.ready(f"serving {server.domain}; listening on {', '.join(listeners) or 'nothing'}")

    def reload(self) -> None:
        """SIGHUP (reload.py)."""
        from .reload import reload

        if self.server is not None and not self.stopping:
            sdnotify.reloading("reloading the configuration")
            applied = reload(self)
            sdnotify.ready("configuration reloaded" if applied else
                           "reload failed, the previous configuration stays in use (see the log)")

    def apply_config(self, config: Config) -> None:
        """Run with `config` from now on (reload.merge() kept what needs a restart): new connections get
        the new certificate and [c2s]/[auth] settings, modules re-read their options. Raises TLSError or
        OSError (an unusable certificate or log file) before anything changed."""
        from .tls import TLSSettings

        tls = TLSSettings.load(config.tls.certificate, config.tls.private_key) if config.tls.certificate else None
        apply_logging(config)
        self.config = self.server.config = config
        c2s, auth = config.c2s, config.auth
        self.settings = dataclasses.replace(
            self.settings, require_encryption=c2s.require_encryption, mechanisms=auth.mechanisms,
            channel_binding=auth.channel_binding, max_stanza_size=c2s.max_stanza_size,
            scram_iterations=auth.scram_iterations, allow_unencrypted_plain=auth.allow_unencrypted_plain)
        for factory in self.factories:
            factory.settings = self.settings
            factory.tls = tls
            factory.configure(c2s)
        if self.tls_listener is not None:
            self.tls_listener.settings = tls
        self.server.schedule(self.server.fire("config-reloaded", config), "config-reloaded hooks")

    async def stop(self) -> None:
        """Stop listening, tell clients the server is going away, let work already accepted finish
        (stanzas clients sent, presence it causes), and only then release storage."""
        from twisted.internet.defer import maybeDeferred

        from .aio import drain
        from .c2s import CLOSE_GRACE

        sdnotify.stopping("stopping: telling clients, finishing queued work")
        self.stopping = True
        if self.server is not None:
            self.server.stopping = True   # resumable sessions hibernate as their streams close
        if self.metrics is not None:
            self.metrics.stop()
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(maybeDeferred(port.stopListening).asFuture(loop) for port in self.ports))
        for factory in self.factories:
            for connection in list(factory.connections):
                connection.close_stream("system-shutdown", "the server is stopping", reason="server stopping")
        deadline = loop.time() + CLOSE_GRACE + 1
        while any(factory.connections for factory in self.factories) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for module in (self.server.modules.values() if self.server is not None else ()):
            if hasattr(module, "close"):
                await module.close()   # the push app server answers what waits and closes its providers
        cancelled = await drain(timeout=10.0)
        if cancelled:
            log.warning("stopped %d tasks that did not finish in time", cancelled)
        if self.server is not None:
            await self._save_sessions()
            await self.server.journal.close()   # messages recorded but not committed yet
        if self.storage is not None:
            await self.storage.close()
        log.info("xmppd stopped")

    async def _restore_sessions(self) -> None:
        """Sessions the last graceful stop left resumable become hibernated sessions again."""
        saved = await self.storage.take_resumable_sessions()
        if not saved:
            return
        keeper = self.server.stream_mgmt
        if keeper is None:
            log.info("%d sessions saved by the last stop are dropped: stream_mgmt is not enabled (their "
                     "messages are offline messages)", len(saved))
            return
        await keeper.restore(saved)

    async def _save_sessions(self) -> None:
        """Write every resumable session to storage, once all they were sent is committed, so that
        the restarted server can let their clients resume."""
        keeper = self.server.stream_mgmt
        if keeper is None or not keeper.resumable_sessions():
            return
        for session in keeper.resumable_sessions():
            try:
                await asyncio.wait_for(session.idle(), 5.0)   # what the client sent is handled and counted
            except asyncio.TimeoutError:
                log.warning("%s: stanzas still being handled at stop", session.full)
        if not await self.server.journal.flush(10.0):
            log.error("the journal could not be committed: resumable sessions are not saved (their "
                      "messages that were committed stay offline messages)")
            return
        saved = keeper.saved_state(keeper.clock.seconds())
        try:
            stored = await self.storage.save_resumable_sessions(saved)
        except Exception as error:
            log.error("resumable sessions could not be saved: %s (their messages stay offline messages)", error)
            return
        log.info("%d resumable sessions saved for the restart", stored)


def _host(interface: str) -> str:
    return f"[{interface}]" if ":" in interface else interface


if __name__ == "__main__":
    sys.exit(main())
