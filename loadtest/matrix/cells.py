"""The matrix's cells: named clusters and workloads that, together, vary every dimension.

A `Cell` says what differs from the reference cell (`sharegpt`, the side-by-side benchmark's
default cluster): KV memory per pod as a multiple of the workload's prompt working set, the
batch limit, how pod speeds differ (uniform, the last pod at half speed, or mixed GPU
profiles), the pod count, the prompt mix and how answer lengths reach the server. `bench_flags`
turns it into `python -m loadtest.bench` flags, so a cell can be rerun on its own; the runner
(`__main__.py`) parses them with the benchmark's own parser. `CELLS` is the default matrix and
`docs/benchmarks.md` explains why these ten.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from epp.sim.profiles import get_profile
from loadtest.workloads import (
    ANNOUNCED,
    CAPPED,
    LENGTHS,
    UNCAPPED,
    WORKLOADS,
    MultiTurnShape,
    SharedPrefixShape,
    ShareGptShape,
)

BLOCK_TOKENS = 16
SPEEDS = ("uniform", "one-slow", "mixed")
# the GPU of pod i in a mixed cluster: MIXED_PROFILES[i % 4] (decode steps ~1x, 1.4x, 1.8x and
# 2.9x an H100's at batch 8)
MIXED_PROFILES = ("H100", "A100-80G", "A100-40G", "MIG-1g.10gb")
# what the machine's two cores are known to carry: simulated tokens per second at full batches
TOKENS_PER_S_CEILING = 6000.0


@dataclass(frozen=True, slots=True)
class Cell:
    name: str
    varies: str  # what this cell shows, against the reference cell
    mix: str  # a loadtest workload: sharegpt, shared-prefix, multi-turn
    pods: int = 4
    max_num_seqs: int = 8
    kv: float = 1.0  # KV blocks per pod, as a multiple of the mix's prompt working set
    speeds: str = "one-slow"  # uniform | one-slow (the last pod at half speed) | mixed GPUs
    speed: float = 0.25  # every pod's speed multiplier (the slow one's is half of it)
    groups: int = 8  # shared-prefix: system prompts ...
    prefix_tokens: int = 2000  # ... of this many tokens
    conversations: int = 48  # multi-turn: conversations in progress
    lengths: str = ANNOUNCED
    load: float = 0.9  # offered rate, as a fraction of the measured capacity
    duration: float = 30.0  # seconds of arrivals per point (16 pods: 3x the rate, so less)
    flush_interval: float = 0.1  # the simulator coalesces each stream's tokens this often

    def __post_init__(self) -> None:
        if self.mix not in WORKLOADS:
            raise ValueError(f"cell {self.name}: unknown mix {self.mix!r}")
        if self.speeds not in SPEEDS:
            raise ValueError(f"cell {self.name}: speeds must be one of {SPEEDS}")
        if self.lengths not in LENGTHS:
            raise ValueError(f"cell {self.name}: lengths must be one of {LENGTHS}")
        if self.pods < 2 or self.max_num_seqs < 1 or self.kv <= 0 or not 0 < self.load <= 2:
            raise ValueError(f"cell {self.name}: bad pods, max_num_seqs, kv or load")

    @property
    def working_set_tokens(self) -> int:
        """The prompt tokens a pod would need to cache everything worth reusing: every shared
        prefix, every live conversation's history, or (ShareGPT-like, nothing reused) the
        prompts and answers of a full batch."""
        if self.mix == "shared-prefix":
            return SharedPrefixShape(self.groups, self.prefix_tokens).working_set_tokens
        if self.mix == "multi-turn":
            return MultiTurnShape(live=self.conversations).working_set_tokens
        return ShareGptShape().batch_tokens(self.max_num_seqs)

    @property
    def num_gpu_blocks(self) -> int:
        return math.ceil(self.kv * self.working_set_tokens / BLOCK_TOKENS)

    def profiles(self) -> list[str]:
        """Each pod's GPU profile."""
        if self.speeds == "mixed":
            return [MIXED_PROFILES[i % len(MIXED_PROFILES)] for i in range(self.pods)]
        return ["H100"] * self.pods

    def speeds_of(self) -> list[float]:
        """Each pod's speed multiplier."""
        slow = self.speed / 2 if self.speeds == "one-slow" else self.speed
        return [self.speed] * (self.pods - 1) + [slow]

    def nominal_tokens_per_s(self) -> float:
        """Tokens/s the cluster decodes with every batch full of ShareGPT-sized contexts (the
        GPU profiles' cost model): an upper bound of the simulator's and routers' work."""
        context = 450
        return sum(
            self.max_num_seqs
            * speed
            / get_profile(profile).step_time(0, self.max_num_seqs, self.max_num_seqs * context)
            for profile, speed in zip(self.profiles(), self.speeds_of(), strict=True)
        )

    def bench_flags(self) -> list[str]:
        """The `python -m loadtest.bench` flags of this cell's cluster and workload."""
        speeds = self.speeds_of()
        options = [
            f"{i}:profile={p}" for i, p in enumerate(self.profiles()) if p != "H100"
        ]  # the last pod's speed is --slow-speed
        return [
            "--workloads", self.mix, "--pods", str(self.pods), "--profile", "H100",
            "--speed", f"{speeds[0]:g}", "--slow-speed", f"{speeds[-1]:g}",
            "--max-num-seqs", str(self.max_num_seqs),
            "--num-gpu-blocks", str(self.num_gpu_blocks),
            *[x for o in options for x in ("--pod-option", o)],
            "--flush-interval", f"{self.flush_interval:g}",
            "--prefix-groups", str(self.groups), "--prefix-tokens", str(self.prefix_tokens),
            "--conversations", str(self.conversations),
            "--lengths", self.lengths, "--fractions", f"{self.load:g}",
            "--duration", f"{self.duration:g}",
        ]  # fmt: skip

    def describe(self) -> str:
        kind = {"uniform": "uniform", "one-slow": "last at half speed", "mixed": "mixed GPUs"}
        mix = {
            "sharegpt": "ShareGPT-like",
            "shared-prefix": f"shared prefix {self.groups}x{self.prefix_tokens}",
            "multi-turn": f"multi-turn, {self.conversations} live",
        }[self.mix]
        return (
            f"{self.pods} pods ({kind[self.speeds]}), batch {self.max_num_seqs}, "
            f"KV {self.kv:g}x working set ({self.num_gpu_blocks} blocks), {mix}, "
            f"lengths {self.lengths}"
        )


