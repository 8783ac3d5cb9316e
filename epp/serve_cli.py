"""`epp serve`'s flags, the frozen settings they build, and the start of the endpoint picker.

Every flag default is read from the settings field it fills (`epp.settings.field_default`), so a
default is written once; a bad value is refused at start with a message naming the flag.
Neighbours: `epp.cli` registers the sub-command; `epp.server` runs what `run` configures.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from epp.gpu import GpuSettings, HealthSettings
from epp.kube.flags import add_arguments as add_kube_arguments
from epp.peers.sharing import PeerSettings
from epp.scrape.scraper import ScrapeSettings
from epp.settings import (
    GRPC_SERVERS,
    FlowSettings,
    ProtocolSettings,
    SaturationSettings,
    ServerSettings,
    Settings,
)
from epp.settings import field_default as _default


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`epp serve`'s flags on `p`."""
    p.add_argument(
        "--manifests",
        action="append",
        default=[],
        metavar="PATH",
        help="folder or file of InferencePool/InferenceModel/Pod manifests (repeatable)",
    )
    p.add_argument(
        "--endpoints",
        default="",
        metavar="IP:PORT,...",
        help="serve one pool of exactly these endpoints, no manifests needed",
    )
    p.add_argument(
        "--host",
        default=_default(ServerSettings, "grpc_host"),
        help="address the gRPC and HTTP ports bind",
    )
    p.add_argument("--grpc-port", type=int, default=_default(ServerSettings, "grpc_port"))
    p.add_argument(
        "--health-port",
        "--grpc-health-port",
        type=int,
        default=_default(ServerSettings, "health_port"),
    )
    p.add_argument("--metrics-port", type=int, default=_default(ServerSettings, "metrics_port"))
    p.add_argument(
        "--secure-serving",
        action="store_true",
        default=_default(ServerSettings, "secure_serving"),
        help="serve ext_proc over TLS",
    )
    p.add_argument(
        "--grpc-server",
        choices=GRPC_SERVERS,
        default=_default(ServerSettings, "grpc_server"),
        help="what serves ext_proc and gRPC health: grpcio (grpc.aio), lean (our own HTTP/2 "
        "server on the event loop: about 40 %% of grpc.aio's CPU per stream; cleartext only), or "
        "auto (lean, grpcio with --secure-serving)",
    )
    p.add_argument(
        "--cert-path",
        default=_default(ServerSettings, "cert_path"),
        help="folder with tls.crt and tls.key (default: a self-signed certificate)",
    )
    p.add_argument(
        "--fallback-endpoints", type=int, default=_default(ProtocolSettings, "fallback_endpoints")
    )
    p.add_argument(
        "--trust-control-headers",
        action="store_true",
        default=_default(ProtocolSettings, "trust_control_headers"),
        help="honour x-gateway-destination-endpoint-subset / x-gateway-model-name-rewrite "
        "request headers (only behind a trusted gateway that strips them from clients)",
    )
    p.add_argument(
        "--sticky-header",
        default=_default(ProtocolSettings, "sticky_header"),
        metavar="NAME",
        help="request header (e.g. x-user-id) whose value keeps a user on one canary version",
    )
    p.add_argument(
        "--require-registered-models",
        action="store_true",
        default=_default(ProtocolSettings, "require_registered_models"),
        help="only InferenceModel names are served; others get 404, even a pool's own model",
    )
    p.add_argument(
        "--pass-unknown-models",
        action="store_true",
        default=_default(ProtocolSettings, "pass_unknown_models"),
        help="a model name nothing declares goes to the only pool (upstream's behaviour) "
        "instead of 404",
    )
    p.add_argument(
        "--session-header",
        default=_default(ProtocolSettings, "session_header"),
        metavar="NAME",
        help="request header with an agent's own session id (e.g. x-session-id): each session "
        "stays on one pod while it has room, like a session token",
    )
    p.add_argument(
        "--session-key-file",
        default=_default(ProtocolSettings, "session_key_file"),
        metavar="PATH",
        help="key that signs session tokens (share it across EPP replicas; default: random per "
        "process)",
    )
    p.add_argument(
        "--follow-responses",
        type=float,
        default=_default(ProtocolSettings, "follow_responses"),
        metavar="SHARE",
        help="share of responses (0-1) whose bodies the EPP reads to count their tokens even "
        "when no model name must be restored (1: every one)",
    )
    p.add_argument(
        "--scrape-interval",
        type=float,
        default=_default(ScrapeSettings, "interval"),
        help="seconds between scrapes",
    )
    p.add_argument(
        "--scrape-steady-interval",
        type=float,
        default=_default(ScrapeSettings, "steady_interval"),
        help="longest seconds between scrapes of a pod whose pages show the same load (a pod "
        "whose load moves is scraped every --scrape-interval); keep it under --sd-staleness",
    )
    p.add_argument(
        "--scrape-quiet-interval",
        type=float,
        default=_default(ScrapeSettings, "quiet_interval"),
        help="longest seconds a quiet pod's figures (idle, unchanged, no request started or "
        "ended there by the EPP since) are vouched for without a fetch; 0: fetch at every tick due",
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=_default(ProtocolSettings, "max_body_bytes")
    )
    p.add_argument(
        "--prometheus-url",
        default=_default(GpuSettings, "prometheus_url"),
        help="Prometheus to query for GPU utilization (DCGM), e.g. http://prometheus:9090",
    )
    p.add_argument(
        "--gpu-query",
        default=_default(GpuSettings, "query"),
        help="PromQL giving GPU utilization %% by pod",
    )
    p.add_argument("--gpu-interval", type=float, default=_default(GpuSettings, "interval"))
    p.add_argument("--gpu-health", action=argparse.BooleanOptionalAction,
                   default=_default(HealthSettings, "enabled"),
                   help="GPU health from DCGM (throttling, heat, XID errors)")  # fmt: skip
    p.add_argument(
        "--scheduler-config",
        "--config-file",
        default=None,
        metavar="FILE",
        help="EndpointPickerConfig YAML: plugins and scheduling profiles",
    )
    p.add_argument(
        "--kubernetes",
        action="store_true",
        help="read pools, models and pods from the API server (see docs/kubernetes.md)",
    )
    add_kube_arguments(p)
    p.add_argument(
        "--no-flow-control",
        dest="flow_control",
        action="store_false",
        default=_default(FlowSettings, "enabled"),
        help="never hold requests in the EPP (pods queue first come, first served)",
    )
    p.add_argument(
        "--queue-timeout",
        type=float,
        default=_default(FlowSettings, "queue_timeout"),
        help="seconds a request may wait for room before a 503",
    )
    p.add_argument(
        "--queue-max-requests",
        type=_non_negative_int,
        default=_default(FlowSettings, "max_queued"),
        help="requests of one priority that may wait per pool before a 429 (0 = no limit)",
    )
    p.add_argument(
        "--queue-max-bytes",
        type=_non_negative_int,
        default=_default(FlowSettings, "max_queued_bytes"),
        help="body bytes of one priority that may wait per pool before a 429 (0 = no limit)",
    )
    p.add_argument(
        "--queue-max-flow-requests",
        type=_non_negative_int,
        default=_default(FlowSettings, "max_flow_queued"),
        help="requests of one flow and priority that may wait per pool before a 429 (0 = no limit)",
    )
    p.add_argument(
        "--queue-max-pool-requests",
        type=_non_negative_int,
        default=_default(FlowSettings, "max_pool_queued"),
        help="requests that may wait per pool; when full, a better arrival evicts a sheddable "
        "one, else 429 (0 = no limit)",
    )
    p.add_argument(
        "--no-fairness",
        dest="fairness",
        action="store_false",
        default=_default(FlowSettings, "fairness"),
        help="inside a priority, serve waiting requests first come, first served, not by flow",
    )
    p.add_argument(
        "--fair-reserve",
        type=_fraction,
        default=_default(FlowSettings, "fair_reserve"),
        help="share of each pool's batch slots kept free for flows under their fair share while "
        "flows contend, so a light tenant finds a slot at once (0 = none)",
    )
    p.add_argument(
        "--fairness-header",
        default=_default(FlowSettings, "fairness_header"),
        metavar="HEADER",
        help="a header naming the request's flow when x-gateway-inference-fairness-id does not",
    )
    p.add_argument(
        "--sheddable-reserve",
        type=float,
        default=_default(SaturationSettings, "sheddable_reserve"),
        help="share of each server's batch kept free of sheddable requests",
    )
    _add_replica_arguments(p)
    p.add_argument(
        "--sd-queue-depth", type=int, default=_default(SaturationSettings, "queue_depth")
    )
    p.add_argument(
        "--sd-kv-cache-util", type=float, default=_default(SaturationSettings, "kv_cache_util")
    )
    p.add_argument(
        "--sd-staleness", type=float, default=_default(SaturationSettings, "staleness_seconds")
    )


