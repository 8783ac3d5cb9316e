"""Latency prediction: one request's time to first token (TTFT) and per output token (TPOT) on
each endpoint, from live signals, with linear models learned online in this process.

The features are the endpoint's signals, each scaled by how slow the endpoint is (its measured
pace over the fastest, else its hardware capacity prior): the request's prompt tokens (prefill
work, in seconds when the engine's prefill pace is measured), the requests queued ahead of it
beyond the batch, and the batch it would join; TPOT adds the endpoint's measured pace. The
weights start from a physical prior and follow what the pool actually does by recursive least
squares with forgetting (`OnlineLinear`): every answered request with a first byte is one sample,
so the model tracks a pool whose speed changes (a new model, a throttled GPU) within a few hundred
requests, costs a few microseconds per request and needs no sidecar. Neighbours:
`epp.admission.objectives` asks for predictions; `epp.director` keeps each pick's `Features` in
its decision; `epp.tracking` reports what was observed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from epp.types import EndpointState

FORGET = 0.998  # per sample: the last ~500 requests weigh most
DEFAULT_PACE = 0.03  # seconds per output token before anything is measured
QUEUE_TOKENS = 50  # output tokens' time a queued request waits for a batch slot, as a start
STEP = 0.002  # seconds a request in the batch adds to a step, as a start
# every feature is in seconds as first guessed, so the prior weights are 1 (a fixed overhead
# aside) and the learned ones say how far off that guess is
TTFT_PRIOR = (0.02, 1.0, 1.0, 1.0)
TPOT_PRIOR = (0.0, 1.0, 1.0)


class OnlineLinear:
    """y ≈ w·x, learned one sample at a time by recursive least squares with forgetting."""

    __slots__ = ("_p", "forget", "samples", "w")

    def __init__(self, prior: Sequence[float], forget: float = FORGET, scale: float = 100.0):
        n = len(prior)
        self.w = list(prior)
        self.forget = forget
        self.samples = 0
        self._p = [[scale if i == j else 0.0 for j in range(n)] for i in range(n)]

    def predict(self, x: Sequence[float]) -> float:
        return sum(w * v for w, v in zip(self.w, x, strict=True))

    def update(self, x: Sequence[float], y: float) -> None:
        p, lam = self._p, self.forget
        px = [sum(row[j] * x[j] for j in range(len(x))) for row in p]
        denominator = lam + sum(x[i] * px[i] for i in range(len(x)))
        if denominator <= 0.0:
            return
        gain = [v / denominator for v in px]
        error = y - self.predict(x)
        self.w = [w + g * error for w, g in zip(self.w, gain, strict=True)]
        self._p = [
            [(p[i][j] - gain[i] * px[j]) / lam for j in range(len(x))] for i in range(len(x))
        ]
        self.samples += 1


@dataclass(frozen=True, slots=True)
class Features:
    """What was known of one request on one endpoint when it was sent there."""

    ttft: tuple[float, ...]
    tpot: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Prediction:
    ttft: float  # seconds from the EPP's decision to the first token
    tpot: float  # seconds per output token after the first
    features: Features


class LatencyModel:
    def __init__(self) -> None:
        self._ttft = OnlineLinear(TTFT_PRIOR)
        self._tpot = OnlineLinear(TPOT_PRIOR)

    @property
    def samples(self) -> int:
        return self._ttft.samples

    def predict_all(
        self, candidates: Sequence[EndpointState], prompt_tokens: int, idle: bool = False
    ) -> list[Prediction]:
        """Each candidate's predicted TTFT and TPOT for a request of `prompt_tokens` (`idle`:
        as if nothing else ran there)."""
        paces = [c.tpot for c in candidates if c.tpot > 0.0]
        fastest = min(paces, default=0.0)
        return [self.predict(c, prompt_tokens, fastest, idle) for c in candidates]

    def predict(
        self, state: EndpointState, prompt_tokens: int, fastest: float = 0.0, idle: bool = False
    ) -> Prediction:
        features = features_of(state, prompt_tokens, fastest, idle)
        return Prediction(
            max(0.0, self._ttft.predict(features.ttft)),
            max(0.0, self._tpot.predict(features.tpot)),
            features,
        )

    def observe(self, features: Features, ttft: float | None, tpot: float | None) -> None:
        """What one request showed: its TTFT (None: no first token seen), its TPOT (None:
        fewer than two output tokens counted)."""
        if ttft is not None and ttft >= 0.0:
            self._ttft.update(features.ttft, ttft)
        if tpot is not None and tpot > 0.0:
            self._tpot.update(features.tpot, tpot)


def features_of(
    state: EndpointState, prompt_tokens: int, fastest: float = 0.0, idle: bool = False
) -> Features:
    pace = state.tpot
    if pace > 0.0 and fastest > 0.0:
        slowness = pace / fastest
    else:
        slowness = 1.0 / state.endpoint.capacity if state.endpoint.capacity > 0 else 1.0
    prefill = (
        prompt_tokens * state.prefill_pace
        if state.prefill_pace > 0.0
        else prompt_tokens * DEFAULT_PACE / 100 * slowness
    )
    load, limit = (0 if idle else state.load), state.limit
    queued = max(0, load + 1 - limit) if limit else 0  # ahead of it for a batch slot, itself too
    batch = min(load + 1, limit) if limit else load + 1
    per_token = pace or DEFAULT_PACE * slowness
    return Features(
        (1.0, prefill, queued * per_token * QUEUE_TOKENS, batch * slowness * STEP),
        (1.0, per_token, batch * slowness * STEP),
    )
