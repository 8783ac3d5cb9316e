"""EPP-side load: `in-flight-scorer` (requests or tokens, min-max) and `token-load-scorer`.

The EPP counts what it sent to each pod and what has not finished yet (`EndpointState.in_flight`,
`in_flight_tokens`). These counters react to a burst at once, while scraped metrics lag by a
scrape interval, and they are never stale. With `speedAware` (default) the count is weighed by
how slow the endpoint has been measured to stream tokens relative to the fastest candidate
(`EndpointState.tpot`), so a half-speed GPU is as "full" with half the requests.
`token-load-scorer` is upstream's absolute form: 1 - min(1, tokens / queueThresholdTokens).
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.scheduling.base import BuildContext, SchedulingRequest
from epp.scheduling.params import Params
from epp.scheduling.plugins.signals import min_max
from epp.scheduling.snapshot import snapshot_of
from epp.types import EndpointState

UNITS = ("requests", "tokens")


class InFlightScorer:
    type = "in-flight-scorer"
    name = type
    bounded = True  # scores already in [0, 1]: the profile skips its clamp

    def __init__(self, unit: str = "requests", speed_aware: bool = True) -> None:
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}")
        self.unit = unit
        self.speed_aware = speed_aware

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> InFlightScorer:
        return cls(params.choice("unit", "requests", UNITS), params.boolean("speedAware", True))

    def score(self, request: SchedulingRequest, candidates: Sequence[EndpointState]) -> list[float]:
        snap = snapshot_of(candidates)
        loads = snap.in_flight if self.unit == "requests" else snap.in_flight_tokens
        if not self.speed_aware:
            return min_max(loads)
        if not snap.fastest_tpot:
            return min_max(loads)
        # (load + 1): the request being placed counts too, so an idle slow pod still ranks
        # behind an idle fast one
        return min_max([(x + 1) * r for x, r in zip(loads, snap.relative_pace, strict=True)])


class TokenLoadScorer:
    type = "token-load-scorer"
    name = type
    bounded = True  # scores already in [0, 1]: the profile skips its clamp

    def __init__(self, threshold_tokens: int = 4_194_304) -> None:
        if threshold_tokens < 1:
            raise ValueError("threshold_tokens must be positive")
        self.threshold_tokens = threshold_tokens

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> TokenLoadScorer:
        return cls(params.integer("queueThresholdTokens", 4_194_304, low=1))

    def score(self, request: SchedulingRequest, candidates: Sequence[EndpointState]) -> list[float]:
        limit = self.threshold_tokens
        inv = 1.0 / limit
        return [
            1.0 - t * inv if t < limit else 0.0 for t in snapshot_of(candidates).in_flight_tokens
        ]
