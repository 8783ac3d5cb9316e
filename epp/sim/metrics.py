"""Prometheus text of a simulated pod, under vLLM's metric names, and of its fake DCGM exporter.

`render_vllm` is what a pod's `/metrics` returns (gauges, counters and histograms labelled
`model_name` and `engine`, fixed "fake" values applied); `render_dcgm` is the exporter page
listing per pod `DCGM_FI_DEV_GPU_UTIL` (busy share of the last second), framebuffer use, SM
clock, temperature, clock-event reasons, violation counters and the last XID error.
Rendered by hand: the EPP scrapes every pod many times a second, so this stays cheap.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING

from epp.sim.stats import Histogram

if TYPE_CHECKING:
    from epp.sim.pod import SimPod

GARBAGE = b"this is { not prometheus\nvllm:num_requests_waiting{model_name= 12 zz\n\x00\x01\n"
GPU_NAMES = {
    "H100": "NVIDIA H100 80GB HBM3",
    "A100-80G": "NVIDIA A100-SXM4-80GB",
    "A100-40G": "NVIDIA A100-SXM4-40GB",
    "L4": "NVIDIA L4",
    "T4": "Tesla T4",
    "MIG-1g.10gb": "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
}


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in pairs) + "}"


def _num(v: float) -> str:
    return repr(float(v))


class _Page:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: str, value: float) -> None:
        self.lines.append(f"{name}{labels} {_num(value)}")

    def gauge(self, name: str, help_: str, labels: str, value: float) -> None:
        self.family(name, "gauge", help_)
        self.sample(name, labels, value)

    def counter(self, name: str, help_: str, labels: str, value: float) -> None:
        self.family(name + "_total", "counter", help_)  # prometheus_client's 0.0.4 spelling
        self.sample(name + "_total", labels, value)

    def histogram(
        self, name: str, help_: str, base: Sequence[tuple[str, str]], h: Histogram
    ) -> None:
        self.family(name, "histogram", help_)
        for bound, total in h.cumulative():
            le = "+Inf" if bound == float("inf") else repr(float(bound))
            self.sample(name + "_bucket", _labels((*base, ("le", le))), total)
        labels = _labels(base)
        self.sample(name + "_sum", labels, h.sum)
        self.sample(name + "_count", labels, h.count)

    def text(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode()


def render_vllm(pod: SimPod, now: float, wall: float) -> bytes:
    """The pod's /metrics page; `now` is the loop clock, `wall` the epoch time (LoRA info is
    stamped with the wall time of the engine's last step, as vLLM does)."""
    eng, spec, fake, st = pod.engine, pod.spec, pod.fake, pod.engine.stats
    base = (("engine", "0"), ("model_name", spec.model))
    lb = _labels(base)
    running = len(eng.running) if fake.running is None else fake.running
    waiting = len(eng.waiting) if fake.waiting is None else fake.waiting
    kv = eng.kv.usage() if fake.kv_usage is None else fake.kv_usage
    p = _Page()
    p.gauge("vllm:num_requests_running", "Number of requests in model execution batches.", lb,
            running)  # fmt: skip
    p.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", lb,
            waiting)  # fmt: skip
    if spec.legacy_metrics:
        p.gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.",
                lb, kv)  # fmt: skip
    else:
        p.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", lb, kv)
    lora = (
        *base,
        ("max_lora", str(spec.max_loras)),
        ("running_lora_adapters", ",".join(eng.running_adapters())),
        ("waiting_lora_adapters", ",".join(eng.waiting_adapters())),
    )
    p.gauge("vllm:lora_requests_info", "Running stats on lora requests.", _labels(lora),
            pod.lora_info_time(now, wall))  # fmt: skip
    cache = (
        ("block_size", str(eng.block_size)),
        ("cache_dtype", "auto"),
        ("enable_prefix_caching", str(spec.prefix_caching)),
        ("engine", "0"),
        ("gpu_memory_utilization", "0.9"),
        ("num_gpu_blocks", str(eng.kv.num_blocks)),
    )
    p.gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", _labels(cache),
            1)  # fmt: skip
    p.counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", lb,
              st.preemptions)  # fmt: skip
    p.counter("vllm:prompt_tokens", "Number of prefill tokens processed.", lb, st.prompt_tokens)
    p.counter("vllm:generation_tokens", "Number of generation tokens processed.", lb,
              st.generation_tokens)  # fmt: skip
    p.counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried "
              "tokens.", lb, st.prefix_queries)  # fmt: skip
    p.counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
              lb, st.prefix_hits)  # fmt: skip
    p.family("vllm:request_success_total", "counter", "Count of successfully processed requests.")
    for reason in ("stop", "length", "abort"):
        labels = _labels((*base, ("finished_reason", reason)))
        p.sample("vllm:request_success_total", labels, st.finished[reason])
    p.histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in "
                "seconds.", base, st.ttft)  # fmt: skip
    p.histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in "
                "seconds.", base, st.e2e)  # fmt: skip
    p.histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase "
                "for request.", base, st.queue)  # fmt: skip
    p.histogram("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase "
                "for request.", base, st.prefill)  # fmt: skip
    p.histogram("vllm:request_prefill_kv_computed_tokens", "Histogram of new KV tokens computed "
                "during prefill (excluding cached tokens).", base, st.prefill_computed)  # fmt: skip
    p.histogram("vllm:request_generation_tokens", "Number of generation tokens processed.", base,
                st.generation)  # fmt: skip
    p.histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in "
                "seconds.", base, st.itl)  # fmt: skip
    return p.text()


