"""`max-score-picker`: the highest total score wins; ties are broken at random.

With count > 1 (fallback endpoints) it returns the best `count`, ties shuffled (upstream's
shuffle + stable sort).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from epp.scheduling.base import BuildContext
from epp.scheduling.params import Params
from epp.types import EndpointState


class MaxScorePicker:
    type = "max-score-picker"
    name = type

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> MaxScorePicker:
        return cls(ctx.rng)

    def pick(
        self, candidates: Sequence[EndpointState], scores: Sequence[float], count: int
    ) -> list[EndpointState]:
        if count == 1:
            best = max(scores)
            first = scores.index(best)
            if scores.count(best) == 1:
                return [candidates[first]]
            tied = [i for i in range(first, len(scores)) if scores[i] == best]
            return [candidates[self._rng.choice(tied)]]
        order = list(range(len(candidates)))
        self._rng.shuffle(order)
        order.sort(key=scores.__getitem__, reverse=True)
        return [candidates[i] for i in order[:count]]
