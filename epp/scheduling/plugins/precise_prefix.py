"""`precise-prefix-cache-scorer`: prefer the endpoint whose KV cache really holds the prompt.

The prompt is tokenized with the model's own tokenizer (`epp.tokenization`, chat template
applied), cut into vLLM's blocks and hashed as vLLM hashes them (`epp.kvcache.hashing`, with
the adapter's name for a LoRA request); the score is the share of leading blocks an endpoint
holds, as its own KV events reported them (`epp.kvcache.index`, fed by `epp.kvevents`, which
the server starts for each such plugin), so restarts, other EPP replicas' picks and other
clients' traffic are seen as they happen. The events are joined with what this replica sent
where (`rememberPicks`, on by default: an LRU of block hashes per pod sized like its KV cache,
as `prefix-cache-scorer` keeps one): a pod counts as holding the larger of what its events say
and what it was sent and would still keep. A prompt under eviction loses its tail first, and
following the events alone moved such prompts between pods and rebuilt them twice (issue 18's
cell a, seed 2: 29-30 % of prompt tokens cached against 33-34 % with the memory); a restart or a
gap the replay cannot fill clears the pod's memory with its events (`KvBlockIndex.on_clear`).
A pod reports a prompt's blocks only once it has computed them, so EPP replicas that share
(`epp.peers`) also tell each other every pick (`on_add`, `learn_pick`): its block keys join the
others' memories and its uncached tokens their queued prefill.
Tokens of recent prompts are cached, and block hashes by prefix chain (`epp.kvcache.chain`): a
block already seen costs one lookup, and without the memory hashing stops at the first block
no pod holds (with it, every block is hashed: the memory is matched on all of them).
Token-aware affinity gate: each pick adds the prompt tokens its pod did not hold to that pod's
queued prefill (`epp.kvcache.prefill`, drained at the pod's learned prefill rate); a holder
whose queued prefill plus this prompt's would take longer than `ttftBudget` scores 0, so a hot
prefix spreads to a second pod instead of queueing behind itself. Load gate (`loadGate`, off by
default): the rule `prefix-cache-scorer` applies (`prefix_gate.holder_gate`), with this
scorer's counts, so a holder also yields while its full batch and queue would delay the first
token or the answer's end past a pod holding less of the prompt. Off because it moved nothing
measurable in issue 18's cells (2 yields in a run) and adds ~20 us a pick at 64 endpoints.
Cold prompts (no endpoint holds half of the prompt) are spread as `prefix-cache-scorer`
spreads them (`coldPromptSpread`, 1 by default; `prefix_gate.spread_cold`): on the unheld
share, each endpoint scores how soon its first token would come there, from the prefill queued
on it and its prefill pace, so cold prompts that arrive together are computed on idle pods in
parallel instead of queueing behind each other. Issue 18's cells, seeds 1 and 2: p90 TTFT
0.49-0.92x the approximate scorer's in all eight points measured, against up to 1.5x with the
homes below, which were the default until then.
Optional homes (`coldPromptHome`, 0 by default): one endpoint gets `coldPromptHome` x the
unheld share (gated too): the one holding the prompt's longest part (a prefix whose tail was
evicted is rebuilt where its head is, not copied to a second pod), else the one this replica
last built it on while nobody held it, else the first in the order that rendezvous hashing of
its first unheld block gives, which depends on the prompt and the candidates only, so EPP
replicas agree without talking to each other; each only while its load
(`EndpointState.load`) is under `homeLoadBound` x the mean (consistent hashing with bounded
loads), else the next in that order. The bound keeps homes from piling prompts on the pod that
hashing happens to favour (43 prompts over 4 pods hashed 15/12/10/6).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import xxhash

from epp.kvcache.chain import PrefixChain
from epp.kvcache.hashing import ALGOS, BlockHasher
from epp.kvcache.index import KvBlockIndex
from epp.kvcache.prefill import PrefillTracker
from epp.kvcache.wire import KvEventsSettings
from epp.scheduling.base import BuildContext, Clock, SchedulingRequest
from epp.scheduling.params import Params
from epp.scheduling.plugins.prefix_gate import gate_loads, holder_gate, holders_at, spread_cold
from epp.scheduling.plugins.prefix_index import PrefixIndex
from epp.scheduling.plugins.signals import DEFAULT_STALENESS
from epp.scheduling.snapshot import snapshot_of
from epp.tokenization import Tokenizer, TokenizerError
from epp.types import EndpointState

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PreciseStats:
    scored: int = 0
    prompt_blocks: int = 0
    hit_blocks: float = 0.0  # best holder's blocks per request, summed
    untokenized: int = 0  # requests without a prompt the tokenizer could read
    gated: int = 0  # holders passed over because their queued prefill exceeded the budget
    yielded: int = 0  # holders passed over because another pod would answer sooner (load gate)
    homed: int = 0  # cold prompts given their rendezvous home
    homed_past: int = 0  # of which the first in rendezvous order was over the load bound


class _Matched(NamedTuple):
    """One request's match, kept for `score` and `picked` of the same request."""

    request: SchedulingRequest
    blocks: int  # full prompt blocks
    counts: dict[str, float]  # leading blocks held per pod
    tokens: int  # prompt tokens
    frontier: int | None  # the key of the first block no pod holds, as the events say
    keys: list[int]  # every block's key (with remembered picks; else empty)


