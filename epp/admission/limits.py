"""Batch-limit learning: how many requests a server runs at once before it queues.

A server's limit is learned from its scrapes: a queue that persists over several scrapes means
its batch is full at the number it runs (a single scrape catches requests between engine steps),
and a learned limit grows whenever the server later runs more. Until then the pod spec's
`--max-num-seqs` stands in; with it declared, a batch below it counts as full only when the KV
cache is, since a queue under a half-empty batch is requests waiting out one long step (a big
prefill on a slow GPU spans several scrapes) and learning from it would cap the server too low.
The datastore calls `learn` on every scrape and stores what it returns; the room rules read the
limit from the endpoint's state. Neighbours: `epp.datastore` (the `LimitLearner` protocol).
"""

from __future__ import annotations

from epp.types import Endpoint, EndpointMetrics

QUEUED_SCRAPES_TO_LEARN = 3
KV_FULL = 0.9  # KV-cache usage at which a batch below --max-num-seqs counts as full


class BatchLimitLearner:
    def __init__(self, queued_scrapes: int = QUEUED_SCRAPES_TO_LEARN, kv_full: float = KV_FULL):
        self.queued_scrapes = queued_scrapes
        self.kv_full = kv_full
        self._queued: dict[str, int] = {}  # consecutive scrapes with waiting > 0, per address

    def learn(self, endpoint: Endpoint, metrics: EndpointMetrics, learned: int) -> int | None:
        """The endpoint's new learned limit after this scrape, or None when it stays
        `learned` (0: nothing learned yet)."""
        address = endpoint.address
        queued = self._queued.get(address, 0) + 1 if metrics.waiting > 0 else 0
        self._queued[address] = queued
        if not (queued >= self.queued_scrapes or learned) or metrics.running <= learned:
            return None
        if not learned and not self._batch_full(endpoint, metrics):
            return None
        return metrics.running

    def forget(self, address: str) -> None:
        self._queued.pop(address, None)

    def _batch_full(self, endpoint: Endpoint, metrics: EndpointMetrics) -> bool:
        declared = endpoint.max_num_seqs
        return not declared or metrics.running >= declared or metrics.kv_usage >= self.kv_full
