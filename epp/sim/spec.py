"""Values that describe a simulated pod: its start-up spec and its runtime faults/fake metrics.

`SimPodSpec` is re-exported by `epp.sim.cluster` (the public contract); `KvEventsConfig` is
vLLM's `--kv-events-config`; `Faults` and `FakeMetrics` are switched at runtime through
`SimPod.configure` (the `/sim/config` endpoint).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import orjson

METRICS_FAULTS = ("slow", "garbage")


@dataclass(frozen=True, slots=True)
class KvEventsConfig:
    """vLLM's `KVEventsConfig` (`vllm/config/kv_events.py`), from the same JSON flag."""

    enable_kv_cache_events: bool = False
    publisher: str | None = None  # None: "zmq" when events are enabled, else "null"
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    max_queue_size: int = 100_000
    topic: str = ""

    @property
    def active(self) -> bool:
        kind = self.publisher or ("zmq" if self.enable_kv_cache_events else "null")
        return self.enable_kv_cache_events and kind == "zmq"

    @classmethod
    def parse(cls, text: str) -> KvEventsConfig:
        """The `--kv-events-config` JSON; ValueError naming what is wrong."""
        try:
            raw = orjson.loads(text)
        except orjson.JSONDecodeError as e:
            raise ValueError(f"--kv-events-config is not JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ValueError("--kv-events-config must be a JSON object")
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"--kv-events-config: unknown keys {sorted(unknown)}")
        kinds = {"enable_kv_cache_events": bool, "buffer_steps": int, "hwm": int,
                 "max_queue_size": int, "endpoint": str, "topic": str}  # fmt: skip
        for key, kind in kinds.items():
            value = raw.get(key, kind())
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"--kv-events-config: {key} must be a {kind.__name__}")
        if raw.get("publisher") not in (None, "zmq", "null"):
            raise ValueError("--kv-events-config: publisher must be 'zmq' or 'null'")
        replay = raw.get("replay_endpoint")
        if replay is not None and not isinstance(replay, str):
            raise ValueError("--kv-events-config: replay_endpoint must be a string or null")
        return cls(**raw)


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
    kv_events: KvEventsConfig | None = None  # vLLM --kv-events-config
    tokenizer: str | None = None  # folder with tokenizer.json (None: 4 bytes of text a token)
    hash_algo: str = "sha256"  # vLLM --prefix-caching-hash-algo
    hash_seed: str | None = None  # vLLM reads PYTHONHASHSEED (None: random, unmatchable)

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