def restrict(page: bytes, names: Collection[str]) -> bytes:
    """Only the samples named, with their families' HELP and TYPE lines: what prometheus_client
    (and so vLLM) answers to `/metrics?name[]=...`."""
    wanted = set(names)
    out: list[bytes] = []
    family: list[bytes] = []  # the HELP/TYPE lines of the family being read
    shown = samples = False
    for line in page.split(b"\n"):
        if line.startswith(b"#"):
            if samples:  # a new family begins
                family, shown, samples = [], False, False
            family.append(line)
        elif line:
            samples = True
            end = line.find(b"{")
            if (line[:end] if end >= 0 else line.split(b" ", 1)[0]).decode() in wanted:
                if not shown:
                    out += family
                    shown = True
                out.append(line)
    return b"\n".join(out) + b"\n" if out else b""


# (name, kind, help) of the exporter's families, in the order and words of dcgm-exporter's
# default counters (etc/default-counters.csv)
DCGM_FAMILIES = (
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz)."),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB)."),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered."),
    ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "gauge", "Current clock event reasons (bit mask)."),
    ("DCGM_FI_DEV_POWER_VIOLATION", "counter",
     "Throttling duration due to power constraints (in us)."),
    ("DCGM_FI_DEV_THERMAL_VIOLATION", "counter",
     "Throttling duration due to thermal constraints (in us)."),
)  # fmt: skip


def render_dcgm(pods: Sequence[SimPod], now: float) -> bytes:
    """A DCGM exporter page: one GPU per pod, labelled with the pod it is attached to, with its
    utilization, framebuffer, clocks, temperature and health families (`epp.sim.gpu`)."""
    values: dict[str, list[str]] = {name: [] for name, _, _ in DCGM_FAMILIES}
    for i, pod in enumerate(pods):
        prof = pod.profile
        labels = _labels(
            (
                ("gpu", str(i)),
                ("UUID", f"GPU-sim-{pod.name}"),
                ("device", f"nvidia{i}"),
                ("modelName", GPU_NAMES.get(prof.name, prof.name)),
                ("Hostname", "epp-sim"),
                ("container", "vllm"),
                ("namespace", "default"),
                ("pod", pod.name),
            )
        )
        util = pod.engine.utilization(now)
        kv_mib = (prof.memory_mib - prof.weights_mib) * pod.engine.kv.usage()
        fb_used = prof.weights_mib + kv_mib
        gpu = pod.gpu
        thermal_us, power_us = gpu.violation_us(now)
        for name, value in (
            ("DCGM_FI_DEV_SM_CLOCK", gpu.sm_clock(util)),
            ("DCGM_FI_DEV_GPU_TEMP", round(gpu.temperature(util))),
            ("DCGM_FI_DEV_GPU_UTIL", round(util * 100)),
            ("DCGM_FI_DEV_FB_FREE", round(prof.memory_mib - fb_used)),
            ("DCGM_FI_DEV_FB_USED", round(fb_used)),
            ("DCGM_FI_DEV_XID_ERRORS", gpu.xid()),
            ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", gpu.reasons(util)),
            ("DCGM_FI_DEV_POWER_VIOLATION", round(power_us)),
            ("DCGM_FI_DEV_THERMAL_VIOLATION", round(thermal_us)),
        ):
            values[name].append(f"{name}{labels} {value}")
    p = _Page()
    for name, kind, help_ in DCGM_FAMILIES:
        p.family(name, kind, help_)
        p.lines.extend(values[name])
    return p.text()
