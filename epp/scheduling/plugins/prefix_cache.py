"""`prefix-cache-scorer`: prefer the endpoint that was already sent this prompt's prefix.

Score = matched blocks / prompt blocks, from the approximate index in `prefix_index.py`, which
this plugin updates after each pick (it is a PickObserver). Block size and per-endpoint index
capacity auto-tune from `vllm:cache_config_info` (block_size tokens x 4 chars; num_gpu_blocks).
A load gate breaks affinity when the warm cache is not worth its wait: a holder keeps it while
its first token would come no later there than on any endpoint holding less of the prompt.
Each endpoint's first token is the wait behind its full batch (the excess over its batch limit,
`EndpointState.limit`, drained at its decode pace, as the service-time model counts it; none
with a free slot), the prefill recent picks queued there (`prefill_queue`), and its own prefill
of the prompt tokens it lacks at its measured prefill pace (`EndpointState.prefill_pace`, from
the engine's prefill histogram, see `epp.prefill_pace`). So a long shared prompt stays where it
is cached through a short queue, a short one moves as soon as queueing costs more than
recomputing it, and a conversation on a slow GPU (a MIG slice) moves to a fast pod that holds
its shared prefix once its new turn would take longer to compute there than the rest elsewhere.
The answer's end counts as well: the first token plus the expected output tokens at the
endpoint's decode pace, give or take the pace's measured noise (`EndpointState.tpot_spread`),
so a group leaves a warm half-speed GPU whose sooner first token is followed by a much later
end, and does not leave an equal GPU whose pace only reads slower by noise. Until prefill
paces are measured, a holder is overloaded when its load (`EndpointState.load`; the EPP's own
count alone when a scrape is stale) exceeds the pool's least-loaded candidate by more than
`loadGateRatio` x that minimum + `loadGateSlack`. Affinity without a gate collapses a hot prefix
onto one pod; a gated holder scores 0 and the request seeds a second holder. Each pick's blocks
and the prefill it queued also go to `on_add` when set: other EPP replicas learn them
(`epp.peers`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from epp.scheduling.base import BuildContext, Clock, SchedulingRequest
from epp.scheduling.params import Params
from epp.scheduling.plugins.prefix_gate import (
    Keeps,
    gate_loads,
    holder_gate,
    holders_at,
    spread_cold,
)
from epp.scheduling.plugins.prefix_index import PrefixIndex, block_hashes
from epp.scheduling.plugins.signals import DEFAULT_STALENESS
from epp.scheduling.prefill_queue import PrefillQueue, filled_paces
from epp.scheduling.snapshot import Snapshot, snapshot_of
from epp.types import CHARS_PER_TOKEN, EndpointState

log = logging.getLogger(__name__)

PURGE_EVERY = 4096  # picks between sweeps for endpoints that stopped receiving traffic


@dataclass(slots=True)
class PrefixStats:
    """Running totals for observability: how much of the routed prompts the index predicted."""

    picks: int = 0
    prompt_blocks: int = 0
    hit_blocks: int = 0

    @property
    def hit_ratio(self) -> float:
        return self.hit_blocks / self.prompt_blocks if self.prompt_blocks else 0.0


class PrefixCacheScorer:
    type = "prefix-cache-scorer"
    name = type
    bounded = True  # scores already in [0, 1]: the profile skips its clamp
    # a score of WARM_HOLD or more is a hold on a cached prefix (`Profile`), unless the prompt
    # was cold (`last_cold`: nobody kept half of it, and the scores are the cold spread's)
    affinity = True

    def __init__(
        self,
        block_size_tokens: int = 16,
        max_blocks: int = 256,
        capacity: int = 31_250,
        auto_tune: bool = True,
        gate_slack: float = 4.0,
        gate_ratio: float = 0.5,
        staleness: float = DEFAULT_STALENESS,
        idle_seconds: float = 600.0,
        clock: Clock = time.monotonic,
        cold_spread: float = 1.0,
    ) -> None:
        if block_size_tokens < 1 or max_blocks < 1:
            raise ValueError("block size and max blocks must be positive")
        self.block_size_tokens = block_size_tokens
        self.max_blocks = max_blocks
        self.auto_tune = auto_tune
        self.gate_slack = gate_slack
        self.gate_ratio = gate_ratio
        self.staleness = staleness
        self.idle_seconds = idle_seconds
        self.cold_spread = cold_spread  # 0: cold prompts go where the other scorers say
        self.prefill = PrefillQueue()
        self.index = PrefixIndex(capacity)
        self.stats = PrefixStats()
        self._clock = clock
        self._block_tuned = False
        self.last_cold = True  # the prompt last scored was cold: no candidate holds it
        # hashes and matches of the request being scheduled, reused by `picked`
        self._last: tuple[SchedulingRequest, int, list[int], dict[str, int]] | None = None
        # (address, block hashes, seconds of prefill queued there)
        self.on_add: Callable[[str, list[int], float], None] | None = None

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> PrefixCacheScorer:
        return cls(
            block_size_tokens=params.integer("blockSizeTokens", 16, low=1, high=65_536),
            max_blocks=params.integer("maxPrefixBlocksToMatch", 256, low=1, high=1_000_000),
            capacity=params.integer("lruCapacityPerServer", 31_250, low=1),
            auto_tune=params.boolean("autoTune", True),
            gate_slack=params.number("loadGateSlack", 4.0, low=0.0),
            gate_ratio=params.number("loadGateRatio", 0.5, low=0.0),
            staleness=params.duration("metricsStalenessThreshold", DEFAULT_STALENESS),
            idle_seconds=params.duration("idleEndpointTimeout", 600.0, low=1.0),
            clock=ctx.clock,
            cold_spread=params.number("coldPromptSpread", 1.0, low=0.0, high=1.0),
        )

    def score(self, request: SchedulingRequest, candidates: Sequence[EndpointState]) -> list[float]:
        hashes, counts = self._lookup(request)
        self.last_cold = True
        if not counts:
            scores = [0.0] * len(candidates)
            if hashes and self.cold_spread > 0.0:
                self._spread(request, snapshot_of(candidates), scores, 0.0)
            return scores
        snap = snapshot_of(candidates)
        loads = gate_loads(snap, self._clock(), self.staleness)
        total = float(len(hashes))
        scores = [0.0] * len(candidates)
        keeps = self._gate(request, snap, loads, counts)
        for i, matched in holders_at(snap.addresses, counts):
            if keeps(i, matched):
                scores[i] = matched / total
        if (best := max(scores)) >= 0.5:
            self.last_cold = False
        elif self.cold_spread > 0.0:
            self._spread(request, snap, scores, best)
        return scores

    def _spread(
        self, request: SchedulingRequest, snap: Snapshot, scores: list[float], best: float
    ) -> None:
        """A cold prompt (no usable holder has half of it): `prefix_gate.spread_cold`, with
        this EPP's prefill queue."""
        now = self._clock()
        queue = self.prefill
        tokens = float(
            max(request.prompt_tokens, self._blocks_of(request) * self.block_size_tokens)
        )
        spread_cold(
            request,
            snap,
            scores,
            best,
            tokens=tokens,
            queued=lambda address: queue.seconds(address, now),
            share=self.cold_spread,
        )

    def _gate(
        self,
        request: SchedulingRequest,
        snap: Snapshot,
        loads: Sequence[int],
        counts: dict[str, int],
    ) -> Keeps:
        """Whether holder i, holding `matched` blocks of the prompt, keeps its affinity
        (`prefix_gate.holder_gate`, with this index's room and this EPP's prefill queue)."""
        now = self._clock()
        prefill = self.prefill
        block = self.block_size_tokens
        return holder_gate(
            request,
            snap,
            loads,
            counts,
            tokens=max(request.prompt_tokens, self._blocks_of(request) * block),
            block=block,
            queued=lambda address: prefill.seconds(address, now),
            room=self.index.room,
            reuse=self.stats.hit_ratio,
            ratio=self.gate_ratio,
            slack=self.gate_slack,
            log=log,
        )

    def picked(self, request: SchedulingRequest, endpoint: EndpointState) -> None:
        now = self._clock()
        if self.auto_tune:
            self._tune(endpoint)
        hashes, counts = self._lookup(request)
        self._last = None
        if not hashes:
            return
        stats = self.stats
        stats.picks += 1
        stats.prompt_blocks += len(hashes)
        held = counts.get(endpoint.address, 0)
        stats.hit_blocks += held
        tokens = max(request.prompt_tokens, len(hashes) * self.block_size_tokens)
        uncached = tokens - held * self.block_size_tokens
        queued = 0.0
        if uncached > 0:
            pace = endpoint.prefill_pace or filled_paces([0.0], [endpoint.endpoint.capacity])[0]
            queued = self.prefill.add(endpoint.address, uncached, pace, now)
        self.index.add(endpoint.address, hashes, now)
        if self.on_add is not None:
            self.on_add(endpoint.address, hashes, queued)
        if stats.picks % PURGE_EVERY == 0:
            self.index.purge_idle(now - self.idle_seconds)

    def learn_pick(
        self, address: str, block_tokens: int, hashes: Sequence[int], now: float
    ) -> bool:
        """A peer replica's blocks (`epp.peers`) join the index when their size is this
        scorer's; whether they did. The pick's prefill goes to `prefill.add_seconds`."""
        if block_tokens != self.block_size_tokens:
            return False
        self.index.add(address, hashes, now)
        return True

    def held_tokens(self, request: SchedulingRequest) -> dict[str, int]:
        """The request's leading prompt tokens each endpoint holds, as this index believes
        (admission's KV room asks it: on a holder only the rest of the prompt is new)."""
        hashes, counts = self._lookup(request)
        if not hashes:
            return {}
        tokens = max(request.prompt_tokens, len(hashes) * self.block_size_tokens)
        per_block = tokens / len(hashes)
        return {address: int(held * per_block) for address, held in counts.items()}

    def forget(self, address: str) -> None:
        """The endpoint left or restarted: its cache is gone."""
        self.index.forget(address)
        self.prefill.forget(address)

    def _blocks_of(self, request: SchedulingRequest) -> int:
        return len(self._lookup(request)[0])

    def _lookup(self, request: SchedulingRequest) -> tuple[list[int], dict[str, int]]:
        last = self._last
        if last is not None and last[0] is request and last[1] == self.block_size_tokens:
            return last[2], last[3]
        chars = self.block_size_tokens * CHARS_PER_TOKEN
        hashes = block_hashes(request.target_model, request.prompt, chars, self.max_blocks)
        counts = self.index.match(hashes) if hashes else {}
        self._last = (request, self.block_size_tokens, hashes, counts)
        return hashes, counts

    def _tune(self, endpoint: EndpointState) -> None:
        m = endpoint.metrics
        if m.block_size and not self._block_tuned:
            self._block_tuned = True
            if m.block_size != self.block_size_tokens:
                # hashes of another block size never match: start the index afresh
                self.block_size_tokens = m.block_size
                self.index.clear()
        if m.num_gpu_blocks:
            tokens = m.num_gpu_blocks * (m.block_size or self.block_size_tokens)
            self.index.set_capacity(endpoint.address, tokens // self.block_size_tokens)
