"""`epp operator`: Kubernetes mode without traffic: status and seed-pool Deployments only.

Useful when the EPP replicas run with `--no-write-status --no-reconcile-deployments`, or behind
another gateway's picker. Runs the `KubeSource` + `KubeController` (leader-elected by default)
until SIGINT/SIGTERM, then hands the Lease back. `add_arguments` puts the flags on any parser
(`epp.cli` registers them as its `operator` sub-command and calls `run_parsed`); `run(argv)` is
the standalone entry point. Building the parser does not import the Kubernetes client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING

from epp.kube import flags
from epp.kube.flags import config_from_args

if TYPE_CHECKING:
    from epp.kube.runtime import KubeModeConfig

log = logging.getLogger(__name__)

DESCRIPTION = __doc__.splitlines()[0]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="epp operator", description=DESCRIPTION)
    add_arguments(p)
    p.add_argument("--log-level", default="INFO")
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Every flag but --log-level, which `epp` has already: the Kubernetes-mode ones."""
    flags.add_arguments(p)


async def operate(config: KubeModeConfig, stop: asyncio.Event) -> None:
    from epp.kube.runtime import KubeRuntime

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
    return run_parsed(parser().parse_args(list(argv)))


def run_parsed(ns: argparse.Namespace) -> int:
    """Operate with parsed flags (`add_arguments`) until SIGINT/SIGTERM."""
    # a no-op under `epp`, which configured logging from its own --log-level already
    logging.basicConfig(
        level=ns.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(_main(config_from_args(ns)))
    return 0
