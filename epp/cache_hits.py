"""Cache hits: the share of prompt tokens an endpoint's engine finds in its prefix cache.

Learned from the engine's own counters (vLLM's `vllm:prompt_tokens_total` and
`vllm:prefix_cache_hits_total`): between two scrapes, hits / prompt tokens, smoothed. A request
brings into the KV cache only the blocks its engine does not already hold, so this share says
how much of a prompt sent there will claim free blocks (`epp.admission.kv_room`): on a pod that
serves a shared system prompt most of each prompt is already resident, on one serving unrelated
chats none is. Samples wait for `MIN_TOKENS` prompt tokens; a counter that went back (a
restarted engine) starts over. Neighbours: `epp.datastore` feeds scrapes in and keeps the share
on the endpoint's state (`EndpointState.cache_hit`).
"""

from __future__ import annotations

from epp.types import EndpointMetrics

MIN_TOKENS = 512  # prompt tokens between two samples
SMOOTHING = 0.3  # weight of a new sample in the moving average


class CacheHits:
    """Per endpoint address: the counters last sampled and the smoothed share of hits."""

    def __init__(self, min_tokens: int = MIN_TOKENS, smoothing: float = SMOOTHING) -> None:
        if min_tokens < 1 or not 0 < smoothing <= 1:
            raise ValueError("min_tokens must be positive and smoothing in (0, 1]")
        self.min_tokens = min_tokens
        self.smoothing = smoothing
        self._marks: dict[str, tuple[float, float]] = {}  # (prompt tokens, cache hits)
        self._shares: dict[str, float] = {}

    def get(self, address: str) -> float:
        """The share of prompt tokens found cached, 0..1; 0.0 while not measured."""
        return self._shares.get(address, 0.0)

    def observe(self, address: str, metrics: EndpointMetrics) -> float | None:
        """Take one scrape; the new share when it completed a sample, else None."""
        prompt, hits = metrics.prompt_tokens, metrics.cached_tokens
        if prompt is None or hits is None:
            return None
        since = self._marks.get(address)
        if since is None or prompt < since[0] or hits < since[1]:  # first page, or a restart
            self._marks[address] = (prompt, hits)
            return None
        tokens = prompt - since[0]
        if tokens < self.min_tokens:
            return None
        self._marks[address] = (prompt, hits)
        sample = min(1.0, max(0.0, (hits - since[1]) / tokens))
        old = self._shares.get(address)
        share = sample if old is None else old + self.smoothing * (sample - old)
        self._shares[address] = share
        return share

    def forget(self, address: str) -> None:
        self._marks.pop(address, None)
        self._shares.pop(address, None)
