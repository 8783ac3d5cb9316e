"""How long one update of a block index can hold the event loop, at a fleet's size.

A Python dict (or set) under churn rebuilds its whole table from time to time, in one call, so
the longest call of an index grows with the index (`epp.kvcache.shards`). Each test churns, in
one run and with the same random blocks, a plain dict of the same size (what each index's map of
holders was before it was cut into shards) and the real index, and prints the longest calls of
both. Prints, asserts no time.
Run: pytest -m bench -s -k index_stalls   (~1 min, ~1.5 GiB)
"""

from __future__ import annotations

import gc
import random
import time
from collections import OrderedDict
from collections.abc import Callable

import pytest

from epp.kvcache.index import KvBlockIndex
from epp.scheduling.plugins.prefix_index import PrefixIndex

pytestmark = pytest.mark.bench

PODS = 32
BLOCKS_PER_POD = 31_250  # an 8B model's KV cache on an 80 GB GPU, in 16-token blocks
BATCH = 16  # blocks per event (or per prompt)


def _longest(calls: int, call: Callable[[int], None]) -> tuple[float, float, float]:
    """The longest call, the 10th longest and p99.99, in ms."""
    gc.collect()
    gc.disable()
    try:
        times = []
        for i in range(calls):
            t0 = time.perf_counter_ns()
            call(i)
            times.append(time.perf_counter_ns() - t0)
    finally:
        gc.enable()
    times.sort()
    return times[-1] / 1e6, times[-10] / 1e6, times[int(len(times) * 0.9999)] / 1e6


def _report(what: str, plain: tuple[float, float, float], real: tuple[float, float, float]) -> None:
    print(
        f"\n{what}: longest call {real[0]:.2f} ms (10th {real[1]:.2f}, p99.99 {real[2]:.3f}) "
        f"against {plain[0]:.2f} ms (10th {plain[1]:.2f}, p99.99 {plain[2]:.3f}) for the index as "
        f"it was: {plain[0] / real[0]:.0f}x shorter"
    )


def test_bench_kv_index_stalls_under_events() -> None:
    """1M blocks held over 32 pods; each event stores 16 new blocks on a pod and removes its 16
    oldest, as a full cache's events do."""
    rng = random.Random(1)
    held = [[rng.getrandbits(64) for _ in range(BLOCKS_PER_POD)] for _ in range(PODS)]
    calls = 2 * PODS * BLOCKS_PER_POD // BATCH  # every block replaced about twice
    fresh = [[rng.getrandbits(64) for _ in range(BATCH)] for _ in range(calls)]
    pods = [f"10.0.0.{i}:8000" for i in range(PODS)]

    plain: dict[int, str] = {}
    for pod, blocks in zip(pods, held, strict=True):
        plain.update(dict.fromkeys(blocks, pod))
    queues = [list(blocks) for blocks in held]

    def plain_event(i: int) -> None:
        k = i % PODS
        for h in fresh[i]:
            plain[h] = pods[k]
        old = queues[k]
        for h in old[:BATCH]:
            del plain[h]
        del old[:BATCH]
        old += fresh[i]

    plain_times = _longest(calls, plain_event)
    plain.clear()
    queues.clear()

    index = KvBlockIndex()
    for pod, blocks in zip(pods, held, strict=True):
        index.store(pod, blocks)
    queues = [list(blocks) for blocks in held]

    def index_event(i: int) -> None:
        k = i % PODS
        index.store(pods[k], fresh[i])
        old = queues[k]
        index.remove(pods[k], old[:BATCH])
        del old[:BATCH]
        old += fresh[i]

    _report(
        f"KvBlockIndex, {len(index):,} blocks over {PODS} pods, an event of {BATCH} stored and "
        f"{BATCH} removed",
        plain_times,
        _longest(calls, index_event),
    )


def test_bench_prefix_index_stalls_under_new_prompts() -> None:
    """The approximate index (and the precise scorer's memory of picks) at its default capacity
    over 32 pods, every prompt new: each add evicts what it adds."""
    rng = random.Random(2)
    index = PrefixIndex()
    pods = [f"10.0.0.{i}:8000" for i in range(PODS)]
    for i in range(PODS * BLOCKS_PER_POD // 64):
        index.add(pods[i % PODS], [rng.getrandbits(64) for _ in range(64)])
    calls = 2 * PODS * BLOCKS_PER_POD // 64
    prompts = [[rng.getrandbits(64) for _ in range(64)] for _ in range(calls)]

    # as the index was: one dict of holders, and an OrderedDict per pod in recency order
    plain: dict[int, str] = {}
    lrus: list[OrderedDict[int, None]] = [OrderedDict() for _ in pods]
    for i in range(PODS * BLOCKS_PER_POD // 64):
        blocks = [rng.getrandbits(64) for _ in range(64)]
        plain.update(dict.fromkeys(blocks, pods[i % PODS]))
        lrus[i % PODS].update(dict.fromkeys(blocks))

    def plain_add(i: int) -> None:
        lru = lrus[i % PODS]
        for h in reversed(prompts[i]):
            lru[h] = None
            plain[h] = pods[i % PODS]
        for _ in range(64):
            del plain[lru.popitem(last=False)[0]]

    plain_times = _longest(calls, plain_add)
    plain.clear()
    lrus.clear()

    _report(
        f"PrefixIndex, {len(index):,} blocks over {PODS} pods, a new 64-block prompt added",
        plain_times,
        _longest(calls, lambda i: index.add(pods[i % PODS], prompts[i])),
    )
