"""KV room: how long a prompt an endpoint's free KV cache can take now.

A free batch slot is not room when the KV cache is full: vLLM (and the simulator) admits a
waiting request only once the blocks of its prompt are free (of its first chunk, for a prompt
longer than a step's token budget), first come first served, so a request sent to a pod whose
KV is taken waits inside that engine, for that engine's next finished answer, while a slot
elsewhere may free sooner. On a cluster whose KV holds about one full batch (ShareGPT-like
answers, 16 pods) that wait was 1-16 s for the worst first tokens, under a dispatcher that sent
every request to a free slot (docs/benchmarks.md, "The matrix at add46bd" and "KV room: a free
slot counts only where the prompt fits").

What an endpoint can take, in prompt tokens, from what its engine reports and what the EPP sent:
- free blocks at the last scrape: (1 - `vllm:kv_cache_usage_perc`) x `num_gpu_blocks` (blocks
  that only cache a finished request's prefix count as free, as vLLM counts them);
- less the prompts this EPP started there since that scrape (less those it ended), and the
  requests the engine itself had waiting (each at the mean prompt of the EPP's requests there):
  both claim blocks before a new one does;
- a prompt claims only the tokens its engine does not already hold: the endpoint's recent share
  of cache hits (`EndpointState.cache_hit`, `epp.cache_hits`) is left out of every prompt, so a
  warm holder of a shared system prompt keeps its affinity where only the suffix is new.
An endpoint whose engine reports no KV size (no `cache_config_info`) or that was never scraped
takes any prompt. Neighbours: `rooms.RoomView` reads `room_tokens` once per snapshot;
`epp.datastore` keeps the counts it reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from epp.types import EndpointState

BLOCK_TOKENS = 16  # vLLM's default block size, where the engine reports none


def room_tokens(state: EndpointState) -> float:
    """Prompt tokens the endpoint's free KV cache can take now (`math.inf`: KV not reported,
    or every prompt found cached)."""
    m = state.metrics
    blocks = m.num_gpu_blocks
    if not blocks or not m.scraped_at:
        return math.inf
    keep = 1.0 - state.cache_hit  # the share of a prompt that claims new blocks
    if keep <= 0.0:
        return math.inf
    # the engine's own queue, less the requests that ended since the scrape (their slots and
    # blocks went to it first)
    queued = max(0, m.waiting + min(0, state.in_flight_since_scrape))
    mean_prompt = state.in_flight_tokens / state.in_flight if state.in_flight else 0.0
    claimed = (max(0, state.tokens_since_scrape) + queued * mean_prompt) * keep
    free = (1.0 - m.kv_usage) * blocks * (m.block_size or BLOCK_TOKENS) - claimed
    return max(0.0, free) / keep


class RoomColumn:
    """`room_tokens` of each endpoint of a snapshot, remembered per state object: a snapshot
    differs from the one before in one endpoint or a few (a lease, a scrape), so a new view over
    1,024 endpoints reads 1,023 remembered values instead of computing them (a wake-up's view
    costs ~0.1 ms here against ~1 ms computed: `tests/bench/test_bench_admission.py`). States
    are immutable; each is kept with its value, so an id is never mistaken for a new state's."""

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: dict[int, tuple[EndpointState, float]] = {}

    def of(self, states: Sequence[EndpointState]) -> list[float]:
        known = self._known
        out: list[float] = []
        for state in states:
            hit = known.get(id(state))
            if hit is not None and hit[0] is state:
                out.append(hit[1])
            else:
                value = room_tokens(state)
                known[id(state)] = (state, value)
                out.append(value)
        if len(known) > 4 * len(states) + 64:  # replaced states pile up: keep the current ones
            self._known = {id(s): (s, v) for s, v in zip(states, out, strict=True)}
        return out


def takes_rest(state: EndpointState, room: float, prompt_tokens: int, held: int) -> bool:
    """Whether the endpoint (its `room_tokens` is `room`) takes a prompt of which it holds
    `held` tokens: only the rest claims blocks, not the pod-wide share `room` assumes."""
    if math.isinf(room):
        return True
    return prompt_tokens - held <= room * (1.0 - state.cache_hit)
