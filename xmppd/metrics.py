"""Prometheus metrics and a health check on a local HTTP port ([metrics] port).

GET /metrics is the Prometheus text format; GET /health answers 200 when storage answers and every
listener is up, 503 with the reason otherwise (for a load balancer, systemd or a monitoring check).

Nothing here costs the hot path more than a dict increment: the numbers are read at scrape time
from the objects that keep them anyway (connections, the session table, the journal, the push
module and the app server). What needs storage (queue depth, registrations) is read by a refresh
every REFRESH seconds, so a scrape never waits for the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from twisted.internet.defer import Deferred
from twisted.web import resource, server as web

from .aio import reactor_clock, run_soon

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("xmppd.metrics")

# Seconds between reads of what only storage knows (offline queue depth, push registrations).
REFRESH = 15.0
# Longest a health check waits for storage.
HEALTH_TIMEOUT = 2.0
KINDS = {b"m": "message", b"p": "presence", b"i": "iq"}


def session_counts(server: "Server") -> tuple[int, int]:
    """(live, hibernated) bound sessions; `xmppctl status` shows the same numbers."""
    sessions = [s for resources in server.sessions.values() for s in resources.values()]
    hibernated = sum(1 for s in sessions if s.sm is not None and s.sm.hibernated_at is not None)
    return len(sessions) - hibernated, hibernated


class XmppdCollector:
    """Reads the server's state when Prometheus scrapes."""

    def __init__(self, server: "Server", factories: list, started: float) -> None:
        self.server = server
        self.factories = factories
        self.started = started
        self.offline_depth = 0
        self.push_registrations = 0

    def collect(self):
        server = self.server
        yield GaugeMetricFamily("xmppd_uptime_seconds", "Seconds since xmppd started.",
                                value=time.monotonic() - self.started)
        yield GaugeMetricFamily("xmppd_connections", "Client connections open.",
                                value=sum(len(factory.connections) for factory in self.factories))
        live, hibernated = session_counts(server)
        family = GaugeMetricFamily("xmppd_sessions", "Bound sessions: live, or hibernated (XEP-0198) while "
                                   "their phone is away.", labels=["state"])
        family.add_metric(["live"], live)
        family.add_metric(["hibernated"], hibernated)
        yield family
        family = CounterMetricFamily("xmppd_stanzas", "Stanzas from and to clients, by kind.",
                                     labels=["direction", "kind"])
        counts = server.stanza_counts
        for tag, count in sorted(counts.received.items()):
            family.add_metric(["in", tag.rpartition("}")[2]], count)
        for letter, count in sorted(counts.sent.items()):
            family.add_metric(["out", KINDS.get(letter, "other")], count)
        yield family
        yield GaugeMetricFamily("xmppd_offline_messages", "Messages in storage for their recipients: "
                                "offline messages and messages not yet acknowledged (read every "
                                f"{REFRESH:.0f} s).", value=self.offline_depth)
        journal = server.journal
        yield GaugeMetricFamily("xmppd_journal_pending", "Messages recorded but not yet committed to storage.",
                                value=journal.pending)
        yield CounterMetricFamily("xmppd_journal_commits", "Group commits of the message journal.",
                                  value=journal.commits)
        yield CounterMetricFamily("xmppd_journal_failures", "Failed journal commits (each retried).",
                                  value=journal.failures)
        yield CounterMetricFamily("xmppd_storage_commit_seconds", "Time spent in journal commits (storage "
                                  "latency: divide by xmppd_journal_commits_total).", value=journal.commit_seconds)
        yield from _storage_latency(getattr(server.storage, "latency", {}))
        push = server.modules.get("push")
        if push is not None:
            family = CounterMetricFamily("xmppd_push_publishes", "Notifications published to app servers "
                                         "(XEP-0357), by outcome.", labels=["result"])
            family.add_metric(["accepted"], push.published)
            family.add_metric(["failed"], push.failed)
            yield family
            yield GaugeMetricFamily("xmppd_push_registrations", "Push registrations of all accounts (read every "
                                    f"{REFRESH:.0f} s).", value=self.push_registrations)
        hosted = server.modules.get("appserver")
        if hosted is not None:
            yield from _app_server_metrics(hosted.app_server.metrics)
        upload = server.modules.get("upload")
        if upload is not None:
            yield from _upload_metrics(upload)


