"""`epp controlplane`: the ADS server over manifests or the API server, plus a status endpoint.

Parses the command line into `TranslateOptions`, builds a `ControlPlane`, serves ADS with grpcio
and a small aiohttp debug endpoint (`/status`, `/debug`, `/healthz`), and follows either a folder
of manifests (`--manifests`, `FolderSource`) or the cluster (`--kubernetes`, `kubemode.KubeMode`,
which also writes Gateway/HTTPRoute status). It prints the status whenever it changes.
SIGINT/SIGTERM stop it gracefully. `add_arguments` puts the flags on any parser (`epp.cli`
registers them as its `controlplane` sub-command and calls `run_parsed`); `run(argv)` is the
standalone entry point. Building the parser imports neither grpc nor aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from epp.controlplane.clusters import TranslateOptions

if TYPE_CHECKING:
    from aiohttp import web

    from epp.controlplane.kubemode import KubeControlPlaneConfig, KubeMode
    from epp.controlplane.plane import ControlPlane

log = logging.getLogger(__name__)

DESCRIPTION = "xDS control plane: Gateway + HTTPRoute (+ inference resources) → Envoy"


def _default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(TranslateOptions) if f.name == name)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="epp controlplane", description=DESCRIPTION)
    add_arguments(p)
    p.add_argument("--log-level", default="info")
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Every flag but --log-level, which `epp` has already."""
    p.add_argument("--manifests", action="append", default=[], help="file or folder (repeat)")
    p.add_argument(
        "--kubernetes", action="store_true", help="watch the API server instead of --manifests"
    )
    p.add_argument("--xds-host", default="127.0.0.1")
    p.add_argument("--xds-port", type=int, default=18000)
    p.add_argument("--status-port", type=int, default=18001, help="debug HTTP port, 0: off")
    p.add_argument(
        "--epp-address", default=_default("default_epp"), help="EPP of pools without extensionRef"
    )
    p.add_argument("--pool-epp", action="append", default=[], metavar="NS/POOL=HOST:PORT")
    p.add_argument(
        "--single-epp", action="store_true", help="every pool uses --epp-address (local stack)"
    )
    p.add_argument("--epp-tls", action="store_true", help="the EPPs serve ext_proc over TLS")
    p.add_argument(
        "--listen-host", default=_default("listen_host"), help="address Envoy's listeners bind"
    )
    p.add_argument("--port-map", action="append", default=[], metavar="GATEWAY_PORT=LOCAL_PORT")
    p.add_argument("--plain-http-port", type=int, help="also serve every route over plain HTTP")
    p.add_argument(
        "--plain-any-host",
        action="store_true",
        help="the plain HTTP port serves the routes whatever the Host header (local)",
    )
    p.add_argument("--cert-dir", type=Path, help="generate missing TLS Secrets here (local)")
    p.add_argument("--gateway-class", action="append", default=[], help="ours (default: any)")
    p.add_argument("--interval", type=float, default=0.5, help="manifest poll interval (s)")
    _kube_arguments(p)


def _kube_arguments(p: argparse.ArgumentParser) -> None:
    k = p.add_argument_group("Kubernetes mode (--kubernetes)")
    k.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster)")
    k.add_argument("--kube-context", default=None)
    k.add_argument("--api-server", "--kube-api", dest="api_server", default=None,
                   help="API server URL without credentials (kubectl proxy, tests)")  # fmt: skip
    k.add_argument("--namespace", action="append", default=[],
                   help="watch only this namespace (repeatable; default: all)")  # fmt: skip
    k.add_argument("--secret-namespace", action="append", default=None,
                   help="read TLS Secrets here only (repeatable)")  # fmt: skip
    k.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True,
                   help="only the Lease holder writes status")  # fmt: skip
    k.add_argument("--lease-name", default="epp-controlplane-leader")
    k.add_argument("--lease-namespace", default="default")
    k.add_argument("--write-status", action=argparse.BooleanOptionalAction, default=True,
                   help="write Gateway and HTTPRoute status to the API server")  # fmt: skip
    k.add_argument("--resync", type=float, default=600.0, help="seconds between full relists")


def kube_config(args: argparse.Namespace) -> KubeControlPlaneConfig:
    from epp.controlplane.kubemode import KubeControlPlaneConfig
    from epp.controlplane.kubesource import GatewaySourceConfig
    from epp.kube.client import ClientConfig
    from epp.kube.leader import LeaderSettings
    from epp.kube.watch import WatchSettings

    return KubeControlPlaneConfig(
        client=ClientConfig(
            kubeconfig=args.kubeconfig, context=args.kube_context, host=args.api_server
        ),
        source=GatewaySourceConfig(
            namespaces=tuple(args.namespace),
            secret_namespaces=tuple(args.secret_namespace) if args.secret_namespace else None,
            watch=WatchSettings(resync=args.resync),
        ),
        gateway_classes=tuple(args.gateway_class),
        write_status=args.write_status,
        leader_elect=args.leader_elect,
        leader=LeaderSettings(namespace=args.lease_namespace, name=args.lease_name),
    )


