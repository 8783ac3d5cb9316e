"""The composition root: flags → frozen settings → the program asked for.

epp serve      the endpoint picker (ext_proc gRPC, health, metrics)
epp sim        simulated vLLM pods
epp controlplane  xDS server: Gateway / HTTPRoute / inference resources → Envoy config
epp operator   Kubernetes: resource status, leader election, Deployments of seed pools
epp up         the local stack: simulated pods + EPP + Envoy from a manifests folder
epp validate   check manifests (schema + semantics)
epp top        live view of each endpoint as the EPP sees it
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from epp.kube.flags import add_arguments as add_kube_arguments
from epp.settings import (
    FlowSettings,
    ProtocolSettings,
    SaturationSettings,
    ServerSettings,
    Settings,
)


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    p.add_argument("--host", default="127.0.0.1", help="address the gRPC and HTTP ports bind")
    p.add_argument("--grpc-port", type=int, default=9002)
    p.add_argument("--health-port", "--grpc-health-port", type=int, default=9003)
    p.add_argument("--metrics-port", type=int, default=9090)
    p.add_argument("--secure-serving", action="store_true", help="serve ext_proc over TLS")
    p.add_argument(
        "--cert-path",
        default=None,
        help="folder with tls.crt and tls.key (default: a self-signed certificate)",
    )
    p.add_argument("--fallback-endpoints", type=int, default=0)
    p.add_argument(
        "--trust-control-headers",
        action="store_true",
        help="honour x-gateway-destination-endpoint-subset / x-gateway-model-name-rewrite "
        "request headers (only behind a trusted gateway that strips them from clients)",
    )
    p.add_argument(
        "--sticky-header",
        default=None,
        metavar="NAME",
        help="request header (e.g. x-user-id) whose value keeps a user on one canary version",
    )
    p.add_argument(
        "--require-registered-models",
        action="store_true",
        help="unknown model names get 404 instead of the default route",
    )
    p.add_argument("--scrape-interval", type=float, default=0.05, help="seconds between scrapes")
    p.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024)
    p.add_argument(
        "--prometheus-url",
        default=None,
        help="Prometheus to query for GPU utilization (DCGM), e.g. http://prometheus:9090",
    )
    p.add_argument("--gpu-query", default=None, help="PromQL giving GPU utilization %% by pod")
    p.add_argument("--gpu-interval", type=float, default=5.0)
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
        action="store_true",
        help="never hold requests in the EPP (pods queue first come, first served)",
    )
    p.add_argument(
        "--queue-timeout",
        type=float,
        default=30.0,
        help="seconds a request may wait for room before a 503",
    )
    p.add_argument(
        "--queue-max-requests",
        type=_non_negative_int,
        default=0,
        help="requests of one priority that may wait per pool before a 429 (0 = no limit)",
    )
    p.add_argument(
        "--queue-max-bytes",
        type=_non_negative_int,
        default=1_000_000_000,
        help="body bytes of one priority that may wait per pool before a 429 (0 = no limit)",
    )
    p.add_argument(
        "--sheddable-reserve",
        type=float,
        default=0.4,
        help="share of each server's batch kept free of sheddable requests",
    )
    p.add_argument("--sd-queue-depth", type=int, default=5)
    p.add_argument("--sd-kv-cache-util", type=float, default=0.8)
    p.add_argument("--sd-staleness", type=float, default=0.2)


def _up_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("up", help="start simulated pods + EPP + Envoy from manifests")
    p.add_argument("manifests", nargs="*", help="folders or files (default: examples/seed)")
    p.add_argument("--port", type=int, default=8080, help="Envoy listener port (plain HTTP)")
    p.add_argument("--https-port", type=int, default=8443, help="the Gateway's HTTPS listener")
    p.add_argument("--xds-port", type=int, default=18000)
    p.add_argument("--status-port", type=int, default=18001, help="control plane status page")
    p.add_argument(
        "--static-envoy",
        action="store_true",
        help="no control plane: a static bootstrap routes everything to the EPP",
    )
    p.add_argument("--admin-port", type=int, default=9901)
    p.add_argument("--epp-port", type=int, default=9002)
    p.add_argument("--health-port", type=int, default=9003)
    p.add_argument("--metrics-port", type=int, default=9090)
    p.add_argument("--run-dir", type=Path, default=None, help="where logs and configs go")
    p.add_argument("--fail-open", action="store_true", help="Envoy failure_mode_allow: true")
    p.add_argument("--secure-serving", action="store_true", help="ext_proc over TLS")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="epp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _up_parser(sub)
    sim = sub.add_parser("sim", help="run simulated vLLM pods", add_help=False)
    sim.add_argument("rest", nargs=argparse.REMAINDER)
    cp = sub.add_parser(
        "controlplane", help="xDS control plane: Gateway/HTTPRoute → Envoy", add_help=False
    )
    cp.add_argument("rest", nargs=argparse.REMAINDER)
    op = sub.add_parser(
        "operator",
        help="Kubernetes: status, leader election, seed-pool Deployments",
        add_help=False,
    )
    op.add_argument("rest", nargs=argparse.REMAINDER)
    top = sub.add_parser("top", help="live view of what the EPP sees of each endpoint")
    top.add_argument("--url", default="http://127.0.0.1:9090", help="the EPP's metrics address")
    top.add_argument("--interval", type=float, default=1.0)
    top.add_argument("--once", action="store_true", help="print one table and exit")
    validate = sub.add_parser("validate", help="validate manifests")
    validate.add_argument("paths", nargs="+")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # programs with their own flags: everything after the subcommand is theirs
    command = args_list[2:3] if args_list[:1] == ["--log-level"] else args_list[:1]
    if command in (["sim"], ["controlplane"], ["operator"]):
        rest = args_list[args_list.index(command[0]) + 1 :]
        if command == ["sim"]:
            from epp.sim.main import run as run_sim

            return run_sim(rest)
        if command == ["operator"]:
            from epp.kube.main import run as run_operator

            return run_operator(rest)
        from epp.controlplane.main import run as run_controlplane

        return run_controlplane(rest)
    args = build_parser().parse_args(args_list)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll is noise
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
    from epp.gpu import GpuSettings
    from epp.scrape.scraper import ScrapeSettings

    settings = Settings(
        server=ServerSettings(
            args.host,
            args.grpc_port,
            args.health_port,
            args.metrics_port,
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
            not args.no_flow_control,
            args.queue_timeout,
            args.queue_max_requests,
            args.queue_max_bytes,
        ),
        saturation=SaturationSettings(
            args.sd_queue_depth,
            args.sd_kv_cache_util,
            args.sd_staleness,
            sheddable_reserve=args.sheddable_reserve,
        ),
    )
    gpu = GpuSettings(prometheus_url=args.prometheus_url, interval=args.gpu_interval)
    if args.gpu_query:
        gpu = replace(gpu, query=args.gpu_query)
    scrape = ScrapeSettings(
        interval=args.scrape_interval, backoff_max=max(2.0, args.scrape_interval)
    )
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
    from epp.local.stack import SEED_EXAMPLE, StackConfig, run_stack

    manifests = tuple(Path(p) for p in args.manifests) or (SEED_EXAMPLE,)
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