def _storage_latency(latency: dict[str, Any]):
    family = HistogramMetricFamily("xmppd_storage_operation_seconds", "How long storage calls took, waiting for "
                                   "the connection included, by operation.", labels=["operation"])
    for name, histogram in sorted(latency.items()):
        family.add_metric([name], _buckets(histogram), sum_value=histogram.total)
    yield family


def _buckets(histogram: Any) -> list[tuple[str, int]]:
    return [(_bucket(bound), count) for bound, count in histogram.cumulative().items()]


def _upload_metrics(upload: Any):
    family = CounterMetricFamily("xmppd_upload_slot_requests", "XEP-0363 slot requests, by outcome (granted or "
                                 "the error condition).", labels=["result"])
    for result, count in sorted(upload.slot_requests.items()):
        family.add_metric([result], count)
    yield family
    family = CounterMetricFamily("xmppd_upload_puts", "HTTP PUTs of uploaded files, by status (201: stored).",
                                 labels=["status"])
    for status, count in sorted(upload.puts.items()):
        family.add_metric([str(status)], count)
    yield family
    yield CounterMetricFamily("xmppd_upload_stored_bytes", "Bytes of files stored by uploads.",
                              value=upload.bytes_stored)


def _app_server_metrics(metrics: Any):
    family = CounterMetricFamily("xmppd_pushes", "Pushes sent to APNs and FCM, by provider and result.",
                                 labels=["provider", "result"])
    for (provider, outcome), count in sorted(metrics.pushes.items()):
        family.add_metric([provider, outcome], count)
    yield family
    family = HistogramMetricFamily("xmppd_push_latency_seconds", "From a publish reaching the app server to "
                                   "the provider's answer.", labels=["provider"])
    for provider, histogram in sorted(metrics.latency.items()):
        family.add_metric([provider], _buckets(histogram), sum_value=histogram.total)
    yield family


def _bucket(bound: Any) -> str:
    return "+Inf" if str(bound) in ("+Inf", "inf") else str(float(bound))


class _Metrics(resource.Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return generate_latest(self.registry)


class _Health(resource.Resource):
    isLeaf = True

    def __init__(self, check) -> None:
        super().__init__()
        self.check = check

    def render_GET(self, request):
        def answer(problems: list[str]) -> None:
            request.setResponseCode(503 if problems else 200)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.write(("\n".join(problems) if problems else "ok").encode() + b"\n")
            request.finish()

        Deferred.fromFuture(asyncio.ensure_future(self.check())).addCallback(answer)
        return web.NOT_DONE_YET


class MetricsEndpoint:
    """The HTTP listener for /metrics and /health, and the refresh of what storage knows."""

    def __init__(self, server: "Server", factories: list, ports: list, clock: Any = None) -> None:
        self.server = server
        self.ports = ports
        self.clock = reactor_clock(clock)
        self.collector = XmppdCollector(server, factories, time.monotonic())
        self.registry = CollectorRegistry()
        self.registry.register(self.collector)
        root = resource.Resource()
        root.putChild(b"metrics", _Metrics(self.registry))
        root.putChild(b"health", _Health(self.health))
        self.site = web.Site(root)
        self.site.noisy = False
        self._timer = None

    def listen(self, reactor: Any, port: int, interface: str) -> Any:
        listening = reactor.listenTCP(port, self.site, interface=interface)
        self._refresh()
        return listening

    def _refresh(self) -> None:
        run_soon(self._read_storage(), "reading metrics from storage")
        self._timer = self.clock.callLater(REFRESH, self._refresh)

    async def _read_storage(self) -> None:
        storage = self.server.storage
        try:
            self.collector.offline_depth = await storage.count_offline()
            if "push" in self.server.modules:
                self.collector.push_registrations = await storage.count_push_registrations()
        except Exception as error:
            log.warning("metrics: storage could not be read: %s", error)

    async def health(self) -> list[str]:
        """What is wrong, if anything: storage that does not answer, a listener that is down."""
        problems = []
        try:
            await asyncio.wait_for(self.server.storage.count_users(), HEALTH_TIMEOUT)
        except Exception as error:
            problems.append(f"storage: {error or type(error).__name__}")
        for port in self.ports:
            if not getattr(port, "connected", True):
                problems.append(f"listener {port.getHost()} is down")
        return problems

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
