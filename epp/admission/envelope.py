"""The lower envelope of a set of lines: min over i of (slope_i · x + intercept_i), for many x.

Admission asks, on every wake-up of the waiting room, how soon each waiting request would finish
on the best endpoint and on the best endpoint with room. Each endpoint's predicted time is a line
in the request's output tokens (`ServiceTime.lines`), so the best time for any size is the lower
envelope of those lines: built once per snapshot in O(n log n), then answered in O(log n) per
waiter instead of O(n). Neighbours: `epp.admission.rooms` builds one per snapshot view.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import pairwise
from math import inf


class LowerEnvelope:
    __slots__ = ("_breaks", "_lines")

    def __init__(self, slopes: Sequence[float], intercepts: Sequence[float]) -> None:
        if not slopes or len(slopes) != len(intercepts):
            raise ValueError("a lower envelope needs lines: as many slopes as intercepts")
        # A line can only be lowest somewhere if every flatter line starts higher: walk the
        # lines flattest first (sorted by a float key, compared in C) and keep that front; of
        # equal slopes only the lowest intercept stays
        front: list[tuple[float, float]] = []
        lowest = inf
        for i in sorted(range(len(slopes)), key=slopes.__getitem__):
            b = intercepts[i]
            if b < lowest:
                a = slopes[i]
                if front and front[-1][0] == a:
                    front[-1] = (a, b)
                else:
                    front.append((a, b))
                lowest = b
        hull: list[tuple[float, float]] = []
        for a3, b3 in front:
            while len(hull) >= 2:
                (a1, b1), (a2, b2) = hull[-2], hull[-1]
                # the middle line is never lowest when, where the outer two cross, it is above
                if (a2 - a1) * (b3 - b1) + (b2 - b1) * (a1 - a3) <= 0:
                    hull.pop()
                else:
                    break
            hull.append((a3, b3))
        hull.reverse()  # steepest first: the lowest line from left to right
        self._lines = hull
        # x from which each next (flatter) line is the lowest
        self._breaks = [(b2 - b1) / (a1 - a2) for (a1, b1), (a2, b2) in pairwise(hull)]

    def __len__(self) -> int:
        return len(self._lines)

    def min_at(self, x: float) -> float:
        a, b = self._lines[bisect_right(self._breaks, x)]
        return a * x + b
