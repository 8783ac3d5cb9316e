"""`python -m loadtest.bench.kvbound`: the prefix-cache hit rate a KV cell's requests allow.

Replays the exact request sequence of `loadtest.bench.kvcells` (same seed, rate and duration;
prompts tokenized with the pods' tokenizer, cut in 16-token blocks) one request at a time
through the simulator's own paged KV cache (`epp.sim.kvcache`, vLLM's LRU free queue) on each
pod, under placement policies no router beats on its own terms:

- `ceiling`: clairvoyant eviction (Belady: the block whose next use is furthest goes first) in
  one memory as large as all the pods' together. Every router's hits are at most this: pods
  that split the memory, replicate a prefix or evict least-recently-used do no better;
- `sticky-balanced`: each prefix group stays on the pod it was first sent to, new groups go to
  the pod with the fewest groups (the union of the pods' caches covers as much as LRU allows);
- `sticky-hashed`: each group on the pod its hash names (cold-prompt homes, no load);
- `spread`: round robin (no affinity, every group on every pod);
- `two-replicas`: two routers taking turns (Envoy's round robin over EPP replicas), each
  keeping a group on the pod it first sent it to and knowing nothing of the other's picks
  (approximate replicas that share nothing; a group lives on up to two pods).

One request at a time, nothing is held by running requests: the real cells cache less. The
hit rate is cached prompt tokens over prompt tokens, as the cells count it; `first-seen`
is the share of prompt tokens in requests whose group had not been seen before (missed by any
router). `--restart-at F`: pod 1's cache is emptied after that fraction of the requests (b).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import xxhash

from epp.sim.kvcache import KvCache
from epp.sim.tokenizer import SimTokenizer
from loadtest.bench.kvcells import TOKENIZER, Shape, requests
from loadtest.workloads import poisson_arrivals

BLOCK = 16


@dataclass(frozen=True, slots=True)
class Req:
    group: int
    hashes: tuple[int, ...]  # the prompt's full blocks, chained
    prompt: int  # tokens
    output: int


def trace(shape: Shape, seed: int, rate: float, duration: float) -> list[Req]:
    tok = SimTokenizer(TOKENIZER)
    out = []
    stream = requests(shape, seed, 0)
    for _ in poisson_arrivals(seed, rate, duration):
        r = next(stream)
        ids = tok.chat_ids([{"role": role, "content": c} for role, c in r.messages])
        hashes, parent = [], 0
        for i in range(len(ids) // BLOCK):
            block = repr((parent, ids[i * BLOCK : (i + 1) * BLOCK]))
            parent = xxhash.xxh64_intdigest(block.encode())
            hashes.append(parent)
        out.append(Req(int(r.group.split("-")[1]), tuple(hashes), len(ids), r.max_tokens))
    return out


def serve(kv: KvCache, r: Req) -> int:
    """Run one request alone on `kv`; its cached prompt tokens."""
    usable = r.hashes[: (r.prompt - 1) // BLOCK]  # the last prompt token is always computed
    hits = kv.lookup(usable)
    kv.acquire(hits)
    need = -(-(r.prompt + r.output) // BLOCK) - len(hits)
    fresh = kv.allocate(need)
    assert fresh is not None, "a request larger than a pod"
    blocks = hits + fresh
    for i in range(len(hits), len(r.hashes)):
        kv.commit(blocks[i], r.hashes[i])
    kv.release(blocks)
    return len(hits) * BLOCK


def placed(
    reqs: Sequence[Req], pods: int, blocks: int, pick: Callable[[int, Req], int], restart: int
) -> float:
    caches = [KvCache(blocks, BLOCK) for _ in range(pods)]
    hit = 0
    for i, r in enumerate(reqs):
        if i == restart:
            caches[1] = KvCache(blocks, BLOCK)
        hit += serve(caches[pick(i, r)], r)
    return hit / sum(r.prompt for r in reqs)


def ceiling(reqs: Sequence[Req], capacity: int) -> float:
    """Belady over blocks in one memory of `capacity` blocks (an upper bound)."""
    uses: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(reqs):
        for h in r.hashes:
            uses[h].append(i)
    nxt: dict[int, int] = {h: 0 for h in uses}
    cached: set[int] = set()
    hit = 0
    never = len(reqs)
    for r in reqs:
        usable = r.hashes[: (r.prompt - 1) // BLOCK]
        n = 0
        for h in usable:
            if h not in cached:
                break
            n += 1
        hit += n * BLOCK
        for h in r.hashes:
            nxt[h] += 1
            cached.add(h)
        if len(cached) > capacity:

            def next_use(h: int) -> int:
                k = nxt[h]
                return uses[h][k] if k < len(uses[h]) else never

            for h in sorted(cached, key=next_use, reverse=True)[: len(cached) - capacity]:
                cached.discard(h)
    return hit / sum(r.prompt for r in reqs)


def policies(reqs: Sequence[Req], pods: int, blocks: int, restart: int) -> dict[str, float]:
    home: dict[int, int] = {}
    count = [0] * pods

    def balanced(_: int, r: Req) -> int:
        if r.group not in home:
            p = min(range(pods), key=count.__getitem__)
            home[r.group] = p
            count[p] += 1
        return home[r.group]

    def hashed(_: int, r: Req) -> int:
        return xxhash.xxh64_intdigest(str(r.group).encode()) % pods

    mine: list[dict[int, int]] = [{}, {}]

    def replicas(i: int, r: Req) -> int:
        return mine[i % 2].setdefault(r.group, i % pods)

    seen: set[int] = set()
    first = 0
    for r in reqs:
        if r.group not in seen:
            seen.add(r.group)
            first += r.prompt
    return {
        "ceiling": ceiling(reqs, pods * blocks),
        "sticky-balanced": placed(reqs, pods, blocks, balanced, restart),
        "sticky-hashed": placed(reqs, pods, blocks, hashed, restart),
        "spread": placed(reqs, pods, blocks, lambda i, _: i % pods, restart),
        "two-replicas": placed(reqs, pods, blocks, replicas, restart),
        "first-seen": first / sum(r.prompt for r in reqs),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench.kvbound", description=__doc__)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--groups", type=int, default=43)
    p.add_argument("--system-chars", type=int, default=4000)
    p.add_argument("--rate", type=float, default=5.2, help="req/s, as the cell ran")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--pods", type=int, default=4)
    p.add_argument("--num-gpu-blocks", type=int, default=600)
    p.add_argument("--restart-at", type=float, default=0.0, help="fraction of the requests")
    a = p.parse_args(argv)
    shape = Shape(a.groups, a.system_chars)
    print(f"{a.groups} groups of {a.system_chars} chars, {a.pods} pods x {a.num_gpu_blocks} "
          f"blocks, {a.rate} req/s for {a.duration} s")  # fmt: skip
    for seed in (int(s) for s in a.seeds.split(",")):
        reqs = trace(shape, seed, a.rate, a.duration)
        restart = round(len(reqs) * a.restart_at) if a.restart_at else -1
        groups = {r.group: len(r.hashes) for r in reqs}
        rates = policies(reqs, a.pods, a.num_gpu_blocks, restart)
        cells = " ".join(f"{k} {v:.0%}" for k, v in rates.items())
        tokens = sum(r.prompt for r in reqs) / len(reqs)
        print(f"seed {seed}: {len(reqs)} requests, {len(groups)} groups seen, "
              f"{tokens:.0f} prompt tokens each: {cells}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
