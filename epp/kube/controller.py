"""The leader-only half of Kubernetes mode: status and pool Deployments follow the cluster.

`KubeController.run()` consumes `KubeSource.watch_views()` and, whenever this replica leads (or
when no elector is given), writes status (`status.StatusWriter`) and reconciles the seed pools'
Deployments (`deployments.DeploymentReconciler`) from the latest view: on every change, on
gaining leadership, and every `period` seconds (catching drift made behind its back and retrying
failures). The elector runs beside it; every replica keeps serving traffic from the same source.
Built by `main.py` (`epp operator`) or by the EPP server when leader election is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from epp.kube.client import KubeError
from epp.kube.deployments import DeploymentReconciler
from epp.kube.leader import LeaderElector
from epp.kube.source import KubeSource, KubeView
from epp.kube.status import StatusWriter
from epp.rollout.controller import RolloutController

log = logging.getLogger(__name__)


class KubeController:
    def __init__(
        self,
        source: KubeSource,
        elector: LeaderElector | None,
        status: StatusWriter | None,
        deployments: DeploymentReconciler | None,
        period: float = 30.0,
        rollouts: RolloutController | None = None,
    ) -> None:
        self._source = source
        self._elector = elector
        self._status = status
        self._deployments = deployments
        self._period = period
        self._rollouts = rollouts  # canary rollouts, moved by the leader only
        self._dirty = asyncio.Event()
        self._view: KubeView | None = None
        self.passes = 0  # completed leader passes (tests and the debug view read it)
        if elector is not None:
            elector.add_listener(self.leadership_changed)

    def leadership_changed(self, leading: bool) -> None:
        """A new leader acts at once (registered with the elector by `__init__`)."""
        if leading:
            self._dirty.set()

    @property
    def leading(self) -> bool:
        return self._elector is None or self._elector.is_leader

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._follow())
            if self._elector is not None:
                tasks.create_task(self._elector.run())
            tasks.create_task(self._act())
            if self._rollouts is not None:
                tasks.create_task(self._rollouts.run(enabled=lambda: self.leading))

    async def _follow(self) -> None:
        async for view in self._source.watch_views():
            self._view = view
            self._dirty.set()

    async def _act(self) -> None:
        if self._view is None:
            await self._source.synced()
            self._view = self._source.view()
        self._dirty.set()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self._period)
            self._dirty.clear()
            if self.leading and self._view is not None:
                await self.act_once(self._view)

    async def act_once(self, view: KubeView) -> None:
        try:
            if self._deployments is not None:
                await self._deployments.reconcile(view)
            if self._status is not None:
                await self._status.write(view)
            self.passes += 1
        except (KubeError, OSError, TimeoutError) as exc:
            log.warning("leader pass failed (%s); retrying in %.0fs", exc, self._period)
