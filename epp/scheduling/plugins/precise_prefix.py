"""`precise-prefix-cache-scorer`: prefer the endpoint whose KV cache really holds the prompt.

The prompt is tokenized with the model's own tokenizer (`epp.tokenization`, chat template
applied), cut into vLLM's blocks and hashed as vLLM hashes them (`epp.kvcache.hashing`, with
the adapter's name for a LoRA request); the score is the share of leading blocks an endpoint
holds, as its own KV events reported them (`epp.kvcache.index`, fed by `epp.kvevents`, which
the server starts for each such plugin). Unlike `prefix-cache-scorer` nothing is guessed from
past picks, so evictions, restarts and other EPP replicas' traffic are seen as they happen.
Tokens and hashes of recent prompts are cached: a repeated prompt costs one lookup.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from epp.kvcache.hashing import ALGOS, BlockHasher
from epp.kvcache.index import KvBlockIndex
from epp.kvcache.wire import KvEventsSettings
from epp.scheduling.base import BuildContext, SchedulingRequest
from epp.scheduling.params import Params
from epp.tokenization import Tokenizer, TokenizerError
from epp.types import EndpointState

HASH_CACHE = 4096


@dataclass(slots=True)
class PreciseStats:
    scored: int = 0
    prompt_blocks: int = 0
    hit_blocks: float = 0.0  # best holder's blocks per request, summed
    untokenized: int = 0  # requests without a prompt the tokenizer could read


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
    ) -> None:
        self.tokenizer = tokenizer
        self.hasher = hasher
        self.index = index if index is not None else KvBlockIndex()
        self.events = events if events is not None else KvEventsSettings()
        self.max_blocks = max_blocks
        self.stats = PreciseStats()
        self._hashes: OrderedDict[tuple[str | None, tuple[int, ...]], list[int]] = OrderedDict()
        self._last: tuple[SchedulingRequest, list[int], dict[str, float]] | None = None

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
        return cls(tokenizer, hasher, index, events, blocks)

    def block_hashes(self, request: SchedulingRequest) -> list[int]:
        """The request's prompt blocks as vLLM would hash them ([] if it has no prompt)."""
        payload = request.payload
        ids = self.tokenizer.prompt_ids(payload) if payload is not None else None
        if not ids:
            self.stats.untokenized += 1
            return []
        key = (request.lora_adapter, ids)
        cached = self._hashes.get(key)
        if cached is not None:
            self._hashes.move_to_end(key)
            return cached
        hashes = self.hasher.hashes(ids, request.lora_adapter, self.max_blocks)
        self._hashes[key] = hashes
        if len(self._hashes) > HASH_CACHE:
            self._hashes.popitem(last=False)
        return hashes

    def matches(self, request: SchedulingRequest) -> tuple[list[int], dict[str, float]]:
        last = self._last
        if last is not None and last[0] is request:
            return last[1], last[2]
        hashes = self.block_hashes(request)
        counts = self.index.match(hashes) if hashes else {}
        self._last = (request, hashes, counts)
        return hashes, counts

    def score(self, request: SchedulingRequest, candidates: Sequence[EndpointState]) -> list[float]:
        hashes, counts = self.matches(request)
        stats = self.stats
        stats.scored += 1
        stats.prompt_blocks += len(hashes)
        if not counts:
            return [0.0] * len(candidates)
        total = float(len(hashes))
        scores = [counts.get(c.endpoint.address, 0.0) / total for c in candidates]
        stats.hit_blocks += max(scores) * total
        return scores
