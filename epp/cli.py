"""The composition root: flags → frozen settings → the program asked for.

epp serve      the endpoint picker (ext_proc gRPC, health, metrics)
epp sim        simulated vLLM pods
epp controlplane  xDS server: Gateway / HTTPRoute / inference resources → Envoy config
epp operator   Kubernetes: resource status, leader election, Deployments of seed pools
epp up         the local stack: simulated pods + EPP + Envoy from a manifests folder
epp validate   check manifests (schema + semantics)
epp rollout    status, promote or abort a model's canary rollout
epp top        live view of each endpoint as the EPP sees it

Every flag default is read from the field of the settings dataclass it fills
(`epp.settings.field_default`), so a default is written once; `serve` (`epp.serve_cli`), `sim`,
`controlplane` and `operator` add their own flags to their sub-command here, as they do to
their standalone parsers.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from epp import rollout_cli, serve_cli
from epp.controlplane import main as controlplane_main
from epp.kube import main as operator_main
from epp.local.stack import StackConfig
from epp.settings import ServerSettings
from epp.settings import field_default as _default
from epp.sim import main as sim_main

if TYPE_CHECKING:
    _Sub = argparse._SubParsersAction[argparse.ArgumentParser]


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
        "--epp-replicas",
        type=int,
        default=_default(StackConfig, "epp_replicas"),
        help="EPP replicas serving at once (127.0.0.1, 127.0.1.1, …; docs/replicas.md)",
    )
    p.add_argument("--peer-port", type=int, default=_default(StackConfig, "peer_port"))
    p.add_argument(
        "--run-dir",
        type=Path,
        default=_default(StackConfig, "run_dir"),
        help="where logs and configs go",
    )
    p.add_argument(
        "--rollout-prometheus",
        metavar="URL",
        help="Prometheus that answers rollout policies' analysis.queries",
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
    ro = sub.add_parser(
        "rollout",
        help="a canary rollout: status, promote, abort",
        description=rollout_cli.DESCRIPTION,
    )
    rollout_cli.add_arguments(ro)
    ro.set_defaults(program=rollout_cli.run_parsed)


def _sub_log_level(p: argparse.ArgumentParser) -> None:
    # `epp controlplane --log-level debug` keeps working; when absent, epp's own value stands
    p.add_argument("--log-level", default=argparse.SUPPRESS, help="same as epp --log-level")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="epp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("serve", help="run the endpoint picker")
    serve_cli.add_arguments(sp)
    _sub_log_level(sp)  # `epp serve --log-level DEBUG` logs each pick's scores (the explanation)
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
        return serve_cli.run(args)
    if args.command == "up":
        return _up(args)
    if args.command == "top":
        from epp.top import run as run_top

        return run_top(args.url, args.interval, args.once)
    if args.command == "validate":
        from epp.validate import run as run_validate

        return run_validate(args.paths, sys.stdout)
    return 2


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
        epp_replicas=args.epp_replicas,
        peer_port=args.peer_port,
        run_dir=args.run_dir,
        failure_mode_allow=args.fail_open,
        epp_tls=args.secure_serving,
        https_port=args.https_port,
        xds_port=args.xds_port,
        status_port=args.status_port,
        control_plane=False if args.static_envoy else None,
        rollout_prometheus=args.rollout_prometheus,
    )
    try:
        import uvloop

        uvloop.run(run_stack(config))
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError) as exc:
        print(f"epp up: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a configuration the stack refuses (e.g. 0 replicas)
        print(f"epp up: {exc}", file=sys.stderr)
        return 2
    return 0
