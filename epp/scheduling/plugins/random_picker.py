"""`random-picker`: uniform random, ignoring scores (a baseline)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from epp.scheduling.base import BuildContext
from epp.scheduling.params import Params
from epp.types import EndpointState


class RandomPicker:
    type = "random-picker"
    name = type

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> RandomPicker:
        return cls(ctx.rng)

    def pick(
        self, candidates: Sequence[EndpointState], scores: Sequence[float], count: int
    ) -> list[EndpointState]:
        if count == 1:
            return [candidates[self._rng.randrange(len(candidates))]]
        return self._rng.sample(list(candidates), min(count, len(candidates)))
