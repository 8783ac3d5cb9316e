"""`epp controlplane --kubernetes`: the control plane fed by the API server, writing status back.

`KubeMode` owns the Kubernetes client, the `kubesource.GatewaySource`, an optional Lease
`epp.kube.leader.LeaderElector` and the `kubestatus.GatewayStatusWriter`. `start()` waits for the
first complete set and applies it to the `ControlPlane`; `run()` applies every later set and,
while this replica leads, writes Gateway/HTTPRoute status whenever the report changes (new
resources, or Envoy ACKing/NACKing a config), on gaining the Lease, and every `status_period`
seconds. `main` builds it from flags; tests build it against the API emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.api.model import ResourceSet
from epp.controlplane.backends import doc_key
from epp.controlplane.kubesource import GatewaySource, GatewaySourceConfig
from epp.controlplane.kubestatus import GatewayStatusWriter
from epp.controlplane.plane import ControlPlane
from epp.kube.client import ClientConfig, KubeApi, KubeError, connect
from epp.kube.leader import LeaderElector, LeaderSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KubeControlPlaneConfig:
    client: ClientConfig = field(default_factory=ClientConfig)
    source: GatewaySourceConfig = field(default_factory=GatewaySourceConfig)
    gateway_classes: tuple[str, ...] = ()  # ours besides the classes naming our controller
    write_status: bool = True
    leader_elect: bool = True
    leader: LeaderSettings = field(
        default_factory=lambda: LeaderSettings(name="epp-controlplane-leader")
    )
    status_poll: float = 0.25  # how often the report is compared with the last one written
    status_period: float = 30.0  # full pass anyway (drift, failed writes)


class KubeMode:
    def __init__(self, plane: ControlPlane, api: KubeApi, config: KubeControlPlaneConfig) -> None:
        self.plane = plane
        self.api = api
        self.config = config
        self.source = GatewaySource(api, config.source)
        self.writer = GatewayStatusWriter(api, self.source) if config.write_status else None
        self.elector: LeaderElector | None = None
        if self.writer is not None and config.leader_elect:
            self.elector = LeaderElector(api, config.leader, self._leadership)
        self.applied: Mapping[tuple[str, str], Mapping[str, Any]] = {}
        self.applied_count = 0
        self._started: ResourceSet | None = None  # the set `start` applied
        self._poke = asyncio.Event()

    @classmethod
    async def open(cls, plane: ControlPlane, config: KubeControlPlaneConfig) -> KubeMode:
        return cls(plane, await connect(config.client), config)

    @property
    def leading(self) -> bool:
        return self.elector is None or self.elector.is_leader

    def _leadership(self, leading: bool) -> None:
        if leading:
            self._poke.set()

    async def start(self) -> ResourceSet:
        """Waits for every watch's first list and applies that set."""
        resources = await self.source.synced()
        self.apply(resources)
        self._started = resources
        return resources

    def apply(self, resources: ResourceSet) -> None:
        classes = {*self.config.gateway_classes, *self.source.our_classes()}
        self.plane.gateway_classes = tuple(sorted(classes))
        if self.plane.apply(resources):
            log.info("new config generation %d", self.plane.cache.generation)
        if self.plane.error is None:
            self.applied = {
                (str(doc.get("kind")), doc_key(doc)): doc
                for doc in resources.other
                if doc.get("kind") in ("Gateway", "HTTPRoute")
            }
            self.applied_count += 1
        self._poke.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._follow())
            if self.writer is not None:
                tasks.create_task(self._write_status())
            if self.elector is not None:
                tasks.create_task(self.elector.run())

    async def _follow(self) -> None:
        async for resources in self.source.watch(since=self._started):
            self.apply(resources)

    async def _write_status(self) -> None:
        assert self.writer is not None
        last: tuple[object, int] | None = None
        last_at = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.config.status_poll)
            self._poke.clear()
            if not self.leading:
                last = None
                continue
            report = self.plane.status()
            seen = (report, self.applied_count)
            if seen == last and time.monotonic() - last_at < self.config.status_period:
                continue
            try:
                written = await self.writer.write(report, self.applied)
            except (KubeError, OSError, TimeoutError) as exc:
                log.warning("status write failed (%s); retrying", exc)
                await asyncio.sleep(self.config.status_poll)
                continue
            if written:
                log.info("wrote the status of %d Gateway API object(s)", written)
            last, last_at = seen, time.monotonic()

    async def aclose(self) -> None:
        """Call after the task running `run()` was cancelled: hands the Lease back, closes."""
        await self.source.aclose()
        if self.elector is not None:
            await self.elector.release()
        await self.api.close()