def _add_replica_arguments(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("Replicas and workers (docs/replicas.md)")
    r.add_argument(
        "--workers",
        type=_positive_int,
        default=_default(ServerSettings, "workers"),
        help="worker processes behind the same ext_proc port (SO_REUSEPORT); each is a replica "
        "with metrics and peer ports numbered from the given ones",
    )
    r.add_argument(
        "--replica-name",
        default=_default(PeerSettings, "name"),
        help="this replica's name among its peers; in Kubernetes its pod name "
        "(default: host name and process id)",
    )
    r.add_argument(
        "--peers",
        default="",
        metavar="HOST:PORT,...",
        help="the other replicas' peer (UDP) addresses, to share in-flight counts with",
    )
    r.add_argument(
        "--peer-service",
        default=_default(PeerSettings, "service"),
        metavar="NAME",
        help="with --kubernetes: find the other replicas in this Service's EndpointSlices",
    )
    r.add_argument("--peer-service-namespace", default=_default(PeerSettings, "service_namespace"))
    r.add_argument(
        "--peer-port",
        type=int,
        default=_default(PeerSettings, "port"),
        help="UDP port this replica receives its peers' in-flight counts on",
    )
    r.add_argument(
        "--drain-seconds",
        type=float,
        default=_default(ServerSettings, "drain_seconds"),
        help="on SIGTERM, seconds NOT_SERVING while still answering, so proxies move away first",
    )


def peer_settings_from(args: argparse.Namespace) -> PeerSettings:
    """`--peers` and friends as the replica's sharing settings (ValueError: a bad address)."""
    from epp.peers.sharing import parse_peers

    return PeerSettings(
        name=args.replica_name,
        port=args.peer_port,
        peers=parse_peers(args.peers),
        service=args.peer_service or None,
        service_namespace=args.peer_service_namespace,
    )


def settings_from(args: argparse.Namespace) -> tuple[Settings, ScrapeSettings, GpuSettings]:
    """`epp serve`'s flags as the frozen settings the server is built from."""
    settings = Settings(
        server=ServerSettings(
            grpc_host=args.host,
            grpc_port=args.grpc_port,
            health_port=args.health_port,
            metrics_port=args.metrics_port,
            secure_serving=args.secure_serving or bool(args.cert_path),
            cert_path=args.cert_path,
            grpc_server=args.grpc_server,
            drain_seconds=args.drain_seconds,
        ),
        protocol=ProtocolSettings(
            max_body_bytes=args.max_body_bytes,
            fallback_endpoints=args.fallback_endpoints,
            require_registered_models=args.require_registered_models,
            pass_unknown_models=args.pass_unknown_models,
            session_header=args.session_header.lower() if args.session_header else None,
            session_key_file=args.session_key_file,
            trust_control_headers=args.trust_control_headers,
            sticky_header=args.sticky_header.lower() if args.sticky_header else None,
            follow_responses=args.follow_responses,
        ),
        flow=FlowSettings(
            enabled=args.flow_control,
            queue_timeout=args.queue_timeout,
            max_queued=args.queue_max_requests,
            max_queued_bytes=args.queue_max_bytes,
            max_flow_queued=args.queue_max_flow_requests,
            max_pool_queued=args.queue_max_pool_requests,
            fairness=args.fairness,
            fair_reserve=args.fair_reserve,
            fairness_header=args.fairness_header.lower() if args.fairness_header else None,
        ),
        saturation=SaturationSettings(
            queue_depth=args.sd_queue_depth,
            kv_cache_util=args.sd_kv_cache_util,
            staleness_seconds=args.sd_staleness,
            sheddable_reserve=args.sheddable_reserve,
        ),
    )
    gpu = GpuSettings(
        prometheus_url=args.prometheus_url,
        interval=args.gpu_interval,
        query=args.gpu_query or _default(GpuSettings, "query"),
        health=HealthSettings(enabled=args.gpu_health),
    )
    # the failure back-off is capped at no less than the interval (ScrapeSettings insists)
    backoff_max = max(_default(ScrapeSettings, "backoff_max"), args.scrape_interval)
    scrape = ScrapeSettings(
        interval=args.scrape_interval,
        backoff_max=backoff_max,
        steady_interval=args.scrape_steady_interval,
        quiet_interval=args.scrape_quiet_interval,
    )
    return settings, scrape, gpu


def staleness_warning(scrape: ScrapeSettings, saturation: SaturationSettings) -> str | None:
    """Why the saturation detector would call pods stale between two scrapes, or None.

    A pod whose figures stand still is fetched every `steady_period`; its figures are dated at
    the fetch's start, so they reach that age plus the fetch's own time before the next page
    lands. A bound below that plus one tick marks such pods saturated (fail closed) at every
    late answer."""
    needed = scrape.steady_period + scrape.interval
    if saturation.staleness_seconds >= needed:
        return None
    return (
        f"--sd-staleness {saturation.staleness_seconds:g}s is under the scrape period of a "
        f"steady pod ({scrape.steady_period:g}s) plus a tick ({scrape.interval:g}s): busy pods "
        f"will look saturated between scrapes; raise --sd-staleness to at least {needed:g}s or "
        "lower --scrape-steady-interval"
    )


def run(args: argparse.Namespace) -> int:
    """Start the endpoint picker with parsed flags; 2 when they do not make a configuration."""
    from epp.server import ServeConfig, parse_endpoints, run_serve

    try:
        endpoints = parse_endpoints(args.endpoints)
        peers = peer_settings_from(args)
    except ValueError as exc:
        print(f"epp serve: {exc}", file=sys.stderr)
        return 2
    if peers.service is not None and not args.kubernetes:
        print("epp serve: --peer-service needs --kubernetes", file=sys.stderr)
        return 2
    if not endpoints and not args.manifests and not args.kubernetes:
        print(
            "epp serve: give --manifests PATH, --endpoints IP:PORT,... or --kubernetes",
            file=sys.stderr,
        )
        return 2
    try:
        settings, scrape, gpu = settings_from(args)
    except ValueError as exc:
        print(f"epp serve: {exc}", file=sys.stderr)
        return 2
    if (warning := staleness_warning(scrape, settings.saturation)) is not None:
        logging.getLogger("epp.serve").warning("%s", warning)
    scheduler_config = None
    if args.scheduler_config:
        import yaml

        from epp.api.yamlio import load_all

        try:
            docs = [d for d in load_all(Path(args.scheduler_config).read_text()) if d is not None]
        except (OSError, ValueError, yaml.YAMLError) as exc:
            print(f"epp serve: --scheduler-config {args.scheduler_config}: {exc}", file=sys.stderr)
            return 2
        scheduler_config = docs[0] if len(docs) == 1 else None
        if scheduler_config is None:
            print("epp serve: --scheduler-config must hold exactly one document", file=sys.stderr)
            return 2
        from epp.errors import ManifestError
        from epp.scheduling.config import load_config

        try:  # fail at start-up, with the field's path, rather than on the first request
            load_config(scheduler_config, source=args.scheduler_config)
        except ManifestError as exc:
            print(f"epp serve: {exc}", file=sys.stderr)
            return 2
    kube = None
    if args.kubernetes:
        from epp.kube.flags import config_from_args

        kube = config_from_args(args)
    if args.workers > 1:
        return _run_workers(args, peers)
    config = ServeConfig(
        settings, tuple(args.manifests), endpoints, scrape, gpu, kube, scheduler_config, peers=peers
    )
    return run_serve(config)


def _run_workers(args: argparse.Namespace, peers: PeerSettings) -> int:
    """The same command line as N worker processes, each with its own ports and the others as
    its peers (`epp.workers`)."""
    import socket

    from epp.workers import python_argv, run_workers, without_workers, worker_argv

    if args.metrics_port == 0 or args.peer_port == 0:
        print("epp serve: --workers needs fixed --metrics-port and --peer-port", file=sys.stderr)
        return 2
    base = python_argv(without_workers(sys.argv[1:]))
    name = args.replica_name or socket.gethostname()
    argvs = [
        worker_argv(base, i, args.workers, args.metrics_port, args.peer_port, name, peers.peers)
        for i in range(args.workers)
    ]
    return run_workers(argvs)


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1)")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; use 0 for no limit")
    return value
