"""`precise-prefix-cache-scorer`: prefer the endpoint whose KV cache really holds the prompt.

The prompt is tokenized with the model's own tokenizer (`epp.tokenization`, chat template
applied), cut into vLLM's blocks and hashed as vLLM hashes them (`epp.kvcache.hashing`, with
the adapter's name for a LoRA request); the score is the share of leading blocks an endpoint
holds, as its own KV events reported them (`epp.kvcache.index`, fed by `epp.kvevents`, which
the server starts for each such plugin). Unlike `prefix-cache-scorer` nothing is guessed from
past picks, so evictions, restarts and other EPP replicas' traffic are seen as they happen.
Tokens of recent prompts are cached, and block hashes by prefix chain (`epp.kvcache.chain`): a
block already seen costs one lookup, and hashing stops at the first block no pod holds.
Token-aware affinity gate: each pick adds the prompt tokens its pod did not hold to that pod's
queued prefill (`epp.kvcache.prefill`, drained at the pod's learned prefill rate); a holder
whose queued prefill plus this prompt's would take longer than `ttftBudget` scores 0, so a hot
prefix spreads to a second pod instead of queueing behind itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from epp.kvcache.chain import PrefixChain
from epp.kvcache.hashing import ALGOS, BlockHasher
from epp.kvcache.index import KvBlockIndex
from epp.kvcache.prefill import PrefillTracker
from epp.kvcache.wire import KvEventsSettings
from epp.scheduling.base import BuildContext, Clock, SchedulingRequest
from epp.scheduling.params import Params
from epp.tokenization import Tokenizer, TokenizerError
from epp.types import EndpointState


@dataclass(slots=True)
class PreciseStats:
    scored: int = 0
    prompt_blocks: int = 0
    hit_blocks: float = 0.0  # best holder's blocks per request, summed
    untokenized: int = 0  # requests without a prompt the tokenizer could read
    gated: int = 0  # holders passed over because their queued prefill exceeded the budget


class PreciseCacheScorer:
    type = "precise-prefix-cache-scorer"
    name = type
    bounded = True

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
    ) -> None:
        self.tokenizer = tokenizer
        self.hasher = hasher
        self.index = index if index is not None else KvBlockIndex()
        self.events = events if events is not None else KvEventsSettings()
        self.max_blocks = max_blocks
        self.ttft_budget = ttft_budget  # 0: no gate
        self.prefill = prefill if prefill is not None else PrefillTracker()
        self._clock = clock
        self.stats = PreciseStats()
        self.chain = PrefixChain(hasher)
        # the request being scheduled: its blocks, matches and prompt tokens, reused by `picked`
        self._last: tuple[SchedulingRequest, int, dict[str, float], int] | None = None

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
        return cls(
            tokenizer, hasher, index, events, blocks, budget, PrefillTracker(prior), ctx.clock
        )

    def block_hashes(self, request: SchedulingRequest) -> list[int]:
        """The request's prompt blocks as vLLM would hash them ([] if it has no prompt)."""
        return list(self.chain.walk(self._ids(request), request.lora_adapter, self.max_blocks))

    def _ids(self, request: SchedulingRequest) -> tuple[int, ...]:
        payload = request.payload
        ids = self.tokenizer.prompt_ids(payload) if payload is not None else None
        if not ids:
            self.stats.untokenized += 1
        return ids or ()

    def matches(self, request: SchedulingRequest) -> tuple[int, dict[str, float], int]:
        """The request's prompt blocks, leading blocks held per pod, and prompt tokens."""
        last = self._last
        if last is not None and last[0] is request:
            return last[1], last[2], last[3]
        ids = self._ids(request)
        blocks = self.chain.blocks(ids, self.max_blocks)
        # the walk hashes lazily: the match stops it at the first block no pod holds
        walk = self.chain.walk(ids, request.lora_adapter, self.max_blocks)
        counts = self.index.match(walk) if blocks else {}
        self._last = (request, blocks, counts, len(ids))
        return blocks, counts, len(ids)

    def score(self, request: SchedulingRequest, candidates: Sequence[EndpointState]) -> list[float]:
        blocks, counts, tokens = self.matches(request)
        stats = self.stats
        stats.scored += 1
        stats.prompt_blocks += blocks
        if not counts:
            return [0.0] * len(candidates)
        total = float(blocks)
        scores = [counts.get(c.endpoint.address, 0.0) / total for c in candidates]
        stats.hit_blocks += max(scores) * total
        if self.ttft_budget > 0:
            self._gate(tokens, candidates, scores, counts)
        return scores

    def _gate(
        self,
        tokens: int,
        candidates: Sequence[EndpointState],
        scores: list[float],
        counts: dict[str, float],
    ) -> None:
        now, prefill, bs = self._clock(), self.prefill, self.hasher.block_size
        for i, c in enumerate(candidates):
            if scores[i] > 0.0:
                own = max(0.0, tokens - counts[c.endpoint.address] * bs)
                if prefill.wait(c.endpoint.address, now, own) > self.ttft_budget:
                    scores[i] = 0.0
                    self.stats.gated += 1

    def picked(self, request: SchedulingRequest, endpoint: EndpointState) -> None:
        """The pick's uncached prompt tokens join its pod's queued prefill."""
        blocks, counts, tokens = self.matches(request)
        self._last = None
        if not blocks:
            return
        held = counts.get(endpoint.address, 0.0) * self.hasher.block_size
        uncached = max(0.0, tokens - held)
        self.prefill.add(endpoint.address, uncached, self._clock())
