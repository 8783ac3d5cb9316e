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
from epp.types import EndpointState

UNITS = ("requests", "tokens")


class InFlightScorer:
    name = "in-flight-scorer"

    def __init__(self, unit: str = "requests") -> None:
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}")
        self.unit = unit

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> InFlightScorer:
        return cls(params.choice("unit", "requests", UNITS))

    def score(self, request: SchedulingRequest, candidates: Sequence[EndpointState]) -> list[float]:
        if self.unit == "requests":
            return min_max([c.in_flight for c in candidates])
        return min_max([c.in_flight_tokens for c in candidates])


class TokenLoadScorer:
    name = "token-load-scorer"

    def __init__(self, threshold_tokens: int = 4_194_304) -> None:
        if threshold_tokens < 1:
            raise ValueError("threshold_tokens must be positive")
        self.threshold_tokens = threshold_tokens

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> TokenLoadScorer:
        return cls(params.integer("queueThresholdTokens", 4_194_304, low=1))

    def score(self, request: SchedulingRequest, candidates: Sequence[EndpointState]) -> list[float]:
        limit = float(self.threshold_tokens)
        return [1.0 - min(1.0, c.in_flight_tokens / limit) for c in candidates]