CELLS: tuple[Cell, ...] = (
    Cell("sharegpt", "reference: the side-by-side benchmark's cluster", "sharegpt", kv=2.5),
    Cell("sharegpt-cap", "lengths: a fixed max_tokens cap", "sharegpt", kv=2.5, lengths=CAPPED),
    Cell(
        "sharegpt-b64-kvhalf",
        "batch 64 on uniform pods whose KV holds half a full batch; no max_tokens",
        "sharegpt",
        max_num_seqs=64,
        kv=0.5,
        speeds="uniform",
        lengths=UNCAPPED,
    ),
    Cell(
        "sharegpt-16pods",
        "16 pods, KV of exactly a full batch; no max_tokens",
        "sharegpt",
        pods=16,
        duration=20,
        lengths=UNCAPPED,
    ),
    Cell(
        "prefix8",
        "8 shared prefixes, each pod's KV half of them",
        "shared-prefix",
        kv=0.5,
        # 90 s, not 30: over 30 s (135-166 requests) the 8 first sightings and the requests
        # queued behind their prefills filled most of the tenth above p90 TTFT, so the cell
        # timed the first seconds of a cold cluster, not affinity against eviction
        # (docs/benchmarks.md, "prefix8 over 90 s")
        duration=90,
    ),
    Cell(
        "prefix32-mixed",
        "mixed GPUs, batch 16, 32 prefix groups, KV of the whole working set; capped lengths",
        "shared-prefix",
        max_num_seqs=16,
        speeds="mixed",
        groups=32,
        prefix_tokens=1000,
        lengths=CAPPED,
    ),
    Cell(
        "prefix128-16pods",
        "16 uniform pods, 128 prefix groups, KV of half of them per pod; no max_tokens",
        "shared-prefix",
        pods=16,
        duration=20,
        kv=0.5,
        speeds="uniform",
        groups=128,
        prefix_tokens=500,
        lengths=UNCAPPED,
    ),
    Cell(
        "prefix8-b32-kv4",
        "batch 32 on uniform pods with 4x the working set (affinity is free); capped lengths",
        "shared-prefix",
        max_num_seqs=32,
        kv=4,
        speeds="uniform",
        lengths=CAPPED,
    ),
    Cell("multiturn", "multi-turn conversations, batch 16", "multi-turn", max_num_seqs=16),
    Cell(
        "multiturn-16pods-mixed",
        "multi-turn on 16 mixed GPUs, KV 4x the working set; capped lengths",
        "multi-turn",
        pods=16,
        duration=20,
        kv=4,
        speeds="mixed",
        conversations=192,
        lengths=CAPPED,
    ),
)


def select(names: str) -> list[Cell]:
    """The cells named (comma-separated, in the matrix's order), or all for "" or "all"."""
    if names in ("", "all"):
        return list(CELLS)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {c.name for c in CELLS}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"unknown cells {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return [c for c in CELLS if c.name in wanted]
