"""`gpu-utilization-scorer` and `gpu-utilization-filter`: stay under the model's ceilings.

An InferenceModel's `loadBalancing.metrics[{name, target}]` arrive as `request.ceilings`
(percent). The scorer gives the relative headroom under the tightest ceiling, (target - value)
/ target clamped to [0, 1] (no ceiling: 100 % GPU utilization); a pod with no recent GPU sample
scores a neutral 0.5. The filter drops pods at or above a ceiling; when every pod is, the
profile falls back to all of them. Values come from `epp.gpu` (Prometheus/DCGM) via EndpointState.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from epp.scheduling.base import BuildContext, Clock, SchedulingRequest
from epp.scheduling.params import Params
from epp.scheduling.snapshot import snapshot_of
from epp.types import EndpointState, GpuMetrics

GPU_UTILIZATION = "gpu_utilization"
MEMORY_UTILIZATION = "memory_utilization"
DEFAULT_CEILINGS = ((GPU_UTILIZATION, 100.0),)
GPU_STALENESS = 30.0  # seconds: six missed Prometheus polls at the default 5 s
UNKNOWN_SCORE = 0.5


def _percent(gpu: GpuMetrics, metric: str) -> float | None:
    if metric == GPU_UTILIZATION:
        return gpu.utilization
    if metric == MEMORY_UTILIZATION and gpu.memory_used_fraction is not None:
        return gpu.memory_used_fraction * 100.0
    return None


class _GpuPlugin:
    def __init__(self, staleness: float = GPU_STALENESS, clock: Clock = time.monotonic) -> None:
        self.staleness = staleness
        self._clock = clock

    def _headroom(
        self, gpu: GpuMetrics, ceilings: Sequence[tuple[str, float]], cutoff: float
    ) -> float | None:
        """Relative headroom under the tightest known ceiling; None when nothing is known."""
        if gpu.sampled_at < cutoff:
            return None
        best: float | None = None
        for metric, target in ceilings:
            value = _percent(gpu, metric)
            if value is None or target <= 0:
                continue
            room = (target - value) / target
            best = room if best is None or room < best else best
        return best


class GpuUtilizationScorer(_GpuPlugin):
    type = "gpu-utilization-scorer"
    name = type
    bounded = True  # scores already in [0, 1]: the profile skips its clamp

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> GpuUtilizationScorer:
        return cls(params.duration("stalenessThreshold", GPU_STALENESS), ctx.clock)

    def score(self, request: SchedulingRequest, candidates: Sequence[EndpointState]) -> list[float]:
        ceilings = request.ceilings or DEFAULT_CEILINGS
        cutoff = self._clock() - self.staleness
        if snapshot_of(candidates).newest_gpu_sample < cutoff:
            return [UNKNOWN_SCORE] * len(candidates)  # no GPU source: neutral, and fast
        out = []
        for c in candidates:
            room = self._headroom(c.gpu, ceilings, cutoff)
            out.append(UNKNOWN_SCORE if room is None else 0.0 if room < 0.0 else room)
        return out


class GpuUtilizationFilter(_GpuPlugin):
    type = "gpu-utilization-filter"
    name = type

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> GpuUtilizationFilter:
        return cls(params.duration("stalenessThreshold", GPU_STALENESS), ctx.clock)

    def filter(
        self, request: SchedulingRequest, candidates: Sequence[EndpointState]
    ) -> Sequence[EndpointState]:
        if not request.ceilings:
            return candidates
        cutoff = self._clock() - self.staleness
        kept = []
        for c in candidates:
            room = self._headroom(c.gpu, request.ceilings, cutoff)
            if room is None or room > 0.0:
                kept.append(c)
        return kept