class PreciseCacheScorer:
    type = "precise-prefix-cache-scorer"
    name = type
    bounded = True
    # a score of WARM_HOLD or more is a hold on a cached prefix (`Profile`), unless the prompt
    # was cold (`last_cold`: nobody held half of it, and the scores are the spread's and home's)
    affinity = True
    MEMORY_DEFAULT_BLOCKS = 31_250  # a pod's remembered blocks until its KV size is scraped

    def __init__(
        self,
        tokenizer: Tokenizer,
        hasher: BlockHasher,
        index: KvBlockIndex | None = None,
        events: KvEventsSettings | None = None,
        max_blocks: int = 4096,
        ttft_budget: float = 2.0,
        prefill: PrefillTracker | None = None,
        clock: Clock = time.monotonic,
        cold_home: float = 0.0,
        home_load_bound: float = 1.25,
        remember_picks: bool = True,
        load_gate: bool = False,
        gate_slack: float = 4.0,
        gate_ratio: float = 0.5,
        cold_spread: float = 1.0,
    ) -> None:
        self.tokenizer = tokenizer
        self.hasher = hasher
        self.index = index if index is not None else KvBlockIndex()
        self.events = events if events is not None else KvEventsSettings()
        self.max_blocks = max_blocks
        self.ttft_budget = ttft_budget  # 0: no gate
        self.load_gate = load_gate  # False (the default): the budget alone gates holders
        self.gate_slack = gate_slack
        self.gate_ratio = gate_ratio
        self.cold_spread = cold_spread  # 0: cold prompts go where the other scorers say
        self.prefill = prefill if prefill is not None else PrefillTracker()
        self._clock = clock
        self.cold_home = cold_home  # 0: no homes
        self.home_load_bound = home_load_bound  # 0: no bound, the rendezvous first always
        self._stable: dict[str, int] = {}  # address -> a hash every replica computes alike
        # key of a prompt's first block -> the pod it was last sent to while nobody held it
        self._built: dict[int, str] = {}
        self.stats = PreciseStats()
        self.chain = PrefixChain(hasher)
        # what this replica sent where, as `prefix-cache-scorer` keeps it (an LRU per pod sized
        # like its KV cache); None: the events alone decide
        self.memory: PrefixIndex | None = None
        if remember_picks:
            self.memory = PrefixIndex(self.MEMORY_DEFAULT_BLOCKS)
            self.index.on_clear = self.memory.forget  # a restarted pod remembers nothing
        self._last: _Matched | None = None  # the request being scheduled
        self.last_cold = True  # the prompt last scored was cold: no candidate holds it
        # (address, block keys, seconds of prefill queued there): each pick remembered, for
        # peer replicas (`epp.peers`), which cannot see it in the events until it is computed
        self.on_add: Callable[[str, list[int], float], None] | None = None

    @property
    def block_size_tokens(self) -> int:
        return self.hasher.block_size

    def learn_pick(self, address: str, block_tokens: int, keys: Sequence[int], now: float) -> bool:
        """A peer replica's block keys (`epp.peers`) join the memory of picks, when this scorer
        has one and they are of its block size, as if this replica had sent the prompt there;
        whether they did. The pick's prefill goes to `prefill.add_seconds`."""
        if self.memory is None or block_tokens != self.block_size_tokens:
            return False
        self.memory.add(address, keys, now)
        return True

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> PreciseCacheScorer:
        path = params.string("tokenizer")
        assert path is not None
        try:
            tokenizer = Tokenizer.from_dir(path)
        except TokenizerError as e:
            raise params.error("tokenizer", str(e)) from None
        hasher = BlockHasher(
            params.integer("blockSize", 16, low=1, high=4096),
            params.choice("hashAlgo", "sha256", sorted(ALGOS)),
            params.string("hashSeed", required=False) or "0",
        )
        events = KvEventsSettings(
            port=params.integer("kvEventsPort", 5557, low=1, high=65_535),
            replay_port=params.integer("kvEventsReplayPort", 0, low=0, high=65_535),
            topic=params.string("kvEventsTopicFilter", required=False) or "",
        )
        index = KvBlockIndex(params.number("cpuBlockWeight", 0.5, low=0.0, high=1.0))
        blocks = params.integer("maxPrefixBlocksToMatch", 4096, low=1)
        budget = params.duration("ttftBudget", 2.0)
        prior = params.number("prefillTokensPerSecondPrior", 8_000.0, low=1.0)
        home = params.number("coldPromptHome", 0.0, low=0.0, high=1.0)
        bound = params.number("homeLoadBound", 1.25, low=0.0)
        if 0.0 < bound < 1.0:
            raise params.error("homeLoadBound", "must be 0 (no bound) or at least 1")
        remember = params.boolean("rememberPicks", True)
        load_gate = params.boolean("loadGate", False)
        slack = params.number("loadGateSlack", 4.0, low=0.0)
        ratio = params.number("loadGateRatio", 0.5, low=0.0)
        spread = params.number("coldPromptSpread", 1.0, low=0.0, high=1.0)
        return cls(
            tokenizer, hasher, index, events, blocks, budget, PrefillTracker(prior), ctx.clock,
            home, bound, remember, load_gate, slack, ratio, spread,
        )  # fmt: skip

    def block_hashes(self, request: SchedulingRequest) -> list[int]:
        """The request's prompt blocks as vLLM would hash them ([] if it has no prompt)."""
        return self.chain.keys(self._ids(request), request.lora_adapter, self.max_blocks)

    def _ids(self, request: SchedulingRequest) -> tuple[int, ...]:
        payload = request.payload
        ids = self.tokenizer.prompt_ids(payload) if payload is not None else None
        if not ids:
            self.stats.untokenized += 1
        return ids or ()

    def matches(self, request: SchedulingRequest) -> tuple[int, dict[str, float], int, int | None]:
        """The request's prompt blocks, leading blocks held per pod, prompt tokens, and the key
        of the block where the match stopped (None for a prompt shorter than a block)."""
        last = self._last
        if last is not None and last.request is request:
            return last.blocks, last.counts, last.tokens, last.frontier
        ids = self._ids(request)
        blocks = self.chain.blocks(ids, self.max_blocks)
        memory, keys = self.memory, []
        if not blocks:
            counts: dict[str, float] = {}
            frontier = None
        elif memory is None:
            # the walk hashes lazily: the match stops it at the first block no pod holds
            walk = self.chain.walk(ids, request.lora_adapter, self.max_blocks)
            counts = self.index.match(walk)
            frontier = self.chain.last
        else:
            keys = self.chain.keys(ids, request.lora_adapter, self.max_blocks)
            counts = self.index.match(keys)
            # the first block no pod holds, as the events say: the same key in every replica
            reported = int(max(counts.values(), default=0.0))
            frontier = keys[min(reported, len(keys) - 1)] if keys else None
            # a pod this replica sent the prompt to counts as holding what it was sent, as long
            # as its LRU would keep it, whatever its events say it evicted since: a prompt
            # being evicted tail first is rebuilt where it was rather than moved
            for address, sent in memory.match(keys).items():
                if sent > counts.get(address, 0.0):
                    counts[address] = float(sent)
        self._last = _Matched(request, blocks, counts, len(ids), frontier, keys)
        return blocks, counts, len(ids), frontier

    def held_tokens(self, request: SchedulingRequest) -> dict[str, int]:
        """The request's leading prompt tokens each endpoint holds (events and remembered
        picks; admission's KV room asks it: on a holder only the rest of the prompt is new)."""
        blocks, counts, _, _ = self.matches(request)
        if not blocks:
            return {}
        block = self.hasher.block_size
        return {address: int(held * block) for address, held in counts.items()}

    def score(self, request: SchedulingRequest, candidates: Sequence[EndpointState]) -> list[float]:
        blocks, counts, tokens, frontier = self.matches(request)
        stats = self.stats
        stats.scored += 1
        stats.prompt_blocks += blocks
        self.last_cold = True
        if not blocks or not candidates:
            return [0.0] * len(candidates)
        total = float(blocks)
        scores, best = [0.0] * len(candidates), 0.0
        if counts:
            for i, held in holders_at(snapshot_of(candidates).addresses, counts):
                scores[i] = held / total
            best = max(scores)
        stats.hit_blocks += best * total
        self.last_cold = best < 0.5
        if best < 0.5:  # a cold prompt: nobody holds half of it
            homed = frontier if self.cold_home > 0 else None  # where homes apply
            # the holder of its longest part (for homes), read before any bonus moves the scores
            holder = scores.index(best) if homed is not None and best > 0.0 else None
            if self.cold_spread > 0:
                now, prefill = self._clock(), self.prefill
                spread_cold(
                    request,
                    snapshot_of(candidates),
                    scores,
                    best,
                    tokens=float(tokens),
                    queued=lambda address: prefill.wait(address, now),
                    share=self.cold_spread,
                )
            if homed is not None:
                scores[self._home(homed, candidates, holder)] += self.cold_home * (1.0 - best)
                stats.homed += 1
        if self.ttft_budget > 0:
            self._gate(tokens, candidates, scores, counts)
        if self.load_gate and counts:
            self._yield(request, tokens, candidates, scores, counts)
        return scores

    def _home(
        self, key: int, candidates: Sequence[EndpointState], holder: int | None = None
    ) -> int:
        """The pod that rebuilds a prompt: `holder`, the candidate holding its longest part
        (its tail evicted), else the pod this replica last sent it to when nobody held it, else
        the first candidate in block `key`'s rendezvous order (the same in every replica); each
        only while under the load bound: ceil(`home_load_bound` x (total load + 1) /
        candidates), the load this request would leave if spread evenly, with room to spare.
        Rebuilding a partly evicted prefix where its head still is keeps one copy of it in the
        pool instead of starting a second one elsewhere; rebuilding an evicted one where it was
        keeps a load-diverted home from moving back and forth."""
        loads = snapshot_of(candidates).load if self.home_load_bound > 0.0 else None
        bound = 0
        if loads is not None:
            bound = math.ceil(self.home_load_bound * (sum(loads) + 1) / len(loads))
        if holder is not None and (loads is None or loads[holder] < bound):
            return holder
        built = self._built.get(key) if holder is None else None
        if built is not None:  # evicted everywhere: where it was built last time, if it can
            for i, c in enumerate(candidates):
                if c.endpoint.address == built and (loads is None or loads[i] < bound):
                    return i
        stable = self._stable
        ranks: list[tuple[int, int]] = []
        for i, c in enumerate(candidates):
            address = c.endpoint.address
            h = stable.get(address)
            if h is None:
                if len(stable) > 65_536:
                    stable.clear()
                h = stable[address] = xxhash.xxh64_intdigest(address.encode())
            mixed = ((key ^ h) * 0x9E37_79B9_7F4A_7C15) & 0xFFFF_FFFF_FFFF_FFFF
            mixed ^= mixed >> 29
            ranks.append((mixed, i))
        first = max(ranks)[1]
        if loads is None or loads[first] < bound:
            return first
        self.stats.homed_past += 1
        for _, i in sorted(ranks, reverse=True):
            if loads[i] < bound:
                return i
        return first  # unreachable: the least loaded is under the mean

    def _gate(
        self,
        tokens: int,
        candidates: Sequence[EndpointState],
        scores: list[float],
        counts: dict[str, float],
    ) -> None:
        now, prefill, budget = self._clock(), self.prefill, self.ttft_budget
        if prefill.longest_wait(now, tokens) <= budget:
            return  # no pod has enough prefill queued for the whole prompt to reach the budget
        bs = self.hasher.block_size
        asks = []
        for i, score in enumerate(scores):
            if score > 0.0:
                address = candidates[i].endpoint.address
                asks.append((i, address, max(0.0, tokens - counts.get(address, 0.0) * bs)))
        for i in prefill.late(now, budget, asks):
            scores[i] = 0.0
            self.stats.gated += 1

    def _yield(
        self,
        request: SchedulingRequest,
        tokens: int,
        candidates: Sequence[EndpointState],
        scores: list[float],
        counts: dict[str, float],
    ) -> None:
        """The load gate `prefix-cache-scorer` applies (`prefix_gate.holder_gate`): a holder
        whose first token or answer's end would come later than on a pod holding less of the
        prompt scores 0, so a hot prefix spreads before its queue costs more than its prefill."""
        snap = snapshot_of(candidates)
        # the candidates still scoring for their hold
        holders = [
            (i, held)
            for i, held in holders_at(snap.addresses, counts)
            if held > 0.0 and scores[i] > 0.0
        ]
        if not holders:
            return
        now = self._clock()
        prefill, memory, stats = self.prefill, self.memory, self.stats
        keeps = holder_gate(
            request,
            snap,
            gate_loads(snap, now, DEFAULT_STALENESS),
            counts,
            tokens=tokens,
            block=self.hasher.block_size,
            queued=lambda address: prefill.wait(address, now),
            room=memory.room if memory is not None else _no_eviction,
            reuse=stats.hit_blocks / stats.prompt_blocks if stats.prompt_blocks else 0.0,
            ratio=self.gate_ratio,
            slack=self.gate_slack,
            log=log,
        )
        for i, held in holders:
            if not keeps(i, held):
                scores[i] = 0.0
                stats.yielded += 1

    def picked(self, request: SchedulingRequest, endpoint: EndpointState) -> None:
        """The pick's uncached prompt tokens join its pod's queued prefill; a prompt nobody held
        remembers where it is being built."""
        blocks, counts, tokens, frontier = self.matches(request)
        last, self._last = self._last, None
        if not blocks:
            return
        memory = self.memory
        if memory is not None and last is not None:
            m = endpoint.metrics
            if m.num_gpu_blocks:  # its LRU is as large as its KV cache
                memory.set_capacity(endpoint.address, m.num_gpu_blocks)
            memory.add(endpoint.address, last.keys, self._clock())
        if frontier is not None and not any(counts.values()) and self.cold_home > 0:
            if len(self._built) > 65_536:
                self._built.clear()
            self._built[frontier] = endpoint.address
        held = counts.get(endpoint.address, 0.0) * self.hasher.block_size
        uncached = max(0.0, tokens - held)
        self.prefill.add(endpoint.address, uncached, self._clock())
        if self.on_add is not None and last is not None and last.keys:
            rate = self.prefill.rate(endpoint.address)
            self.on_add(endpoint.address, last.keys, uncached / rate if rate > 0.0 else 0.0)


def _no_eviction(address: str) -> int:
    """Room without a memory of picks: the events alone do not say how full a pod is."""
    return 1 << 40
