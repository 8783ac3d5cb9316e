"""One scheduling profile run: filters in order, weighted scorers summed, one picker, observers.

`Profile.schedule` is synchronous and allocation-light: it is the hot path of every request.
A filter that would leave nothing is skipped (fall back to the unfiltered set) rather than
turning a load spike into errors; an empty candidate set is the caller's 503. Scores are
clamped to [0, 1] before weighting. With DEBUG logging on for this module, every decision is
logged with each endpoint's score per plugin (the explainability log).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from epp.scheduling.base import Filter, Picker, PickObserver, SchedulingRequest, Scorer
from epp.scheduling.snapshot import snapshot_of
from epp.types import EndpointState

log = logging.getLogger(__name__)

# the score from which an affinity scorer (`affinity = True`: the prefix scorers) holds an
# endpoint for the request: at least half of the prompt cached there, and kept by its gate
WARM_HOLD = 0.5
# (extension point, plugin type, plugin name, seconds): the plugin-duration metric's feed
TimingSink = Callable[[str, str, str, float], None]


@dataclass(frozen=True, slots=True)
class WeightedScorer:
    scorer: Scorer
    weight: float


def weighted_sum(weights: Sequence[float]) -> Callable[[Sequence[list[float]]], list[float]]:
    """A function summing weighted score columns in one pass over the endpoints.

    Over 1,024 endpoints every pass costs tens of microseconds in CPython, so instead of one
    pass per scorer the profile compiles, once, `[w0*x0 + w1*x1 + ... for x0, x1, ... in zip(...)]`
    for its own weights. The generated source holds only generated names, never config text.
    """
    n = len(weights)
    if n == 0:
        return lambda cols: []
    namespace: dict[str, object] = {f"w{i}": float(w) for i, w in enumerate(weights)}
    names = ", ".join(f"x{i}" for i in range(n))
    body = " + ".join(f"w{i} * x{i}" for i in range(n))
    source = f"def combine(cols):\n    return [{body} for {names}, in zip(*cols, strict=True)]\n"
    exec(source, namespace)
    return namespace["combine"]  # type: ignore[return-value]


def _warm_kept(
    warm_only: frozenset[str], candidates: Sequence[EndpointState], holds: list[bool]
) -> list[int] | None:
    """The candidates to keep when warm-only offers no affinity scorer holds are dropped (a
    full batch is worth joining only for the prompt it caches); None: keep them all (nothing
    to drop, or nothing would be left)."""
    keep = [i for i, c in enumerate(candidates) if holds[i] or c.endpoint.address not in warm_only]
    return keep if keep and len(keep) < len(candidates) else None


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
        self._combine = weighted_sum([ws.weight for ws in self.scorers])
        # which scorers' scores are holds on a cached prefix (`WARM_HOLD`)
        self._affinity = tuple(getattr(ws.scorer, "affinity", False) for ws in self.scorers)
        # the prefix scorers' views of what each endpoint holds of a prompt (`held_tokens`)
        self._holders: tuple[Callable[[SchedulingRequest], dict[str, int]], ...] = tuple(
            held for ws in self.scorers if (held := getattr(ws.scorer, "held_tokens", None))
        )
        self.timing: TimingSink | None = None  # set by the server; sampled, not every request
        self.timing_every = 16
        self._runs = 0

    def _timed(self) -> bool:
        if self.timing is None:
            return False
        self._runs += 1
        return self._runs % self.timing_every == 0

    def __repr__(self) -> str:
        parts = [f.name for f in self.filters]
        parts += [f"{ws.scorer.name}*{ws.weight:g}" for ws in self.scorers]
        return f"Profile({self.name}: {' > '.join([*parts, self.picker.name])})"

    def held_tokens(self, request: SchedulingRequest) -> dict[str, int]:
        """The request's leading prompt tokens each endpoint holds, the most any prefix scorer
        of the profile credits it with (empty without one). Admission's KV room asks it before
        the pick, with the request it then schedules (the scorers keep their match for it)."""
        out: dict[str, int] = {}
        for held_tokens in self._holders:
            for address, tokens in held_tokens(request).items():
                if tokens > out.get(address, 0):
                    out[address] = tokens
        return out

    def schedule(
        self,
        request: SchedulingRequest,
        candidates: Sequence[EndpointState],
        count: int = 1,
        warm_only: frozenset[str] | None = None,
    ) -> list[EndpointState]:
        """Return up to `count` endpoints, best first. `candidates` must not be empty.
        `warm_only`: the offer's warm-only endpoints, where admission made them after the
        request was built (default: the request's own); the request keeps its identity, so
        the prefix scorers reuse the match they made for admission's KV room."""
        warm = request.warm_only if warm_only is None else warm_only
        explain = log.isEnabledFor(logging.DEBUG)
        timed = self._timed()
        candidates = snapshot_of(candidates)
        for flt in self.filters:
            start = time.perf_counter() if timed else 0.0
            kept = flt.filter(request, candidates)
            if timed:
                self._report("Filter", flt, start)
            if explain:
                log.debug(
                    "request %s profile %s filter %s kept %d of %d%s",
                    request.request_id, self.name, flt.name, len(kept), len(candidates),
                    "" if kept else " (none: fell back to all)",
                )  # fmt: skip
            if kept and kept is not candidates:
                candidates = snapshot_of(kept)
        if len(candidates) == 1:
            picked = [candidates[0]]
        else:
            totals, details, holds = self._score(request, candidates, explain, timed, warm)
            keep = _warm_kept(warm, candidates, holds) if holds is not None else None
            if keep is not None:
                candidates = snapshot_of([candidates[i] for i in keep])
                totals = [totals[i] for i in keep]
                details = [(name, [column[i] for i in keep]) for name, column in details]
            start = time.perf_counter() if timed else 0.0
            picked = self.picker.pick(candidates, totals, count)
            if timed:
                self._report("Picker", self.picker, start)
            if explain:
                self._explain(request, candidates, totals, details, picked)
        for observer in self.observers:
            observer.picked(request, picked[0])
        return picked

    def _report(self, point: str, plugin: Filter | Scorer | Picker, start: float) -> None:
        assert self.timing is not None
        seconds = time.perf_counter() - start
        # the type is the plugin's kind (`queue-scorer`), the name what the config calls it; a
        # plugin with no `type` (a test double) reports its name as both
        self.timing(point, str(getattr(plugin, "type", plugin.name)), plugin.name, seconds)

    def _score(
        self,
        request: SchedulingRequest,
        candidates: Sequence[EndpointState],
        explain: bool,
        timed: bool = False,
        warm_only: frozenset[str] = frozenset(),
    ) -> tuple[list[float], list[tuple[str, list[float]]], list[bool] | None]:
        """The weighted totals, the columns by scorer (when explaining) and, where the request
        has warm-only offers, which candidates an affinity scorer holds (`WARM_HOLD`)."""
        columns: list[list[float]] = []
        holds = [False] * len(candidates) if warm_only else None
        for ws, affinity in zip(self.scorers, self._affinity, strict=True):
            start = time.perf_counter() if timed else 0.0
            scores = ws.scorer.score(request, candidates)
            if timed:
                self._report("Scorer", ws.scorer, start)
            if len(scores) != len(candidates):
                raise ValueError(f"scorer {ws.scorer.name} returned {len(scores)} scores")
            if not getattr(ws.scorer, "bounded", False) and not (
                0.0 <= min(scores) <= max(scores) <= 1.0  # also false for NaN
            ):
                scores = [s if 0.0 <= s <= 1.0 else 1.0 if s > 1.0 else 0.0 for s in scores]
            columns.append(scores)
            # a cold prompt's affinity scores are its spread over the pods, not holds
            if holds is not None and affinity and not getattr(ws.scorer, "last_cold", False):
                for i, score in enumerate(scores):
                    if score >= WARM_HOLD:
                        holds[i] = True
        totals = self._combine(columns) if columns else [0.0] * len(candidates)
        details = (
            [(ws.scorer.name, col) for ws, col in zip(self.scorers, columns, strict=True)]
            if explain
            else []
        )
        return totals, details, holds

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
