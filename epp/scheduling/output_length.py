"""How long answers turn out to be, learned per model from finished requests.

A client's `max_tokens` is a cap, not the answer's length: production clients send one cap for
every request, or none. So the scheduler plans with what this model's answers have been: the
mean of the last `window` observed lengths, each cut at the request's cap (E[min(L, cap)]).
Where the cap does tell the length (most answers run into it: a client that announces the
length, or a short cap), the cap itself is the plan. Until `min_samples` answers are seen,
nothing says whether caps tell lengths: the plan is the configured typical length (the prior),
or the cap where it is smaller, and not told (a production cap of 1,024 taken as told made
every request of a fresh EPP hold out for a fast pod's free slot until 20 answers had ended:
on 16 mixed GPUs up to 1.9 s in the waiting room). The learned mean also replaces
the prior as the "typical request" that scales queue waits and patience. Neighbours: the
request tracker (`epp.tracking`) calls `observe` when an answer whose body it read ends, and the
datastore hands on what the engines count (`observe_batch`, see `epp.answer_lengths`), so lengths
are learned even where no response body crosses ext_proc; the director asks `plan`
and hands the result to admission and the scheduler (`SchedulingRequest.expected_output_tokens`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from epp.answer_lengths import AnswerBatch
from epp.scheduling.service_time import TYPICAL_OUTPUT_TOKENS

WINDOW = 512  # answers remembered per model
MIN_SAMPLES = 20  # answers before the learned figures replace the prior
CAP_TELLS = 0.5  # share of capped answers that ran into their cap, from which the cap is the length
HIT_SMOOTHING = 0.05
REFRESH_EVERY = 16  # answers between recomputed expectations (they move slowly)


@dataclass(frozen=True, slots=True)
class LengthPlan:
    """The output tokens to plan one request with, and what a typical request of its model is.
    `told`: the client's cap tells this request's length; False: only the model's answers so
    far tell what to expect, and nothing singles this request out as long or short."""

    expected: int
    typical: int
    told: bool = True


class _ModelLengths:
    __slots__ = ("_by_cap", "cap_hits", "capped", "lengths", "mean", "version")

    def __init__(self, window: int) -> None:
        self.lengths: deque[int] = deque(maxlen=window)
        self.cap_hits = 0.0  # moving share of capped answers that ran into their cap
        self.capped = 0  # capped answers seen
        self.mean = 0.0
        self.version = 0
        self._by_cap: dict[int, int] = {}

    def expectation(self, cap: int) -> int:
        """E[min(L, cap)] over the remembered answers (cached until the next refresh)."""
        found = self._by_cap.get(cap)
        if found is None:
            total = sum(x if x < cap else cap for x in self.lengths)
            found = self._by_cap[cap] = max(1, round(total / len(self.lengths)))
        return found

    def refresh(self) -> None:
        self.mean = sum(self.lengths) / len(self.lengths)
        self._by_cap = {}


class OutputLengths:
    def __init__(
        self,
        prior: int = TYPICAL_OUTPUT_TOKENS,
        window: int = WINDOW,
        min_samples: int = MIN_SAMPLES,
    ) -> None:
        if prior < 1 or window < 1 or min_samples < 1:
            raise ValueError("prior, window and min_samples must be positive")
        self.prior = prior
        self._window = window
        self._min_samples = min(min_samples, window)
        self._models: dict[str, _ModelLengths] = {}

    def observe(self, model: str, output_tokens: int, cap: int | None) -> None:
        """An answer of `model` ended after `output_tokens` tokens (`cap`: its max_tokens)."""
        if output_tokens < 1:
            return
        stats = self._models.get(model)
        if stats is None:
            stats = self._models[model] = _ModelLengths(self._window)
        stats.lengths.append(output_tokens)
        if cap is not None:
            hit = 1.0 if output_tokens >= cap else 0.0
            stats.capped += 1
            weight = max(HIT_SMOOTHING, 1.0 / stats.capped)  # a plain mean until it settles
            stats.cap_hits += weight * (hit - stats.cap_hits)
        stats.version += 1
        if stats.version % REFRESH_EVERY == 0 or len(stats.lengths) <= self._min_samples:
            stats.refresh()

    def observe_batch(self, batch: AnswerBatch) -> None:
        """Answers an engine reports finished since its last scrape (`epp.answer_lengths`): their
        count, mean length and how many ended on their cap. Each counts as an answer of the
        mean length; the share at the cap moves the cap-hit share by its weight."""
        if batch.answers < 1 or batch.mean_tokens <= 0:
            return
        stats = self._models.get(batch.model)
        if stats is None:
            stats = self._models[batch.model] = _ModelLengths(self._window)
        stats.lengths.extend([max(1, round(batch.mean_tokens))] * min(batch.answers, self._window))
        stats.capped += batch.answers
        weight = max(HIT_SMOOTHING, batch.answers / stats.capped)
        stats.cap_hits += min(1.0, weight) * (batch.at_cap / batch.answers - stats.cap_hits)
        stats.version += batch.answers
        stats.refresh()

    def plan(self, model: str, cap: int | None) -> LengthPlan:
        """What to plan a request of `model` with `cap` (its max_tokens, if any) for."""
        stats = self._models.get(model)
        if stats is None or len(stats.lengths) < self._min_samples:
            # no evidence yet that caps tell lengths: a cap only bounds the prior
            prior = self.prior
            return LengthPlan(min(cap, prior) if cap else prior, prior, False)
        typical = max(1, round(stats.mean))
        if cap is None:
            return LengthPlan(typical, typical, False)
        if stats.capped >= self._min_samples and stats.cap_hits >= CAP_TELLS:
            return LengthPlan(cap, typical)  # answers run into their caps: the cap is the length
        return LengthPlan(stats.expectation(cap), typical, False)

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Per model: answers remembered, their mean, and the share that ran into a cap."""
        return {
            model: {"answers": len(s.lengths), "mean": s.mean, "cap_hits": s.cap_hits}
            for model, s in self._models.items()
        }
