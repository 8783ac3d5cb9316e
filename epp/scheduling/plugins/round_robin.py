"""`round-robin-picker`: each pick takes the next endpoint in snapshot order (a baseline).

The cursor is the plugin's only state; the datastore keeps a pool's endpoints in a stable
order, so over a steady endpoint set every endpoint gets the same share.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.scheduling.base import BuildContext
from epp.scheduling.params import Params
from epp.types import EndpointState


class RoundRobinPicker:
    type = "round-robin-picker"
    name = type

    def __init__(self) -> None:
        self._next = 0

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> RoundRobinPicker:
        return cls()

    def pick(
        self, candidates: Sequence[EndpointState], scores: Sequence[float], count: int
    ) -> list[EndpointState]:
        n = len(candidates)
        start = self._next % n
        self._next = start + 1
        return [candidates[(start + i) % n] for i in range(min(count, n))]
