"""How much uncached prompt each pod still has to prefill, and how fast it prefills.

The token-aware affinity gate of `precise-prefix-cache-scorer` asks `wait(pod)`: the prompt
tokens this EPP sent the pod that its cache did not hold (added at each pick), drained at the
pod's prefill rate. The rate is learned from what the pod does, not from a table: during a run
of KV events close together (the engine busy), the tokens its `BlockStored` events report per
second of the pod's own event clock are its prefill throughput under its real load; a moving
average smooths the samples. Until a pod has shown a rate, `prior` stands in. Pure data: the
subscriber (`epp.kvevents`) reports stored tokens, the scorer adds picks and reads waits.
`longest_wait` bounds every pod's wait without a pass over the pods (the most tokens an add left
on any pod, at the slowest rate), so a gate can tell at once that no pod is near its budget; the
bound is made exact again at most every `top_refresh_s` and after a rate changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class _Run:
    start: float  # pod clock of the run's first batch
    last: float
    tokens: int  # stored after the first batch (whose compute began before we saw it)


class PrefillTracker:
    def __init__(
        self,
        prior: float = 8_000.0,
        smoothing: float = 0.3,
        busy_gap_s: float = 0.1,
        window_s: float = 0.25,
        top_refresh_s: float = 0.5,
    ) -> None:
        self.prior = prior
        self.smoothing = smoothing
        self.busy_gap_s = busy_gap_s
        self.window_s = window_s
        self._queued: dict[str, tuple[float, float]] = {}  # pod → (tokens, as of when)
        self._rates: dict[str, float] = {}
        self._runs: dict[str, _Run] = {}
        self.top_refresh_s = top_refresh_s
        # no pod has more than _top tokens queued (exact at _top_at, raised by every add since);
        # no pod prefills slower than _slowest
        self._top = 0.0
        self._top_at = -math.inf
        self._slowest = prior

    def rate(self, pod: str) -> float:
        """Tokens a second the pod prefills (learned, else the prior)."""
        return self._rates.get(pod, self.prior)

    def learned(self, pod: str) -> bool:
        return pod in self._rates

    def queued(self, pod: str, now: float) -> float:
        """Uncached prompt tokens sent to `pod` and not yet prefilled, as of `now`."""
        entry = self._queued.get(pod)
        if entry is None:
            return 0.0
        tokens, since = entry
        return max(0.0, tokens - self.rate(pod) * max(0.0, now - since))

    def wait(self, pod: str, now: float, extra: float = 0.0) -> float:
        """Seconds until `extra` more tokens would be prefilled behind what is queued."""
        return (self.queued(pod, now) + extra) / self.rate(pod)

    def longest_wait(self, now: float, extra: float = 0.0) -> float:
        """At least `wait(pod, now, extra)` for every pod: the most tokens an add left on any
        pod, plus `extra`, at the slowest rate any pod has. The pods are scanned only when that
        most is older than `top_refresh_s` (or a rate changed), to bring it down to what is
        queued now."""
        if now - self._top_at >= self.top_refresh_s or now < self._top_at:
            self._top = max((self.queued(pod, now) for pod in self._queued), default=0.0)
            self._top_at = now
        slowest = self._slowest
        return (self._top + extra) / slowest if slowest > 0.0 else math.inf

    def late(self, now: float, budget: float, asks: Iterable[tuple[int, str, float]]) -> list[int]:
        """The `i` of each `(i, pod, extra)` whose `wait(pod, now, extra)` is over `budget`."""
        queued, rates, prior = self._queued, self._rates, self.prior
        out = []
        for i, pod, extra in asks:
            rate = rates.get(pod, prior)
            entry = queued.get(pod)
            tokens = extra
            if entry is not None:  # `queued`, inlined: this runs once per holder of a prompt
                tokens += max(0.0, entry[0] - rate * max(0.0, now - entry[1]))
            if tokens > budget * rate:
                out.append(i)
        return out

    def add(self, pod: str, tokens: float, now: float) -> None:
        total = self.queued(pod, now) + tokens
        self._queued[pod] = (total, now)
        self._top = max(self._top, total)

    def add_seconds(self, pod: str, seconds: float, now: float) -> float:
        """`seconds` of prefill were queued on `pod` (by a peer replica's pick, at its rate for
        the pod): as many tokens as this tracker's rate prefills in that time. Returns the
        seconds added: 0.0 for a non-positive or non-finite amount."""
        if not 0.0 < seconds < math.inf:
            return 0.0
        self.add(pod, seconds * self.rate(pod), now)
        return seconds

    def stored(self, pod: str, tokens: int, ts: float) -> None:
        """A batch of the pod's events at its clock `ts` reported `tokens` newly cached."""
        run = self._runs.get(pod)
        if run is None or ts - run.last > self.busy_gap_s or ts < run.last:
            self._runs[pod] = _Run(ts, ts, 0)
            return
        run.tokens += tokens
        run.last = ts
        span = run.last - run.start
        if span >= self.window_s:
            sample = run.tokens / span
            old = self._rates.get(pod)
            a = self.smoothing
            self._rates[pod] = sample if old is None else (1 - a) * old + a * sample
            # a slower rate leaves more of a queue undrained: the bound is made exact again
            self._slowest = min(self.prior, *self._rates.values())
            self._top_at = -math.inf
            self._runs[pod] = _Run(ts, ts, 0)

    def forget(self, pod: str) -> None:
        self._queued.pop(pod, None)
        self._runs.pop(pod, None)
