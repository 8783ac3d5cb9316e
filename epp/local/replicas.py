"""The local stack's EPP replicas: N `epp serve` processes that serve the same pools at once.

Replica 0 listens on 127.0.0.1, where a lone EPP would; replica i on 127.0.1.i, all on the same
ports, as pods would in a cluster. Each replica knows the others' HTTP addresses as its peers
(`--peers`), with whom it shares what it learns from its own traffic (`epp.peers`). Envoy
spreads ext_proc streams over them and checks their health (`epp.local.envoy`). Replicas stop
gracefully (SIGTERM: drain, then stop), restart one at a time, or die abruptly (tests).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from epp.local.processes import ChildProcess, wait_until

FIRST_HOST = "127.0.0.1"


def replica_host(index: int) -> str:
    return FIRST_HOST if index == 0 else f"127.0.1.{index}"


class EppReplicas:
    """`count` replicas of one `epp serve` command line (`base_argv`, without host or peers)."""

    def __init__(
        self,
        count: int,
        base_argv: Sequence[str],
        grpc_port: int,
        metrics_port: int,
        run_dir: Path,
        ready: Callable[[str], Awaitable[bool]],
        peer_port: int,
        share: bool = True,
    ) -> None:
        if count < 1:
            raise ValueError(f"EPP replicas must be at least 1, not {count}")
        self.count = count
        self.base_argv = list(base_argv)
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.run_dir = run_dir
        self._ready = ready  # url → whether that replica answers ready
        self.peer_port = peer_port
        self.share = share  # False: replicas know nothing of each other (for comparison)
        self.children: list[ChildProcess | None] = [None] * count

    @property
    def hosts(self) -> list[str]:
        return [replica_host(i) for i in range(self.count)]

    @property
    def ext_proc(self) -> tuple[tuple[str, int], ...]:
        """Where Envoy reaches the replicas' ext_proc services."""
        return tuple((h, self.grpc_port) for h in self.hosts)

    def argv(self, index: int) -> list[str]:
        argv = [*self.base_argv, "--host", replica_host(index)]
        peers = [f"{h}:{self.peer_port}" for i, h in enumerate(self.hosts) if i != index]
        if peers and self.share:
            argv += ["--peers", ",".join(peers), "--replica-name", f"epp-{index}"]
        return argv

    def ready_url(self, index: int) -> str:
        return f"http://{replica_host(index)}:{self.metrics_port}/healthz"

    async def start(self, index: int | None = None) -> None:
        """Start one replica (or all) and wait until it is ready."""
        indices = range(self.count) if index is None else (index,)
        for i in indices:
            name = "epp" if self.count == 1 else f"epp-{i}"
            child = ChildProcess(
                name, [sys.executable, *self.argv(i)], self.run_dir / f"{name}.log"
            )
            self.children[i] = child
            await child.start()
        for i in indices:
            await self._wait_ready(i)

    async def _wait_ready(self, index: int) -> None:
        child, url = self.children[index], self.ready_url(index)
        assert child is not None
        await wait_until(lambda: self._ready(url), f"{child.name} to be ready", 30, child)

    async def stop(self, index: int | None = None, grace: float = 15.0) -> None:
        """SIGTERM: the replica drains (health NOT_SERVING, in-flight finish), then exits."""
        for i in range(self.count) if index is None else (index,):
            child = self.children[i]
            if child is not None:
                await child.stop(grace)

    async def restart(self, index: int) -> None:
        await self.stop(index)
        await self.start(index)

    async def kill(self, index: int) -> None:
        """SIGKILL: the replica dies with its streams."""
        child = self.children[index]
        if child is not None:
            await child.kill()

    @property
    def first(self) -> ChildProcess | None:
        return self.children[0]
