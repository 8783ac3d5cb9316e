"""`service-time-scorer`: how much longer this request would take here than on the best endpoint.

The prediction is `epp.scheduling.service_time.ServiceTime` (output tokens x measured pace, plus
the wait behind a full batch). The score is 1 - (predicted - best) / (a typical request's time
on the fastest endpoint), clamped to [0, 1]. Being relative to the *absolute* difference is what
makes it size-aware: a short request loses little on a slow GPU and may go there, a long one is
kept where it finishes soonest. No measured pace anywhere → all 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.scheduling.base import BuildContext, SchedulingRequest
from epp.scheduling.params import Params
from epp.scheduling.service_time import TYPICAL_OUTPUT_TOKENS, ServiceTime
from epp.types import EndpointState


class ServiceTimeScorer:
    type = "service-time-scorer"
    name = type
    bounded = True  # scores already in [0, 1]: the profile skips its clamp

    def __init__(self, typical_output_tokens: int = TYPICAL_OUTPUT_TOKENS) -> None:
        self.model = ServiceTime(typical_output_tokens)
        self.typical = typical_output_tokens

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> ServiceTimeScorer:
        return cls(params.integer("typicalOutputTokens", TYPICAL_OUTPUT_TOKENS, low=1))

    def score(self, request: SchedulingRequest, candidates: Sequence[EndpointState]) -> list[float]:
        tokens = request.expected_output_tokens or request.max_output_tokens
        typical = request.typical_output_tokens or self.typical
        found = self.model.predict(candidates, tokens, typical)
        if found is None:
            return [1.0] * len(candidates)
        predicted, fastest = found
        best = min(predicted)
        # the score's scale is the configured typical request; the learned one (the request's
        # `typical_output_tokens`) only measures how fast a full batch drains
        inv = 1.0 / (self.typical * fastest)
        return [1.0 - d if (d := (p - best) * inv) < 1.0 else 0.0 for p in predicted]