def mode_error(args: argparse.Namespace) -> str | None:
    """Why the arguments do not pick exactly one source, or None."""
    if args.kubernetes and args.manifests:
        return "--manifests and --kubernetes are exclusive: pick one source"
    if not args.kubernetes and not args.manifests:
        return "give --manifests PATH (file mode) or --kubernetes (watch the API server)"
    kube_only = [
        flag
        for flag, value in (
            ("--kubeconfig", args.kubeconfig),
            ("--api-server", args.api_server),
            ("--namespace", args.namespace),
            ("--secret-namespace", args.secret_namespace),
        )
        if value
    ]
    if kube_only and not args.kubernetes:
        return f"{', '.join(kube_only)} only apply with --kubernetes"
    return None


def options_from(args: argparse.Namespace) -> TranslateOptions:
    return TranslateOptions(
        default_epp=args.epp_address,
        pool_epps=_pairs(args.pool_epp),
        ignore_extension_refs=args.single_epp,
        epp_tls=args.epp_tls,
        listen_host=args.listen_host,
        port_map={int(k): int(v) for k, v in _pairs(args.port_map).items()},
        plain_http_port=args.plain_http_port,
        plain_any_host=args.plain_any_host,
    )


def _pairs(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key or not item:
            raise ValueError(f"expected KEY=VALUE, got {value!r}")
        out[key] = item
    return out


def run(argv: list[str]) -> int:
    p = parser()
    return run_parsed(p.parse_args(argv), p)


def run_parsed(args: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    """Serve what parsed flags (`add_arguments`) describe; `p` reports a usage error."""
    if (problem := mode_error(args)) is not None:
        p.error(problem)
    # a no-op under `epp`, which configured logging from its own --log-level already
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        options = options_from(args)
    except ValueError as exc:
        print(f"epp controlplane: {exc}")
        return 2
    from epp.controlplane.plane import ControlPlane

    plane = ControlPlane(options, args.cert_dir, args.gateway_class)
    return asyncio.run(serve(plane, args))


async def serve(plane: ControlPlane, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    kube: KubeMode | None = None
    follow: Coroutine[Any, Any, None]
    if args.kubernetes:
        from epp.controlplane.kubemode import KubeMode

        kube = await KubeMode.open(plane, kube_config(args))
        if not await _until_synced(kube, stop):
            await kube.aclose()
            return 0
        follow = kube.run()
    else:
        from epp.sources.files import FolderSource

        source = FolderSource([Path(p) for p in args.manifests], interval=args.interval)
        resources = source.current()
        for problem in resources.problems:
            log.warning("%s", problem)
        plane.apply(resources)
        follow = plane.follow(source.watch())
    try:
        return await _serve_xds(plane, args, follow, stop)
    finally:
        if kube is not None:
            await kube.aclose()


async def _until_synced(kube: KubeMode, stop: asyncio.Event) -> bool:
    """Waits for the first complete list of every watched kind; False when stopped first."""
    print("waiting for the API server's lists…", flush=True)
    synced = asyncio.create_task(kube.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({synced, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not synced.done():
        synced.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await synced
        return False
    for problem in synced.result().problems:
        log.warning("%s", problem)
    return True


async def _serve_xds(
    plane: ControlPlane,
    args: argparse.Namespace,
    follow: Coroutine[Any, Any, None],
    stop: asyncio.Event,
) -> int:
    from epp.controlplane.xds import start_server

    grpc_server, port = await start_server(plane.server, args.xds_host, args.xds_port)
    print(f"xDS (ADS) listening on {args.xds_host}:{port}", flush=True)
    runner: web.AppRunner | None = None
    try:
        if args.status_port:
            runner = await _debug_site(plane, args.xds_host, args.status_port)
            print(f"status on http://{args.xds_host}:{args.status_port}/status", flush=True)
        async with asyncio.TaskGroup() as group:
            following = group.create_task(follow)
            report = group.create_task(_print_status(plane))
            await stop.wait()
            following.cancel()
            report.cancel()
    finally:
        follow.close()  # never started when the debug site failed to bind
        await grpc_server.stop(1.0)
        if runner is not None:
            await runner.cleanup()
    return 0


async def _print_status(plane: ControlPlane) -> None:
    last: list[str] = []
    while True:
        lines = plane.status().lines()
        if plane.error:
            lines.append(f"error: {plane.error}")
        if lines != last:
            print("\n".join(lines), flush=True)
            last = lines
        await asyncio.sleep(1.0)


async def _debug_site(plane: ControlPlane, host: str, port: int) -> web.AppRunner:
    from aiohttp import web

    async def status(_request: web.Request) -> web.Response:
        return web.json_response(plane.status().to_json())

    async def debug(_request: web.Request) -> web.Response:
        return web.json_response(plane.debug())

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_get("/debug", debug)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError:
        await runner.cleanup()
        raise
    return runner


if __name__ == "__main__":
    import sys

    raise SystemExit(run(sys.argv[1:]))
