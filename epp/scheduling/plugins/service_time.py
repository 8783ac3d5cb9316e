"""`service-time-scorer`: how much longer this request would take here than on the best endpoint.

The predicted time on an endpoint is the request's expected output tokens (its `max_tokens`, or
`typicalOutputTokens` when it names none) times the endpoint's measured pace
(`EndpointState.tpot`), plus a wait when its batch is full (`limit` learned, `load` above it: the
excess drains at `limit` requests per typical request time). The score is
1 - (predicted - best) / (a typical request's time on the fastest endpoint), clamped to [0, 1].
Being relative to the *absolute* difference is what makes it size-aware: a short request loses
little on a slow GPU and may go there, a long one is kept where it finishes soonest.
Endpoints with no measured pace count as the mean of the measured ones; none measured → all 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.scheduling.base import BuildContext, SchedulingRequest
from epp.scheduling.params import Params
from epp.scheduling.snapshot import snapshot_of
from epp.types import EndpointState

TYPICAL_OUTPUT_TOKENS = 200


class ServiceTimeScorer:
    type = "service-time-scorer"
    name = type
    bounded = True  # scores already in [0, 1]: the profile skips its clamp

    def __init__(self, typical_output_tokens: int = TYPICAL_OUTPUT_TOKENS) -> None:
        if typical_output_tokens < 1:
            raise ValueError("typical_output_tokens must be positive")
        self.typical = typical_output_tokens

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> ServiceTimeScorer:
        return cls(params.integer("typicalOutputTokens", TYPICAL_OUTPUT_TOKENS, low=1))

    def score(self, request: SchedulingRequest, candidates: Sequence[EndpointState]) -> list[float]:
        found = predict(candidates, request.max_output_tokens, self.typical)
        if found is None:
            return [1.0] * len(candidates)
        predicted, fastest = found
        best = min(predicted)
        inv = 1.0 / (self.typical * fastest)
        return [1.0 - d if (d := (p - best) * inv) < 1.0 else 0.0 for p in predicted]


def predict(
    candidates: Sequence[EndpointState], output_tokens: int | None, typical: int
) -> tuple[list[float], float] | None:
    """(predicted seconds per candidate, the fastest measured pace); on the hot path, so it
    reads the snapshot's shared columns."""
    snap = snapshot_of(candidates)
    fastest = snap.fastest_tpot
    if not fastest:
        return None
    tokens = output_tokens or typical
    paces = snap.filled_tpot
    queued = snap.queued_share
    if queued is None:
        return [tokens * p for p in paces], fastest
    # a full batch adds a wait: the excess drains `limit` requests per typical request time
    return [p * (tokens + q * typical) for p, q in zip(paces, queued, strict=True)], fastest
