"""`weighted-random-picker`: pick with probability proportional to the total score.

A-Res reservoir sampling (key = U^(1/score), largest keys win) so `count` > 1 draws without
replacement; endpoints scoring 0 are only drawn after all others; all scores <= 0 → uniform.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from epp.scheduling.base import BuildContext
from epp.scheduling.params import Params
from epp.types import EndpointState


class WeightedRandomPicker:
    type = "weighted-random-picker"
    name = type

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> WeightedRandomPicker:
        return cls(ctx.rng)

    def pick(
        self, candidates: Sequence[EndpointState], scores: Sequence[float], count: int
    ) -> list[EndpointState]:
        rand = self._rng.random
        # zero-score endpoints get keys below every positive key, in random order
        keys = [rand() ** (1.0 / s) if s > 0.0 else rand() - 1.0 for s in scores]
        if count == 1:
            return [candidates[keys.index(max(keys))]]
        order = sorted(range(len(candidates)), key=keys.__getitem__, reverse=True)
        return [candidates[i] for i in order[:count]]
