"""`epp serve`: the endpoint picker program.

Builds the datastore, director and scheduler, then serves ext_proc over gRPC, gRPC health and the
Prometheus/debug HTTP server; its background loops (resource feed, scraper, GPU poller, Kubernetes
controller, sharing with other replicas) run under one `epp.tasks.TaskOwner`, which restarts a
crashed loop with backoff. While a resource feed is down, readiness is NOT_SERVING. On SIGTERM:
health → NOT_SERVING (Envoy checks it on the ext_proc port and sends new streams to other
replicas), gRPC stop with a grace period, loops cancelled and awaited, clients closed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2_grpc
from prometheus_client import generate_latest

from epp.admission.controller import AdmissionController
from epp.admission.flow_control import FlowControl
from epp.admission.kv_room import room_tokens
from epp.admission.limits import BatchLimitLearner
from epp.admission.tickets import Tickets
from epp.api.model import Pool, ResourceSet
from epp.certs import load_pair, self_signed
from epp.datastore import Datastore
from epp.director import Director
from epp.extproc.service import PROCESS_METHOD, ExternalProcessor, add_to_server, server_options
from epp.gpu import GpuPoller, GpuSettings
from epp.grpcwire.server import LeanServer
from epp.health import CHECK_METHOD, Health
from epp.kvevents.metrics import KvEventsCollector
from epp.kvevents.subscriber import KvEventsSubscriber
from epp.observability import EppMetrics
from epp.peers.sharing import PeerSettings, PeerSharing
from epp.routing import Router
from epp.scheduling.config import load_config
from epp.scheduling.output_length import OutputLengths
from epp.scheduling.registry import build_default_profiles, precise_scorers, service_time_of
from epp.scrape.scraper import Scraper, ScrapeSettings
from epp.sessions import Sessions
from epp.settings import Settings
from epp.sources.files import FolderSource
from epp.tasks import Backoff, TaskOwner
from epp.tracking.tracker import Tracking

if TYPE_CHECKING:
    from epp.kube.runtime import KubeModeConfig, KubeRuntime

log = logging.getLogger("epp.server")

STATIC_POOL = Pool("default", "static", (), (), failure_mode="FailOpen")
RESOURCES = "resources"  # the manifests folder's watch
KUBE_RESOURCES = "kube-resources"  # the API server's feed
FEEDS = frozenset({RESOURCES, KUBE_RESOURCES})  # while one is down, the EPP is not ready


@dataclass(frozen=True, slots=True)
class ServeConfig:
    settings: Settings = field(default_factory=Settings)
    manifests: tuple[str, ...] = ()
    endpoints: tuple[str, ...] = ()  # serve exactly these addresses as one pool, no manifests
    scrape: ScrapeSettings = field(default_factory=ScrapeSettings)
    gpu: GpuSettings = field(default_factory=GpuSettings)
    kube: KubeModeConfig | None = None  # read everything from the API server
    scheduler_config: object = None  # a decoded EndpointPickerConfig document
    reload_interval: float = 0.5
    restart: Backoff = field(default_factory=Backoff)  # delays before a crashed loop runs again
    peers: PeerSettings = field(default_factory=PeerSettings)  # other replicas of this EPP


class EppServer:
    """The running EPP. `start()` returns once every port listens; `stop()` shuts down."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.store = Datastore(BatchLimitLearner())
        self.metrics = EppMetrics()
        s = config.settings
        profiles = (
            load_config(config.scheduler_config, source="--scheduler-config")
            if config.scheduler_config is not None
            else build_default_profiles()
        )
        self.profiles = profiles
        for profile in profiles.values():
            profile.timing = self.metrics.plugin_timing
        f = s.flow
        self.flow = (
            FlowControl(
                self.store,
                f.queue_timeout,
                f.max_queued,
                f.max_queued_bytes,
                max_flow_requests=f.max_flow_queued,
                max_pool_requests=f.max_pool_queued,
                fair=f.fairness,
                fair_reserve=f.fair_reserve,
                on_outcome=self.metrics.queue_outcome,
            )
            if f.enabled
            else None
        )
        service_time = service_time_of(profiles)
        tickets = Tickets(f.queue_timeout, f.fairness_header, s.protocol.trust_control_headers)
        admission = AdmissionController(
            self.store, s.saturation, self.flow, service_time, tickets=tickets
        )
        router = Router(self.store, s.protocol)
        lengths = OutputLengths(prior=service_time.typical_output_tokens)
        self.store.on_answers = lengths.observe_batch  # lengths the engines count
        self.director = Director(
            self.store, router, admission, profiles, s.protocol, lengths=lengths,
            sessions=sessions_of(s),
        )  # fmt: skip
        self.tracking = Tracking(
            self.director, self.store, self.metrics, follow=s.protocol.follow_responses
        )
        self._kube: KubeRuntime | None = None
        self.health = Health()
        self._grpc: grpc.aio.Server | LeanServer | None = None
        self._health_server: grpc.aio.Server | LeanServer | None = None
        self._http: web.AppRunner | None = None
        self.tasks = TaskOwner(backoff=config.restart, on_down=self._down, on_up=self._up)
        self._applied: ResourceSet | None = None  # the last set the datastore took
        self._stopping = False
        self.kv_events: list[KvEventsSubscriber] = []  # one per precise prefix scorer
        self.peers: PeerSharing | None = None
        self.grpc_port = 0
        self.health_port = 0
        self.metrics_port = 0

    async def start(self) -> None:
        s = self.config.settings.server
        await self.health.start()
        if s.lean_grpc:
            await self._start_lean()
        else:
            await self._start_grpcio()
        self._http = web.AppRunner(self._http_app(), access_log=None)
        await self._http.setup()
        site = web.TCPSite(self._http, s.grpc_host, s.metrics_port)
        await site.start()
        self.metrics_port = self._http.addresses[0][1]
        await self._load_resources()
        store = self.store
        scraper = Scraper(
            store,
            store.endpoints,
            self.config.scrape,
            changes=store.load_changes,
            flights=store.flights,
        )
        self.tasks.spawn("scraper", scraper.run)
        if self.config.gpu.prometheus_url:
            self.tasks.spawn("gpu", GpuPoller(self.store, self.config.gpu).run)
        self._share_with_peers()
        for i, precise in enumerate(precise_scorers(self.profiles)):
            events = KvEventsSubscriber(
                precise.index, self.store.endpoints, precise.events, prefill=precise.prefill
            )
            self.kv_events.append(events)
            self.tasks.spawn(f"kv-events-{i}", events.run)
        if self.kv_events:
            self.metrics.registry.register(KvEventsCollector(lambda: self.kv_events))
        log.info(
            "epp serving ext_proc on %s:%d, health on %d, metrics on %d",
            s.grpc_host,
            self.grpc_port,
            self.health_port,
            self.metrics_port,
        )

    async def _start_grpcio(self) -> None:
        s = self.config.settings.server
        self._grpc = grpc.aio.server(options=server_options(self.config.settings.protocol))
        add_to_server(
            ExternalProcessor(self.tracking, self.config.settings.protocol),
            self._grpc,
        )
        # health on the ext_proc port too: Envoy checks each replica where it sends streams
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self._grpc)
        address = f"{s.grpc_host}:{s.grpc_port}"
        if s.secure_serving:
            cert, key = load_pair(s.cert_path) if s.cert_path else self_signed()
            credentials = grpc.ssl_server_credentials([(key, cert)])
            self.grpc_port = self._grpc.add_secure_port(address, credentials)
        else:
            self.grpc_port = self._grpc.add_insecure_port(address)
        self._health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self._health_server)
        self.health_port = self._health_server.add_insecure_port(f"{s.grpc_host}:{s.health_port}")
        await self._grpc.start()
        await self._health_server.start()

    async def _start_lean(self) -> None:
        """ext_proc and health on `epp.grpcwire` (--grpc-server lean): no grpc.aio at all."""
        s, protocol = self.config.settings.server, self.config.settings.protocol
        processor = ExternalProcessor(self.tracking, protocol)
        routes = {PROCESS_METHOD: processor.serve_call, CHECK_METHOD: self.health.check}
        self._grpc = LeanServer(routes, max_message=protocol.max_body_bytes + (1 << 20))
        self.grpc_port = await self._grpc.start(s.grpc_host, s.grpc_port)
        self._health_server = LeanServer({CHECK_METHOD: self.health.check}, max_message=1 << 16)
        self.health_port = await self._health_server.start(s.grpc_host, s.health_port)

    async def _load_resources(self) -> None:
        if self.config.endpoints:
            self.store.set_static_pool(STATIC_POOL, self.config.endpoints)
        if self.config.manifests:
            source = FolderSource(self.config.manifests, self.config.reload_interval)
            self._apply(source.current())
            self.tasks.spawn(RESOURCES, lambda: self._watch(source), signals_up=True)
        if self.config.kube is not None:
            from epp.kube.runtime import KubeRuntime
            from epp.kube.serving import feed

            kube = self._kube = await KubeRuntime.open(self.config.kube)
            self.tasks.spawn(
                KUBE_RESOURCES,
                lambda: feed(kube.source, self._apply, self._ready_after),
                signals_up=True,
            )
            if kube.controller is not None:
                self.tasks.spawn("kube-controller", kube.controller.run)
        await self._update_readiness()

    def _share_with_peers(self) -> None:
        settings = self.config.peers
        if not settings.enabled:
            return
        peers = self.peers = PeerSharing(
            self.store, settings, self.config.settings.server.grpc_host
        )
        peers.share_prefixes(self.profiles)  # approximate indexes learn the others' picks
        self.tasks.spawn("peers", peers.run)
        if settings.service is not None and self._kube is not None:
            from epp.peers.kube import EndpointSliceDiscovery

            discovery = EndpointSliceDiscovery(
                self._kube.api,
                settings.service_namespace,
                settings.service,
                settings.name,
                settings.port,
                settings.discovery_interval,
            )
            self.tasks.spawn("peer-discovery", lambda: discovery.run(peers.set_targets))

    async def _ready_after(self, _synced: bool) -> None:
        """The Kubernetes feed applied a full set: on a restart, that is when it runs again."""
        await self.tasks.up(KUBE_RESOURCES)
        await self._update_readiness()

    async def _down(self, name: str) -> None:
        if name in FEEDS:
            log.warning("resource feed %s is down: not ready until it runs again", name)
            await self._update_readiness()

    async def _up(self, name: str) -> None:
        if name in FEEDS:
            await self._update_readiness()

    async def _update_readiness(self) -> None:
        """Ready once resources were read, at least one pool exists to serve, and every resource
        feed runs (a dead feed would serve frozen resources); never again once stopping."""
        ready = (
            not self._stopping
            and self.store.synced
            and bool(self.store.pools())
            and not self.tasks.down & FEEDS
        )
        if ready != self.health.ready:
            log.info("readiness: %s", "SERVING" if ready else "NOT_SERVING")
            await self.health.set_ready(ready)

    def _apply(self, resources: ResourceSet) -> None:
        for problem in resources.problems:
            log.warning("manifest problem: %s", problem)
        self.store.apply_resources(resources)
        self._applied = resources
        log.info(
            "resources: %d pools, %d models, %d endpoints",
            len(resources.pools),
            len(resources.models),
            len(self.store.endpoints()),
        )

    async def _watch(self, source: FolderSource) -> None:
        current = source.current()
        if current is not self._applied:  # restarted: catch up with what a crash left unapplied
            self._apply(current)
        await self.tasks.up(RESOURCES)
        await self._update_readiness()
        async for resources in source.watch():
            self._apply(resources)
            await self._update_readiness()

    async def stop(self) -> None:
        self._stopping = True
        await self.health.shutting_down()
        await asyncio.sleep(self.config.settings.server.drain_seconds)
        grace = self.config.settings.server.grace_seconds
        if self._grpc is not None:
            await self._grpc.stop(grace)
        await self.tasks.aclose()
        if self._kube is not None:
            await self._kube.aclose()
        if self._health_server is not None:
            await self._health_server.stop(0)
        if self._http is not None:
            await self._http.cleanup()

    # ---- HTTP: /metrics and debug views ------------------------------------------------------
    def _http_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/debug/endpoints", self._serve_endpoints)
        app.router.add_get("/debug/flows", self._serve_flows)
        app.router.add_get("/debug/lengths", self._serve_lengths)
        app.router.add_get("/debug/peers", self._serve_peers)
        app.router.add_get("/healthz", self._serve_healthz)
        return app

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        self.metrics.refresh_pools(self.store, self.flow)
        return web.Response(
            body=generate_latest(self.metrics.registry), content_type="text/plain", charset="utf-8"
        )

    async def _serve_lengths(self, request: web.Request) -> web.Response:
        """What answers of each model have been: the lengths requests are planned with."""
        return web.json_response({"models": self.director.lengths.snapshot()})

    async def _serve_peers(self, request: web.Request) -> web.Response:
        """The other replicas this one shares in-flight counts with, and the traffic between."""
        peers = self.peers
        return web.json_response(
            {"sharing": peers is not None, **(peers.snapshot() if peers is not None else {})}
        )

    async def _serve_healthz(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"ready": self.health.ready}, status=200 if self.health.ready else 503
        )

    async def _serve_flows(self, request: web.Request) -> web.Response:
        """What waits in each pool's waiting room, per priority and flow (tenant)."""
        flow = self.flow
        rows = [
            {"pool": pool.key, "priority": priority, "flow": name, "waiting": n, "bytes": held}
            for pool in self.store.pools()
            for (priority, name), (n, held) in sorted(
                (flow.flows(pool.key) if flow is not None else {}).items(),
                key=lambda item: (-item[0][0], item[0][1]),
            )
        ]
        return web.json_response({"flow_control": flow is not None, "flows": rows})

    async def _serve_endpoints(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        rows = []
        for pool in self.store.pools():
            for st in self.store.candidates(pool.key):
                m = st.metrics
                room = room_tokens(st)
                rows.append(
                    {
                        "pool": pool.key,
                        "address": st.address,
                        "pod": st.endpoint.pod,
                        "healthy": st.healthy,
                        "waiting": m.waiting,
                        "running": m.running,
                        "kv_usage": m.kv_usage,
                        "accelerator": st.endpoint.accelerator,
                        "capacity": round(st.endpoint.capacity, 4),
                        "gpu_health": st.gpu_health,
                        "pace_s_per_token": st.tpot or None,
                        "gpu_utilization": st.gpu.utilization,
                        "in_flight": st.in_flight,
                        "limit": st.limit,
                        "limit_source": self.store.limit_source(st),
                        "in_flight_tokens": st.in_flight_tokens,
                        "cache_hit": round(st.cache_hit, 4),
                        # prompt tokens its free KV cache takes now (null: KV size not reported)
                        "kv_room_tokens": None if math.isinf(room) else int(room),
                        "lora_active": sorted(m.lora_active),
                        "lora_waiting": sorted(m.lora_waiting),
                        "metrics_age_s": None if not m.scraped_at else round(now - m.scraped_at, 4),
                    }
                )
        return web.json_response({"endpoints": rows})


async def serve(config: ServeConfig) -> None:
    """Run until SIGINT/SIGTERM."""
    server = EppServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    # Everything built at start-up lives for the process: keep it out of the collector's scans,
    # and collect the young generation less often (the hot path allocates many small objects).
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    await stop.wait()
    log.info("shutting down")
    await server.stop()


def sessions_of(settings: Settings) -> Sessions:
    """Sessions signed with the configured key file's bytes (random without one)."""
    protocol = settings.protocol
    key = None
    if protocol.session_key_file:
        key = Path(protocol.session_key_file).read_bytes().strip()
        if not key:
            raise ValueError(f"--session-key-file {protocol.session_key_file} is empty")
    return Sessions(key, protocol.session_header, settings.saturation)


def parse_endpoints(text: str) -> tuple[str, ...]:
    items = tuple(a.strip() for a in text.split(",") if a.strip())
    for item in items:
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--endpoints: {item!r} is not ip:port")
    return items


def run_serve(config: ServeConfig) -> int:
    try:
        import uvloop

        uvloop.run(serve(config))
    except KeyboardInterrupt:
        pass
    return 0


__all__: Sequence[str] = ("EppServer", "ServeConfig", "parse_endpoints", "run_serve", "serve")
