"""EPP-side load: `in-flight-scorer` (requests or tokens, min-max) and `token-load-scorer`.

The EPP counts what it sent to each pod and what has not finished yet (`EndpointState.in_flight`,
`in_flight_tokens`). These counters react to a burst at once, while scraped metrics lag by a
scrape interval, and they are never stale. `token-load-scorer` is upstream's absolute form:
1 - min(1, tokens / queueThresholdTokens).
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
    name = "in-flight-scorer"
    bounded = True  # scores already in [0, 1]: the profile skips its clamp

    def __init__(self, unit: str = "requests") -> None:
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}")
        self.unit = unit

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> InFlightScorer:
        return cls(params.choice("unit", "requests", UNITS))

    def score(self, request: SchedulingRequest, candidates: Sequence[EndpointState]) -> list[float]:
        snap = snapshot_of(candidates)
        return min_max(snap.in_flight if self.unit == "requests" else snap.in_flight_tokens)


class TokenLoadScorer:
    name = "token-load-scorer"
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
