"""`epp controlplane`: the ADS server over a folder of manifests, plus a status endpoint.

Parses the command line into `TranslateOptions`, builds a `ControlPlane`, serves ADS with grpcio
and a small aiohttp debug endpoint (`/status`, `/debug`, `/healthz`), follows the manifests with
`FolderSource`, and prints the Gateway/HTTPRoute status whenever it changes. SIGINT/SIGTERM stop
it gracefully. `epp.cli` calls `run(argv)`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from aiohttp import web

from epp.controlplane.clusters import TranslateOptions
from epp.controlplane.plane import ControlPlane
from epp.controlplane.xds import start_server
from epp.sources.files import FolderSource

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="epp controlplane",
        description="xDS control plane: Gateway + HTTPRoute (+ inference resources) → Envoy",
    )
    p.add_argument("--manifests", action="append", required=True, help="file or folder (repeat)")
    p.add_argument("--xds-host", default="127.0.0.1")
    p.add_argument("--xds-port", type=int, default=18000)
    p.add_argument("--status-port", type=int, default=18001, help="debug HTTP port, 0: off")
    p.add_argument(
        "--epp-address", default="127.0.0.1:9002", help="EPP of pools without extensionRef"
    )
    p.add_argument("--pool-epp", action="append", default=[], metavar="NS/POOL=HOST:PORT")
    p.add_argument(
        "--single-epp", action="store_true", help="every pool uses --epp-address (local stack)"
    )
    p.add_argument("--epp-tls", action="store_true", help="the EPPs serve ext_proc over TLS")
    p.add_argument("--listen-host", default="0.0.0.0", help="address Envoy's listeners bind")
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
    p.add_argument("--log-level", default="info")
    return p


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
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        options = options_from(args)
    except ValueError as exc:
        print(f"epp controlplane: {exc}")
        return 2
    plane = ControlPlane(options, args.cert_dir, args.gateway_class)
    return asyncio.run(serve(plane, args))


async def serve(plane: ControlPlane, args: argparse.Namespace) -> int:
    source = FolderSource([Path(p) for p in args.manifests], interval=args.interval)
    resources = source.current()
    for problem in resources.problems:
        log.warning("%s", problem)
    plane.apply(resources)
    grpc_server, port = await start_server(plane.server, args.xds_host, args.xds_port)
    print(f"xDS (ADS) listening on {args.xds_host}:{port}", flush=True)
    runner: web.AppRunner | None = None
    if args.status_port:
        runner = await _debug_site(plane, args.xds_host, args.status_port)
        print(f"status on http://{args.xds_host}:{args.status_port}/status", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with asyncio.TaskGroup() as group:
            follow = group.create_task(plane.follow(source.watch()))
            report = group.create_task(_print_status(plane))
            await stop.wait()
            follow.cancel()
            report.cancel()
    finally:
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
