"""One scheduling profile run: filters in order, weighted scorers summed, one picker, observers.

`Profile.schedule` is synchronous and allocation-light: it is the hot path of every request.
A filter that would leave nothing is skipped (fall back to the unfiltered set) rather than
turning a load spike into errors; an empty candidate set is the caller's 503. Scores are
clamped to [0, 1] before weighting. With DEBUG logging on for this module, every decision is
logged with each endpoint's score per plugin (the explainability log).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import add, mul

from epp.scheduling.base import Filter, Picker, PickObserver, SchedulingRequest, Scorer
from epp.types import EndpointState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WeightedScorer:
    scorer: Scorer
    weight: float


class Profile:
    def __init__(
        self,
        name: str,
        filters: Sequence[Filter],
        scorers: Sequence[WeightedScorer],
        picker: Picker,
        observers: Sequence[PickObserver] = (),
    ) -> None:
        self.name = name
        self.filters = tuple(filters)
        self.scorers = tuple(ws for ws in scorers if ws.weight > 0.0)
        self.picker = picker
        self.observers = tuple(observers)

    def __repr__(self) -> str:
        parts = [f.name for f in self.filters]
        parts += [f"{ws.scorer.name}*{ws.weight:g}" for ws in self.scorers]
        return f"Profile({self.name}: {' > '.join([*parts, self.picker.name])})"

    def schedule(
        self, request: SchedulingRequest, candidates: Sequence[EndpointState], count: int = 1
    ) -> list[EndpointState]:
        """Return up to `count` endpoints, best first. `candidates` must not be empty."""
        explain = log.isEnabledFor(logging.DEBUG)
        for flt in self.filters:
            kept = flt.filter(request, candidates)
            if explain:
                log.debug(
                    "request %s profile %s filter %s kept %d of %d%s",
                    request.request_id, self.name, flt.name, len(kept), len(candidates),
                    "" if kept else " (none: fell back to all)",
                )  # fmt: skip
            if kept:
                candidates = kept
        if len(candidates) == 1:
            picked = [candidates[0]]
        else:
            totals, details = self._score(request, candidates, explain)
            picked = self.picker.pick(candidates, totals, count)
            if explain:
                self._explain(request, candidates, totals, details, picked)
        for observer in self.observers:
            observer.picked(request, picked[0])
        return picked

    def _score(
        self, request: SchedulingRequest, candidates: Sequence[EndpointState], explain: bool
    ) -> tuple[list[float], list[tuple[str, list[float]]]]:
        totals: list[float] = []
        details: list[tuple[str, list[float]]] = []
        for ws in self.scorers:
            scores = ws.scorer.score(request, candidates)
            if len(scores) != len(candidates):
                raise ValueError(f"scorer {ws.scorer.name} returned {len(scores)} scores")
            if not 0.0 <= min(scores) <= max(scores) <= 1.0:  # also catches NaN
                scores = [s if 0.0 <= s <= 1.0 else 1.0 if s > 1.0 else 0.0 for s in scores]
            # map/operator keep the per-endpoint work in C: this loop is the hot path
            weighted = scores if ws.weight == 1.0 else map(mul, scores, repeat(ws.weight))
            totals = list(map(add, totals, weighted)) if totals else list(weighted)
            if explain:
                details.append((ws.scorer.name, scores))
        if not totals:
            totals = [0.0] * len(candidates)
        return totals, details

    def _explain(
        self,
        request: SchedulingRequest,
        candidates: Sequence[EndpointState],
        totals: Sequence[float],
        details: Sequence[tuple[str, list[float]]],
        picked: Sequence[EndpointState],
    ) -> None:
        weights = {ws.scorer.name: ws.weight for ws in self.scorers}
        rows = []
        for i, c in enumerate(candidates):
            parts = " ".join(f"{name}={scores[i]:.3f}" for name, scores in details)
            rows.append(f"  {c.address} total={totals[i]:.3f} {parts}")
        log.debug(
            "request %s profile %s picked %s (weights %s; picker %s)\n%s",
            request.request_id, self.name, ",".join(p.address for p in picked),
            weights, self.picker.name, "\n".join(rows),
        )  # fmt: skip
