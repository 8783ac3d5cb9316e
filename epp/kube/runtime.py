"""Kubernetes mode assembled: flags → `KubeModeConfig` → `KubeRuntime` (client, source, leader).

`flags.py` turns `epp serve --kubernetes` / `epp operator` flags into a `KubeModeConfig`.
`KubeRuntime.open` connects and builds the `KubeSource`, and when leader election is on
(or writes are wanted without it) the `LeaderElector` + `KubeController` that write status and
reconcile seed-pool Deployments; `aclose` stops the loops, hands the Lease back and closes the
client. The EPP server spawns `feed(...)` and `controller.run()` under its own task owner.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from epp.kube.client import ClientConfig, KubeApi, connect
from epp.kube.controller import KubeController
from epp.kube.deployments import DeploymentReconciler
from epp.kube.leader import LeaderElector, LeaderSettings
from epp.kube.source import KubeSource, SourceConfig
from epp.kube.status import ParentRef, StatusWriter


@dataclass(frozen=True, slots=True)
class KubeModeConfig:
    client: ClientConfig = field(default_factory=ClientConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    leader_elect: bool = True
    leader: LeaderSettings = field(default_factory=LeaderSettings)
    write_status: bool = True
    reconcile_deployments: bool = True
    parent: ParentRef = field(default_factory=ParentRef)


@dataclass(slots=True)
class KubeRuntime:
    api: KubeApi
    source: KubeSource
    elector: LeaderElector | None
    controller: KubeController | None

    @classmethod
    async def open(cls, config: KubeModeConfig) -> KubeRuntime:
        api = await connect(config.client)
        source = KubeSource(api, config.source)
        status = StatusWriter(api, config.parent) if config.write_status else None
        deployments = DeploymentReconciler(api) if config.reconcile_deployments else None
        if status is None and deployments is None:
            return cls(api, source, None, None)
        elector = LeaderElector(api, config.leader) if config.leader_elect else None
        controller = KubeController(source, elector, status, deployments)
        return cls(api, source, elector, controller)

    async def aclose(self) -> None:
        """Call after the tasks running `feed`/`controller.run()` were cancelled."""
        await self.source.aclose()
        if self.elector is not None:
            with contextlib.suppress(Exception):
                await self.elector.release()
        await self.api.close()
