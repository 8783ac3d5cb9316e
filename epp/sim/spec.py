"""Values that describe a simulated pod: its start-up spec and its runtime faults/fake metrics.

`SimPodSpec` is re-exported by `epp.sim.cluster` (the public contract); `Faults` and
`FakeMetrics` are switched at runtime through `SimPod.configure` (the `/sim/config` endpoint).
"""

from __future__ import annotations

from dataclasses import dataclass

METRICS_FAULTS = ("slow", "garbage")


@dataclass(frozen=True, slots=True)
class SimPodSpec:
    host: str  # e.g. "127.0.0.2"
    port: int  # 0 = pick a free port; the real one is in SimCluster.addresses
    name: str  # pod name, e.g. "llama2-gpu-pool-0"
    model: str = "meta-llama/Llama-2-7b-chat-hf"
    profile: str = "H100"
    speed: float = 1.0  # step-time divisor: 0.5 = half as fast
    num_gpu_blocks: int | None = None  # None: the profile's
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None  # None: the profile's
    max_loras: int = 4
    max_model_len: int = 4096
    loras: tuple[str, ...] = ()  # adapters registered at start ("name" or "name=path")
    lora_load_s: float | None = None  # None: the profile's
    seed: int = 0  # output-length draws and error injection
    accept_any_model: bool = False  # serve any model name as the base model
    # benchmarks only: end each answer at the prompt's last `#answer=N` marker (capped by
    # max_tokens), a length the client knows and no router reads
    answer_from_prompt: bool = False
    aliases: tuple[str, ...] = ()  # more names for the base model (vLLM --served-model-name a b)
    legacy_metrics: bool = False  # KV usage as vllm:gpu_cache_usage_perc, like older vLLM
    prefix_caching: bool = True
    flush_interval: float = 0.0  # coalesce SSE writes of steps shorter than this (seconds)
    metrics_delay_s: float = 5.0  # how long a "slow" /metrics fault stalls

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError(f"pod {self.name}: speed must be positive")
        if not 0 <= self.port < 65536:
            raise ValueError(f"pod {self.name}: bad port {self.port}")


@dataclass(frozen=True, slots=True)
class Faults:
    error_rate: float = 0.0  # share of completion requests answered with a 500
    hang: bool = False  # accept connections, never answer (except /sim/config)
    metrics: str | None = None  # "slow" | "garbage"
    die_mid_stream: bool = False  # drop the connection halfway through each response


@dataclass(frozen=True, slots=True)
class FakeMetrics:
    waiting: int | None = None
    running: int | None = None
    kv_usage: float | None = None
