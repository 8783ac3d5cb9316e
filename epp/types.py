"""Hot-path value types shared by every layer.

Everything here is immutable: the datastore replaces an endpoint's metrics object whole, the
scheduler reads a snapshot and never edits it. Neighbours: `epp.api` holds the resource model,
`epp.datastore` assembles these into snapshots, `epp.scheduling` consumes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from epp.hardware import HEALTH_OK, worst

ENGINE_VLLM = "vllm"
ENGINE_SGLANG = "sglang"
ENGINE_TRTLLM = "trtllm-serve"
ENGINE_TRITON = "triton-tensorrt-llm"
# characters of text per token, where a count must be estimated before any tokenizer has run
CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class EndpointMetrics:
    """What one scrape of a model server's /metrics said, plus when it was taken."""

    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0  # fraction 0..1
    max_lora: int = 0
    lora_active: frozenset[str] = frozenset()
    lora_waiting: frozenset[str] = frozenset()
    block_size: int | None = None
    num_gpu_blocks: int | None = None
    scraped_at: float = 0.0  # time.monotonic() of the scrape; 0 = never scraped
    # the engine's inter-token latency histogram: seconds between output tokens and their count,
    # cumulative since it started (None: it exports none); their growth between scrapes is its pace
    itl_seconds: float | None = None
    itl_count: float | None = None
    # the engine's prefill-time histogram (seconds in the PREFILL phase, requests) and its prompt
    # and prefix-cache-hit token counters, cumulative (None: not exported); see epp.prefill_pace
    prefill_seconds: float | None = None
    prefill_count: float | None = None
    prompt_tokens: float | None = None
    cached_tokens: float | None = None
    # the engine's histogram of prompt tokens each request computed (not found cached), `_sum`:
    # observed when a request finishes, as its prefill time is (vLLM's
    # `vllm:request_prefill_kv_computed_tokens`), so the two count the same requests
    computed_tokens: float | None = None
    # the engine's per-request output-token histogram (`_sum`, `_count`), the requests that ended
    # on their max_tokens, and the model name it counts them under (epp.answer_lengths)
    answer_tokens: float | None = None
    answers: float | None = None
    answers_at_cap: float | None = None
    answers_model: str | None = None


@dataclass(frozen=True, slots=True)
class GpuMetrics:
    """GPU utilization as Prometheus reports it for the pod (DCGM or nvidia exporter)."""

    utilization: float | None = None  # percent 0..100, None = unknown
    memory_used_fraction: float | None = None  # 0..1, None = unknown
    sampled_at: float = 0.0
    health: str = HEALTH_OK  # from DCGM's throttle reasons, temperature, XID errors (hardware)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One schedulable target: a pod address on one of its pool's target ports."""

    address: str  # "ip:port", or "[v6]:port"
    pod: str  # "namespace/name" of the pod, or the address when there is no pod
    pool: str  # "namespace/name" of the InferencePool
    labels: tuple[tuple[str, str], ...] = ()
    engine: str = ENGINE_VLLM
    accelerator: str | None = None  # node label such as nvidia-tesla-v100
    max_num_seqs: int = 0  # the server's batch size from its pod spec; 0 = not given
    # capacity prior from the hardware (1.0 = one A100-40GB; a 1g MIG slice of it 1/7): how
    # fast it serves relative to the others until its pace is measured (`epp.hardware`)
    capacity: float = 1.0
    device_health: str = HEALTH_OK  # from DRA device taints on the devices its claims hold
    # the pod's KV-event publisher and replay socket from its annotations ("tcp://host:port",
    # "tcp://*:port" or a bare port on the pod's IP); "" = the scorer's port convention
    kv_events: str = ""
    kv_events_replay: str = ""


@dataclass(frozen=True, slots=True)
class EndpointState:
    """An endpoint with its latest signals, as the scheduler sees it in one snapshot."""

    endpoint: Endpoint
    metrics: EndpointMetrics = field(default_factory=EndpointMetrics)
    gpu: GpuMetrics = field(default_factory=GpuMetrics)
    in_flight: int = 0  # requests this EPP sent and that have not finished
    in_flight_tokens: int = 0  # their estimated prompt + output tokens
    healthy: bool = True
    # concurrent requests the server runs before it queues (learned: the largest `running`
    # seen while `waiting` > 0; until then the pod spec's `--max-num-seqs`); 0 = not known yet
    limit: int = 0
    # seconds per output token the EPP measured on this endpoint's recent responses (moving
    # average); 0 = not measured yet. A slow GPU shows here before anywhere else.
    tpot: float = 0.0
    # seconds per prompt token the endpoint must compute (not cached), from its engine's prefill
    # histogram and token counters (epp.prefill_pace); 0 = not measured yet
    prefill_pace: float = 0.0
    # how much `in_flight` moved since the metrics were scraped: what the EPP started (+) or
    # ended (-) since then moves the server's scraped total at once, so a freed slot shows
    # before the next scrape
    in_flight_since_scrape: int = 0
    # how far the samples behind `tpot` stray from it (a moving mean of their absolute
    # deviation): the pace's own noise, so that a difference within it is not read as a slower
    # GPU; 0 = fewer than two samples
    tpot_spread: float = 0.0
    # prompt tokens (estimated) of the requests this EPP started less those it ended since the
    # metrics were scraped: how far the scraped KV usage moved since (`epp.admission.kv_room`)
    tokens_since_scrape: int = 0
    # the share of prompt tokens the engine recently found in its prefix cache (`epp.cache_hits`)
    cache_hit: float = 0.0

    @property
    def load(self) -> int:
        """Requests on the endpoint: the EPP's own count, or the server's last total moved by
        what the EPP started and ended since that scrape, if that says more."""
        m = self.metrics
        return max(self.in_flight, m.running + m.waiting + self.in_flight_since_scrape)

    @property
    def address(self) -> str:
        return self.endpoint.address

    @property
    def gpu_health(self) -> str:
        """The worse of the device taints' and DCGM's health classes (`epp.hardware`)."""
        return worst(self.endpoint.device_health, self.gpu.health)
