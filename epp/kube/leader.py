"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Every replica serves traffic; only the leader writes status and reconciles Deployments. A replica
takes the Lease when it is free, released, or not renewed for `lease_duration` as *observed on
this replica's own clock* (so clock skew between nodes does not matter), renews it every
`retry_period`, and steps down when it could not renew for `renew_deadline`. Writes carry the
read resourceVersion, so two candidates racing for one Lease get one 409 Conflict. `release()`
hands the Lease back on shutdown so a peer takes over at once. Used by `controller.py`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from epp.kube.client import LEASES, JsonObj, KubeApi, KubeError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LeaderSettings:
    namespace: str = "default"
    name: str = "epp-leader"
    identity: str = ""  # "" = hostname plus a random suffix
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def default_identity() -> str:
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _micro_time(stamp: float) -> str:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """`run()` campaigns forever; `is_leader` says whether this replica leads right now."""

    def __init__(
        self,
        api: KubeApi,
        settings: LeaderSettings,
        on_change: Callable[[bool], None] = lambda leading: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self.settings = settings
        self.identity = settings.identity or default_identity()
        self._listeners = [on_change]
        self._clock = clock
        self._wall = wall
        self.is_leader = False
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._renewed_at = 0.0

    def add_listener(self, listener: Callable[[bool], None]) -> None:
        self._listeners.append(listener)

    @property
    def _path(self) -> str:
        return LEASES.path(self.settings.namespace, self.settings.name)

    async def run(self) -> None:
        try:
            while True:
                try:
                    ok = await self.try_acquire_or_renew()
                except (KubeError, OSError, ValueError, TimeoutError) as exc:
                    log.debug("lease %s: %s", self.settings.name, exc)
                    ok = False
                now = self._clock()
                if ok:
                    self._renewed_at = now
                    self._set(True)
                elif self.is_leader and now - self._renewed_at > self.settings.renew_deadline:
                    log.warning("lease %s: could not renew; stepping down", self.settings.name)
                    self._set(False)
                await asyncio.sleep(self.settings.retry_period)
        finally:
            self._set(False)

    async def try_acquire_or_renew(self) -> bool:
        now = self._wall()
        try:
            lease = await self._api.get(self._path)
        except KubeError as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.settings.name, "namespace": self.settings.namespace},
                "spec": self._spec(now, now, 0),
            }
            return await self._write("POST", LEASES.path(self.settings.namespace), body)
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""))
        if record != self._observed:
            self._observed, self._observed_at = record, self._clock()
        duration = float(spec.get("leaseDurationSeconds") or self.settings.lease_duration)
        if holder and holder != self.identity and self._observed_at + duration > self._clock():
            self._set(False)
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        acquired = str(spec.get("acquireTime") or "") if holder == self.identity else ""
        if holder != self.identity:
            transitions += 1
        lease["spec"] = {**spec, **self._spec(now, now, transitions)}
        if acquired:
            lease["spec"]["acquireTime"] = acquired
        return await self._write("PUT", self._path, lease)

    async def release(self) -> None:
        """Gives the Lease up (holder cleared) if this replica holds it; call after `run()` ends."""
        try:
            lease = await self._api.get(self._path)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") == self.identity:
                lease["spec"] = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1}
                await self._api.request("PUT", self._path, body=lease)
        except (KubeError, OSError, TimeoutError) as exc:
            log.warning("lease %s: release failed: %s", self.settings.name, exc)
        self._set(False)

    def _spec(self, acquire: float, renew: float, transitions: int) -> JsonObj:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.settings.lease_duration)),
            "acquireTime": _micro_time(acquire),
            "renewTime": _micro_time(renew),
            "leaseTransitions": transitions,
        }

    async def _write(self, method: str, path: str, body: JsonObj) -> bool:
        try:
            await self._api.request(method, path, body=body)
        except KubeError as exc:
            if exc.status in (409, 422):  # someone else wrote first
                return False
            raise
        return True

    def _set(self, leading: bool) -> None:
        if leading != self.is_leader:
            self.is_leader = leading
            log.info("%s %s leadership of lease %s", self.identity,
                     "acquired" if leading else "lost", self.settings.name)  # fmt: skip
            for listener in self._listeners:
                listener(leading)
