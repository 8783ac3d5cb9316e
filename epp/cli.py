"""The composition root: flags → frozen settings → the program asked for.

epp serve      the endpoint picker (ext_proc gRPC, health, metrics)
epp sim        simulated vLLM pods
epp controlplane  xDS server: Gateway / HTTPRoute / inference resources → Envoy config
epp operator   Kubernetes: resource status, leader election, Deployments of seed pools
epp up         the local stack: simulated pods + EPP + Envoy from a manifests folder
epp validate   check manifests (schema + semantics)
epp top        live view of each endpoint as the EPP sees it

Every flag default is read from the field of the settings dataclass it fills (`_default`), so a
default is written once; `sim`, `controlplane` and `operator` add their own flags to their
sub-command here, as they do to their standalone parsers.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from epp.controlplane import main as controlplane_main
from epp.gpu import GpuSettings
from epp.kube import main as operator_main
from epp.kube.flags import add_arguments as add_kube_arguments
from epp.local.stack import StackConfig
from epp.scrape.scraper import ScrapeSettings
from epp.settings import (
    FlowSettings,
    ProtocolSettings,
    SaturationSettings,
    ServerSettings,
    Settings,
)
from epp.sim import main as sim_main

if TYPE_CHECKING:
    _Sub = argparse._SubParsersAction[argparse.ArgumentParser]


def _default(settings: type[Any], name: str) -> Any:
    """The default of one field of a settings dataclass: the only place it is written."""
    (found,) = (f for f in fields(settings) if f.name == name)
    if found.default is MISSING:
        raise TypeError(f"{settings.__name__}.{name} has no plain default")
    return found.default


def _serve_parser(sub: _Sub) -> None:
    p = sub.add_parser("serve", help="run the endpoint picker")
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
        help="unknown model names get 404 instead of the default route",
    )
    p.add_argument(
        "--scrape-interval",
        type=float,
        default=_default(ScrapeSettings, "interval"),
        help="seconds between scrapes",
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
        "--sheddable-reserve",
        type=float,
        default=_default(SaturationSettings, "sheddable_reserve"),
        help="share of each server's batch kept free of sheddable requests",
    )
    p.add_argument(
        "--sd-queue-depth", type=int, default=_default(SaturationSettings, "queue_depth")
    )
    p.add_argument(
        "--sd-kv-cache-util", type=float, default=_default(SaturationSettings, "kv_cache_util")
    )
    p.add_argument(
        "--sd-staleness", type=float, default=_default(SaturationSettings, "staleness_seconds")
    )


def _up_parser(sub: _Sub) -> None:
    p = sub.add_parser("up", help="start simulated pods + EPP + Envoy from manifests")
    p.add_argument("manifests", nargs="*", help="folders or files (default: examples/seed)")
    p.add_argument(
        "--port",
        type=int,
        default=_default(StackConfig, "listener_port"),
        help="Envoy listener port (plain HTTP)",
    )
    p.add_argument(
        "--https-port",
        type=int,
        default=_default(StackConfig, "https_port"),
        help="the Gateway's HTTPS listener",
    )
    p.add_argument("--xds-port", type=int, default=_default(StackConfig, "xds_port"))
    p.add_argument(
        "--status-port",
        type=int,
        default=_default(StackConfig, "status_port"),
        help="control plane status page",
    )
    p.add_argument(
        "--static-envoy",
        action="store_true",
        help="no control plane: a static bootstrap routes everything to the EPP",
    )
    p.add_argument("--admin-port", type=int, default=_default(StackConfig, "admin_port"))
    p.add_argument("--epp-port", type=int, default=_default(StackConfig, "epp_port"))
    p.add_argument("--health-port", type=int, default=_default(StackConfig, "health_port"))
    p.add_argument("--metrics-port", type=int, default=_default(StackConfig, "metrics_port"))
    p.add_argument(
        "--run-dir",
        type=Path,
        default=_default(StackConfig, "run_dir"),
        help="where logs and configs go",
    )
    p.add_argument(
        "--fail-open",
        action="store_true",
        default=_default(StackConfig, "failure_mode_allow"),
        help="Envoy failure_mode_allow: true",
    )
    p.add_argument(
        "--secure-serving",
        action="store_true",
        default=_default(StackConfig, "epp_tls"),
        help="ext_proc over TLS",
    )


def _program_parsers(sub: _Sub) -> None:
    """Programs with flags of their own: each adds them here as it does to its own parser, and
    `program` runs it with the parsed arguments."""
    p = sub.add_parser("sim", help="run simulated vLLM pods", description=sim_main.DESCRIPTION)
    sim_main.add_arguments(p)
    p.set_defaults(program=sim_main.run_parsed)
    cp = sub.add_parser(
        "controlplane",
        help="xDS control plane: Gateway/HTTPRoute → Envoy",
        description=controlplane_main.DESCRIPTION,
    )
    controlplane_main.add_arguments(cp)
    _sub_log_level(cp)
    cp.set_defaults(program=lambda args: controlplane_main.run_parsed(args, cp))
    op = sub.add_parser(
        "operator",
        help="Kubernetes: status, leader election, seed-pool Deployments",
        description=operator_main.DESCRIPTION,
    )
    operator_main.add_arguments(op)
    _sub_log_level(op)
    op.set_defaults(program=operator_main.run_parsed)


def _sub_log_level(p: argparse.ArgumentParser) -> None:
    # `epp controlplane --log-level debug` keeps working; when absent, epp's own value stands
    p.add_argument("--log-level", default=argparse.SUPPRESS, help="same as epp --log-level")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="epp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _up_parser(sub)
    _program_parsers(sub)
    top = sub.add_parser("top", help="live view of what the EPP sees of each endpoint")
    host, port = _default(ServerSettings, "grpc_host"), _default(ServerSettings, "metrics_port")
    top.add_argument("--url", default=f"http://{host}:{port}", help="the EPP's metrics address")
    top.add_argument("--interval", type=float, default=1.0)
    top.add_argument("--once", action="store_true", help="print one table and exit")
    validate = sub.add_parser("validate", help="validate manifests")
    validate.add_argument("paths", nargs="+")
    for command in sub.choices.values():  # a stray flag is reported with its usage
        command.set_defaults(command_parser=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, stray = build_parser().parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if stray:
        args.command_parser.error(f"unrecognized arguments: {' '.join(stray)}")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll is noise
    if (program := getattr(args, "program", None)) is not None:
        return int(program(args))
    if args.command == "serve":
        return _serve(args)
    if args.command == "up":
        return _up(args)
    if args.command == "top":
        from epp.top import run as run_top

        return run_top(args.url, args.interval, args.once)
    if args.command == "validate":
        from epp.validate import run as run_validate

        return run_validate(args.paths, sys.stdout)
    return 2


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
        ),
        protocol=ProtocolSettings(
            max_body_bytes=args.max_body_bytes,
            fallback_endpoints=args.fallback_endpoints,
            require_registered_models=args.require_registered_models,
            trust_control_headers=args.trust_control_headers,
            sticky_header=args.sticky_header.lower() if args.sticky_header else None,
        ),
        flow=FlowSettings(
            enabled=args.flow_control,
            queue_timeout=args.queue_timeout,
            max_queued=args.queue_max_requests,
            max_queued_bytes=args.queue_max_bytes,
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
    )
    # the failure back-off is capped at no less than the interval (ScrapeSettings insists)
    backoff_max = max(_default(ScrapeSettings, "backoff_max"), args.scrape_interval)
    scrape = ScrapeSettings(interval=args.scrape_interval, backoff_max=backoff_max)
    return settings, scrape, gpu


def _serve(args: argparse.Namespace) -> int:
    from epp.server import ServeConfig, parse_endpoints, run_serve

    try:
        endpoints = parse_endpoints(args.endpoints)
    except ValueError as exc:
        print(f"epp serve: {exc}", file=sys.stderr)
        return 2
    if not endpoints and not args.manifests and not args.kubernetes:
        print(
            "epp serve: give --manifests PATH, --endpoints IP:PORT,... or --kubernetes",
            file=sys.stderr,
        )
        return 2
    settings, scrape, gpu = settings_from(args)
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
    config = ServeConfig(
        settings, tuple(args.manifests), endpoints, scrape, gpu, kube, scheduler_config
    )
    return run_serve(config)


def _up(args: argparse.Namespace) -> int:
    from epp.local.stack import run_stack

    manifests = tuple(Path(p) for p in args.manifests) or _default(StackConfig, "manifests")
    config = StackConfig(
        manifests=manifests,
        listener_port=args.port,
        admin_port=args.admin_port,
        epp_port=args.epp_port,
        health_port=args.health_port,
        metrics_port=args.metrics_port,
        run_dir=args.run_dir,
        failure_mode_allow=args.fail_open,
        epp_tls=args.secure_serving,
        https_port=args.https_port,
        xds_port=args.xds_port,
        status_port=args.status_port,
        control_plane=False if args.static_envoy else None,
    )
    try:
        import uvloop

        uvloop.run(run_stack(config))
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError) as exc:
        print(f"epp up: {exc}", file=sys.stderr)
        return 1
    return 0


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; use 0 for no limit")
    return value
