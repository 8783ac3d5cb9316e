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


class LowerEnvelope:
    __slots__ = ("_breaks", "_lines")

    def __init__(self, slopes: Sequence[float], intercepts: Sequence[float]) -> None:
        if not slopes:
            raise ValueError("a lower envelope needs at least one line")
        # steepest first; for equal slopes only the lowest intercept can ever be the minimum
        ordered = sorted(zip(slopes, intercepts, strict=True), key=lambda line: (-line[0], line[1]))
        hull: list[tuple[float, float]] = []
        for a3, b3 in ordered:
            if hull and hull[-1][0] == a3:
                continue
            while len(hull) >= 2:
                (a1, b1), (a2, b2) = hull[-2], hull[-1]
                # the middle line is never lowest when the outer two cross before it takes over
                if (b3 - b1) * (a1 - a2) <= (b2 - b1) * (a1 - a3):
                    hull.pop()
                else:
                    break
            hull.append((a3, b3))
        self._lines = hull
        # x from which each next (flatter) line is the lowest
        self._breaks = [(b2 - b1) / (a1 - a2) for (a1, b1), (a2, b2) in pairwise(hull)]

    def __len__(self) -> int:
        return len(self._lines)

    def min_at(self, x: float) -> float:
        a, b = self._lines[bisect_right(self._breaks, x)]
        return a * x + b
