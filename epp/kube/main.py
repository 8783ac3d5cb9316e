"""`epp operator`: Kubernetes mode without traffic: status and seed-pool Deployments only.

Useful when the EPP replicas run with `--no-write-status --no-reconcile-deployments`, or behind
another gateway's picker. Runs the `KubeSource` + `KubeController` (leader-elected by default)
until SIGINT/SIGTERM, then hands the Lease back. `epp.cli` calls `run(argv)`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence

from epp.kube.flags import add_arguments, config_from_args
from epp.kube.runtime import KubeModeConfig, KubeRuntime

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="epp operator", description=__doc__.splitlines()[0])
    add_arguments(p)
    p.add_argument("--log-level", default="INFO")
    return p


async def operate(config: KubeModeConfig, stop: asyncio.Event) -> None:
    runtime = await KubeRuntime.open(config)
    if runtime.controller is None:
        await runtime.aclose()
        raise SystemExit("epp operator: nothing to do (status and Deployments both disabled)")
    task = asyncio.create_task(runtime.controller.run(), name="kube-controller")
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, stopping):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await runtime.aclose()
    if task.done() and not task.cancelled() and (failure := task.exception()) is not None:
        raise failure


async def _main(config: KubeModeConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await operate(config, stop)


def run(argv: Sequence[str]) -> int:
    ns = parser().parse_args(list(argv))
    logging.basicConfig(level=ns.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(_main(config_from_args(ns)))
    return 0
