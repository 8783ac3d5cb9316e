"""Kubernetes mode assembled: flags → `KubeModeConfig` → `KubeRuntime` (client, source, leader).

`flags.py` turns `epp serve --kubernetes` / `epp operator` flags into a `KubeModeConfig`.
`KubeRuntime.open` connects and builds the `KubeSource`, and when leader election is on
(or writes are wanted without it) the `LeaderElector` + `KubeController` that write status and
reconcile seed-pool Deployments; `aclose` stops the loops, hands the Lease back and closes the
client. The EPP server spawns `feed(...)` and `controller.run()` under its own task owner.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

from epp.kube.client import ClientConfig, KubeApi, connect
from epp.kube.controller import KubeController
from epp.kube.deployments import DeploymentReconciler
from epp.kube.leader import LeaderElector, LeaderSettings
from epp.kube.rollouts import KubeRolloutStore
from epp.kube.source import KubeSource, SourceConfig
from epp.kube.status import ParentRef, StatusWriter
from epp.rollout.controller import RolloutController
from epp.rollout.queries import PrometheusQueries
from epp.rollout.signals import MetricsSource

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KubeModeConfig:
    client: ClientConfig = field(default_factory=ClientConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    leader_elect: bool = True
    leader: LeaderSettings = field(default_factory=LeaderSettings)
    write_status: bool = True
    reconcile_deployments: bool = True
    parent: ParentRef = field(default_factory=ParentRef)
    rollout_metrics: tuple[str, ...] = ()  # EPP /metrics URLs: the leader runs rollouts
    rollout_prometheus: str | None = None  # answers the policies' PromQL checks


@dataclass(slots=True)
class KubeRuntime:
    api: KubeApi
    source: KubeSource
    elector: LeaderElector | None
    controller: KubeController | None
    signals: MetricsSource | None = None
    queries: PrometheusQueries | None = None

    @classmethod
    async def open(cls, config: KubeModeConfig) -> KubeRuntime:
        api = await connect(config.client)
        source = KubeSource(api, config.source)
        status = StatusWriter(api, config.parent) if config.write_status else None
        deployments = DeploymentReconciler(api) if config.reconcile_deployments else None
        signals = MetricsSource(config.rollout_metrics) if config.rollout_metrics else None
        if status is None and deployments is None and signals is None:
            return cls(api, source, None, None)
        elector = LeaderElector(api, config.leader) if config.leader_elect else None
        rollouts = queries = None
        if signals is not None:
            store = KubeRolloutStore(api, config.source.namespaces)
            writer = elector.identity if elector is not None else ""
            url = config.rollout_prometheus
            queries = PrometheusQueries(url) if url else None
            rollouts = RolloutController(store, signals, log.info, writer, queries)
        controller = KubeController(source, elector, status, deployments, rollouts=rollouts)
        return cls(api, source, elector, controller, signals, queries)

    async def aclose(self) -> None:
        """Call after the tasks running `feed`/`controller.run()` were cancelled."""
        await self.source.aclose()
        for client in (self.signals, self.queries):
            if client is not None:
                await client.aclose()
        if self.elector is not None:
            with contextlib.suppress(Exception):
                await self.elector.release()
        await self.api.close()
