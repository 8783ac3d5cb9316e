"""GPU profiles: what one engine step costs on a given accelerator serving a 7-8B model.

A step's duration is a linear cost model (see `GpuProfile.step_time` and docs/simulator.md):
a fixed part (weights read once per forward pass, kernel launches), a part per prompt token
computed (compute bound), a part per decoding sequence and a part per context token attended by
the decoding sequences (KV reads, memory bound). The engine (`epp.sim.engine`) calls it once per
step; the speed multiplier of a pod divides the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """Cost coefficients of one accelerator running Llama-2-7B-class weights in vLLM."""

    name: str
    base_step_s: float  # fixed cost of any forward pass
    prefill_token_s: float  # per prompt (or recomputed) token in the step
    decode_seq_s: float  # per sequence decoding one token in the step
    kv_token_s: float  # per context token read by decoding sequences
    num_gpu_blocks: int  # 16-token KV blocks left after the weights at 0.9 memory utilization
    max_num_batched_tokens: int  # vLLM's default token budget per step on this class of GPU
    lora_load_s: float  # moving one rank-16 adapter into a GPU slot
    memory_mib: int  # framebuffer size, for the DCGM exporter
    weights_mib: int  # framebuffer taken by the weights and activations

    def step_time(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int) -> float:
        return (
            self.base_step_s
            + self.prefill_token_s * prefill_tokens
            + self.decode_seq_s * decode_seqs
            + self.kv_token_s * kv_tokens
        )


def _profiles() -> Mapping[str, GpuProfile]:
    table = (
        # H100 SXM 80 GB, bf16: 3.35 TB/s, ~990 dense TFLOP/s.
        GpuProfile("H100", 6.0e-3, 40e-6, 30e-6, 0.16e-6, 7400, 8192, 0.020, 81559, 17000),
        # A100 SXM 80 GB, bf16: 2.0 TB/s, 312 TFLOP/s.
        GpuProfile("A100-80G", 8.5e-3, 75e-6, 50e-6, 0.26e-6, 7400, 8192, 0.030, 81920, 17000),
        # A100 40 GB: 1.55 TB/s.
        GpuProfile("A100-40G", 10.5e-3, 75e-6, 50e-6, 0.33e-6, 2400, 8192, 0.030, 40960, 17000),
        # L4 24 GB, fp16: 300 GB/s, 121 TFLOP/s.
        GpuProfile("L4", 50e-3, 250e-6, 150e-6, 1.75e-6, 790, 2048, 0.080, 23034, 15000),
        # T4 16 GB: a 7B model only fits 4-bit (AWQ); 320 GB/s, 65 TFLOP/s.
        GpuProfile("T4", 25e-3, 500e-6, 200e-6, 1.64e-6, 1130, 2048, 0.100, 15360, 5000),
        # H100 MIG 1g.10gb: 1/7 of the SMs, 1/8 of memory and bandwidth; 4-bit weights.
        GpuProfile("MIG-1g.10gb", 14e-3, 280e-6, 150e-6, 1.25e-6, 490, 2048, 0.060, 9856, 4800),
    )
    return MappingProxyType({p.name.lower(): p for p in table})


PROFILES: Mapping[str, GpuProfile] = _profiles()
_ALIASES = {"h100-80g": "h100", "a100": "a100-80g", "1g.10gb": "mig-1g.10gb", "mig": "mig-1g.10gb"}


SHARED = "-shared-"  # `H100-shared-4`: a time-sliced share of an H100 among 4 pods
MAX_USERS = 64


def time_sliced(gpu: GpuProfile, users: int) -> GpuProfile:
    """One of `users` pods time-sharing `gpu` (the device plugin's time-slicing, DRA's
    `maxUsers`), all of them busy: each gets the GPU one slice in `users`, so every step costs
    `users` times as long, and its KV cache is its share of the memory left after the weights
    (each engine is started with a share of the memory); the framebuffer the exporter shows is
    the whole GPU's."""
    if not 1 <= users <= MAX_USERS:
        raise ValueError(f"a time-sliced GPU has 1 to {MAX_USERS} users, not {users}")
    return GpuProfile(
        f"{gpu.name}{SHARED}{users}",
        gpu.base_step_s * users,
        gpu.prefill_token_s * users,
        gpu.decode_seq_s * users,
        gpu.kv_token_s * users,
        max(1, gpu.num_gpu_blocks // users),
        gpu.max_num_batched_tokens,
        gpu.lora_load_s * users,
        gpu.memory_mib,
        gpu.weights_mib,
    )


def get_profile(name: str) -> GpuProfile:
    """The built-in profile called `name` (case-insensitive), or `<profile>-shared-<N>` for a
    time-sliced share of it; ValueError lists the known ones."""
    key = name.strip().lower()
    base, shared, users = key.partition(SHARED)
    if shared:
        if not users.isdigit():
            raise ValueError(
                f"GPU profile {name!r}: the share must be {SHARED}<users>, e.g. H100-shared-4"
            )
        return time_sliced(get_profile(base), int(users))
    key = _ALIASES.get(key, key)
    try:
        return PROFILES[key]
    except KeyError:
        known = ", ".join(p.name for p in PROFILES.values())
        raise ValueError(
            f"unknown GPU profile {name!r}; known: {known}, or any of them{SHARED}<users> "
            "(time-sliced)"
        ) from None
