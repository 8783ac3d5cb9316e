"""`epp serve --workers N`: N worker processes behind one ext_proc port, so all cores pick.

Every worker is a whole `epp serve` (the same command line) and binds the same gRPC and health
ports: gRPC sets SO_REUSEPORT, so the kernel spreads connections over the workers. Each worker
gets its own metrics port and peer port (the base + its index) and shares in-flight counts with
the others exactly as replicas do (`epp.peers`): workers are replicas on one machine. The
supervisor forwards SIGINT/SIGTERM (each worker drains as a replica does), restarts a worker that
dies, and exits when all have stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

log = logging.getLogger("epp.workers")
RESTART_DELAY = 1.0


def without_workers(argv: Sequence[str]) -> list[str]:
    """The command line without its --workers flag."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


def worker_argv(
    argv: Sequence[str],
    index: int,
    count: int,
    metrics_port: int,
    peer_port: int,
    name: str,
    peers: Sequence[str] = (),
) -> list[str]:
    """Worker `index`'s command line: `argv` (an `epp serve` without --workers) with its own
    metrics and peer ports, name, and the other workers as peers."""
    others = [f"127.0.0.1:{peer_port + j}" for j in range(count) if j != index]
    return [
        *argv,
        "--metrics-port",
        str(metrics_port + index if metrics_port else 0),
        "--peer-port",
        str(peer_port + index),
        "--replica-name",
        f"{name}-w{index}",
        "--peers",
        ",".join([*others, *peers]),
    ]


class Workers:
    def __init__(self, argvs: Sequence[Sequence[str]]) -> None:
        self.argvs = [list(a) for a in argvs]
        self.procs: list[asyncio.subprocess.Process | None] = [None] * len(argvs)
        self.stopping = False

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        await asyncio.gather(*(self._keep(i) for i in range(len(self.argvs))))
        return 0

    def stop(self) -> None:
        self.stopping = True
        for proc in self.procs:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)

    async def _keep(self, index: int) -> None:
        """Run worker `index`; start it again when it dies, until the supervisor stops."""
        while not self.stopping:
            proc = self.procs[index] = await asyncio.create_subprocess_exec(*self.argvs[index])
            code = await proc.wait()
            if self.stopping:
                return
            log.error("worker %d exited with %d: starting it again", index, code)
            await asyncio.sleep(RESTART_DELAY)


def run_workers(argvs: Sequence[Sequence[str]]) -> int:
    try:
        return asyncio.run(Workers(argvs).run())
    except KeyboardInterrupt:
        return 0


def python_argv(argv: Sequence[str]) -> list[str]:
    """How to run `epp` with these arguments from this interpreter."""
    return [sys.executable, "-m", "epp", *argv]
