"""Prefill pace: the seconds an endpoint spends on each prompt token it must compute.

A prompt token the engine finds in its prefix cache costs nothing; one it must compute costs
prefill time, and how much differs far more between GPUs than the decode pace does (a MIG slice
computes a prompt ~7x slower than a full H100, but decodes only ~3x slower). The pace is learned
from what the engine itself reports, vLLM's names:
- `vllm:request_prefill_time_seconds` (histogram: `_sum`, `_count`): time in the PREFILL phase,
- `vllm:request_prefill_kv_computed_tokens` (histogram, `_sum`): the prompt tokens each request
  computed, those found cached left out. vLLM observes both when a request finishes, so a window
  between two scrapes holds the same requests' seconds and tokens.
- Where that histogram is not exported (older vLLM), `vllm:prompt_tokens_total` less
  `vllm:prefix_cache_hits_total`. These move at other moments than the prefill histogram (a
  prompt counts at its first token, its cache hits when it is scheduled, its prefill time when
  it finishes), so a window's tokens and seconds belong to different requests: a window closes
  only once some prefill time came with its tokens, and the smoothing evens the rest out.
Between two scrapes, pace = (prefill seconds - requests x one engine step) / computed tokens: a
prefill lasts at least the step it runs in, whatever its length, and that step's share is the
endpoint's decode pace (`EndpointState.tpot`), subtracted so that a pod serving only cache hits
does not look slow at computing prompts. Samples wait for `MIN_TOKENS` computed tokens and are
smoothed. Neighbours: `epp.datastore` feeds scrapes in and stores the result on the endpoint's
state; the prefix-cache scorer weighs a warm holder's queue against the prefill a cold pod faces.
"""

from __future__ import annotations

from dataclasses import dataclass

from epp.types import EndpointMetrics

MIN_TOKENS = 2048  # computed prompt tokens between two samples
SMOOTHING = 0.3  # weight of a new sample in the moving average


@dataclass(frozen=True, slots=True)
class _Mark:
    seconds: float
    requests: float
    prompt: float  # computed tokens where the engine counts them per request, else prompt tokens
    cached: float  # 0 where `prompt` counts computed tokens
    aligned: bool  # tokens and seconds observed together, per finished request

    def after(self, older: _Mark) -> bool:
        """Every counter grew or stayed (not a restarted engine) and comes from the same
        source."""
        return (
            self.aligned == older.aligned
            and self.seconds >= older.seconds
            and self.requests >= older.requests
            and self.prompt >= older.prompt
            and self.cached >= older.cached
        )


class PrefillPaces:
    """Per endpoint address: the last counters sampled and the smoothed pace."""

    def __init__(self, min_tokens: int = MIN_TOKENS, smoothing: float = SMOOTHING) -> None:
        if min_tokens < 1 or not 0 < smoothing <= 1:
            raise ValueError("min_tokens must be positive and smoothing in (0, 1]")
        self.min_tokens = min_tokens
        self.smoothing = smoothing
        self._marks: dict[str, _Mark] = {}
        self._paces: dict[str, float] = {}

    def get(self, address: str) -> float:
        """Seconds per computed prompt token; 0.0 while not measured."""
        return self._paces.get(address, 0.0)

    def observe(self, address: str, metrics: EndpointMetrics, step_seconds: float) -> float | None:
        """Take one scrape; the new pace when it completed a sample, else None."""
        m = metrics
        if m.prefill_seconds is None or m.prefill_count is None:
            return None
        if m.computed_tokens is not None:
            mark = _Mark(m.prefill_seconds, m.prefill_count, m.computed_tokens, 0.0, True)
        elif m.prompt_tokens is not None and m.cached_tokens is not None:
            mark = _Mark(
                m.prefill_seconds, m.prefill_count, m.prompt_tokens, m.cached_tokens, False
            )
        else:
            return None
        since = self._marks.get(address)
        if since is None or not mark.after(since):  # first page, or the engine restarted
            self._marks[address] = mark
            return None
        computed = (mark.prompt - since.prompt) - (mark.cached - since.cached)
        if computed < self.min_tokens or mark.requests == since.requests:
            return None  # too few tokens, or none of their prefill time has come yet
        self._marks[address] = mark
        seconds = (mark.seconds - since.seconds) - (mark.requests - since.requests) * step_seconds
        sample = max(0.0, seconds) / computed
        old = self._paces.get(address)
        pace = sample if old is None else old + self.smoothing * (sample - old)
        self._paces[address] = pace
        return pace

    def forget(self, address: str) -> None:
        self._marks.pop(address, None)
        self._paces.pop(address, None)
