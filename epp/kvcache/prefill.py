"""How much uncached prompt each pod still has to prefill, and how fast it prefills.

The token-aware affinity gate of `precise-prefix-cache-scorer` asks `wait(pod)`: the prompt
tokens this EPP sent the pod that its cache did not hold (added at each pick), drained at the
pod's prefill rate. The rate is learned from what the pod does, not from a table: during a run
of KV events close together (the engine busy), the tokens its `BlockStored` events report per
second of the pod's own event clock are its prefill throughput under its real load; a moving
average smooths the samples. Until a pod has shown a rate, `prior` stands in. Pure data: the
subscriber (`epp.kvevents`) reports stored tokens, the scorer adds picks and reads waits.
"""

from __future__ import annotations

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
    ) -> None:
        self.prior = prior
        self.smoothing = smoothing
        self.busy_gap_s = busy_gap_s
        self.window_s = window_s
        self._queued: dict[str, tuple[float, float]] = {}  # pod → (tokens, as of when)
        self._rates: dict[str, float] = {}
        self._runs: dict[str, _Run] = {}

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

    def add(self, pod: str, tokens: float, now: float) -> None:
        self._queued[pod] = (self.queued(pod, now) + tokens, now)

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
            self._runs[pod] = _Run(ts, ts, 0)

    def forget(self, pod: str) -> None:
        self._queued.pop(pod, None)
        self._runs.pop(pod, None)
