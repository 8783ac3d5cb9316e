"""GPU utilization, GPU memory and GPU health per pod, polled from a Prometheus server.

DCGM or the nvidia exporter put GPU numbers in Prometheus, not in the model server, so `GpuPoller`
runs one instant query (two with memory) every few seconds with `prometheus-api-client`. That
client is synchronous (requests), so each poll runs in a worker thread (`asyncio.to_thread`),
never on the event loop. Results go to a `GpuSink` (the datastore) keyed "namespace/pod", or the
bare pod name when the series has no namespace label. With `health` on, DCGM's throttle reasons,
temperature, violation time and XID errors are queried too and `health.DcgmHealth` turns them
into each pod's health class (`GpuMetrics.health`). A missing or failing Prometheus is logged
once per outage and every pod it reported becomes unknown (`GpuMetrics()` values of None); the
poller never crashes. Neighbours: `epp.scrape` does the same for model-server /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from epp.gpu.health import DcgmHealth, HealthSettings, Readings
from epp.hardware import HEALTH_OK
from epp.types import GpuMetrics

log = logging.getLogger(__name__)

DCGM_MEMORY_QUERY = (
    "avg by (pod, namespace) (DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE))"
)

Query = Callable[[str], Sequence[Mapping[str, Any]]]
"""Run one PromQL instant query and return its vector result (blocking; called in a thread)."""


@dataclass(frozen=True, slots=True)
class GpuSettings:
    prometheus_url: str | None = None  # None: GPU polling is off, every pod stays unknown
    interval: float = 5.0
    query: str = "avg by (pod, namespace) (DCGM_FI_DEV_GPU_UTIL)"  # percent 0..100
    memory_query: str | None = DCGM_MEMORY_QUERY  # fraction 0..1; None: not polled
    pod_label: str = "pod"
    namespace_label: str = "namespace"
    timeout: float = 2.0
    utilization_scale: float = 1.0  # 100.0 for exporters that report 0..1 (nvidia_gpu_duty_cycle)
    health: HealthSettings = field(default_factory=HealthSettings)

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.timeout <= 0 or self.utilization_scale <= 0:
            raise ValueError("GPU interval, timeout and utilization_scale must be > 0")


class GpuSink(Protocol):
    def set_gpu(self, pod_key: str, gpu: GpuMetrics) -> None: ...


def _prometheus_query(settings: GpuSettings) -> tuple[Query, Callable[[], None]]:
    from prometheus_api_client import PrometheusConnect
    from urllib3.util.retry import Retry

    client = PrometheusConnect(
        url=settings.prometheus_url, timeout=settings.timeout, retry=Retry(total=0)
    )

    def query(promql: str) -> Sequence[Mapping[str, Any]]:
        result = client.custom_query(promql)
        if not isinstance(result, list):
            raise ValueError(f"unexpected Prometheus result type {type(result).__name__}")
        return result

    return query, client.close


class GpuPoller:
    """Polls Prometheus until cancelled and hands each pod's GPU numbers to the sink."""

    def __init__(
        self,
        sink: GpuSink,
        settings: GpuSettings,
        *,
        query: Query | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._settings = settings
        self._query = query
        self._clock = clock
        self._known: set[str] = set()
        self._failing = False
        self._health = DcgmHealth(settings.health)

    async def run(self) -> None:
        """Returns at once when no Prometheus URL is configured; otherwise runs until cancelled."""
        if self._query is None and self._settings.prometheus_url is None:
            log.info("no Prometheus URL configured: GPU utilization stays unknown")
            return
        close: Callable[[], None] | None = None
        query = self._query
        if query is None:
            query, close = _prometheus_query(self._settings)
        try:
            while True:
                started = self._clock()
                await self.poll_once(query)
                await asyncio.sleep(max(0.0, self._settings.interval - (self._clock() - started)))
        finally:
            if close is not None:
                close()

    async def poll_once(self, query: Query) -> None:
        s = self._settings
        try:
            util = await asyncio.to_thread(query, s.query)
            memory = await asyncio.to_thread(query, s.memory_query) if s.memory_query else []
            utilization = self._by_pod(util, s.utilization_scale, 100.0)
            memory_used = self._by_pod(memory, 1.0, 1.0)
            readings = await self._readings(query) if s.health.enabled else None
        except Exception as exc:  # any client, HTTP or payload error degrades to "unknown"
            if not self._failing:
                log.warning(
                    "GPU metrics from Prometheus unavailable: %s: %s", type(exc).__name__, exc
                )
                self._failing = True
            self._forget(self._known)
            self._health.reset()
            return
        if self._failing:
            log.info("GPU metrics from Prometheus available again")
            self._failing = False
        now = self._clock()
        health = self._health.update(readings, now) if readings is not None else {}
        # a pod only the health queries name is news only when its GPU is not ok
        unwell = {key for key, cls in health.items() if cls != HEALTH_OK}
        seen = utilization.keys() | memory_used.keys() | unwell
        for key in seen:
            gpu = GpuMetrics(
                utilization.get(key), memory_used.get(key), now, health.get(key, HEALTH_OK)
            )
            self._sink.set_gpu(key, gpu)
        self._forget(self._known - seen)
        self._known = set(seen)

    async def _readings(self, query: Query) -> Readings:
        h = self._settings.health
        reasons: dict[str, int] = {}
        if h.reasons_query:
            for key, value in self._series(await asyncio.to_thread(query, h.reasons_query)):
                reasons[key] = reasons.get(key, 0) | int(value)  # OR over the pod's GPUs

        async def by_pod(promql: str | None) -> dict[str, float]:
            if not promql:
                return {}
            return self._by_pod(await asyncio.to_thread(query, promql), 1.0, math.inf)

        temperature = await by_pod(h.temperature_query)
        violation: dict[str, float] = {}
        for promql in h.violation_queries:
            for key, value in (await by_pod(promql)).items():
                violation[key] = max(value, violation.get(key, 0.0))
        xid = await by_pod(h.xid_query)
        return Readings(reasons, temperature, violation, xid)

    def _forget(self, keys: set[str]) -> None:
        now = self._clock()
        for key in keys:
            self._sink.set_gpu(key, GpuMetrics(sampled_at=now))
        self._known -= keys

    def _by_pod(
        self, result: Sequence[Mapping[str, Any]], scale: float, ceiling: float
    ) -> dict[str, float]:
        return {key: min(ceiling, max(0.0, v * scale)) for key, v in self._series(result)}

    def _series(self, result: Sequence[Mapping[str, Any]]) -> list[tuple[str, float]]:
        """(pod key, finite value) of each series that names a pod."""
        s = self._settings
        out: list[tuple[str, float]] = []
        for series in result:
            labels = series.get("metric") or {}
            pod = labels.get(s.pod_label)
            if not pod:
                continue
            namespace = labels.get(s.namespace_label)
            key = f"{namespace}/{pod}" if namespace else str(pod)
            try:
                value = float(series["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            if math.isfinite(value):
                out.append((key, value))
        return out
