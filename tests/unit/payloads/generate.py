"""Regenerate the captured /metrics pages in this folder (run: .venv/bin/python generate.py).

The pages are written with prometheus_client, as vLLM and SGLang do, using the metric names,
labels and histogram buckets of the real servers (vLLM 0.6 for v0, vLLM 0.11/0.12 with two data
parallel engines for v1, SGLang 0.5, trtllm-serve 1.0, Triton 25.x TensorRT-LLM backend). Values
are fixed by a seeded RNG; the parser tests assert the numbers written below. Not used by tests
at run time: the files are checked in.
"""

from __future__ import annotations

import random
from pathlib import Path

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

HERE = Path(__file__).parent
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
TTFT: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
)
TTFT += (10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
ITL += (20.0, 40.0, 80.0)
E2E: tuple[float, ...] = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
)
E2E += (120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
TOKENS: tuple[float, ...] = (
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1000,
    2000,
    5000,
    10000,
    20000,
    50000,
    100000,
)
HTTP: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    2.5,
    3.0,
    3.5,
    4.0,
)
HTTP += (4.5, 5.0, 7.5, 10.0, 30.0, 60.0)


def _observe(rng: random.Random, h: Histogram, labels: tuple[str, ...], scale: float) -> None:
    child = h.labels(*labels)
    for _ in range(rng.randint(20, 60)):
        child.observe(rng.expovariate(1 / scale))


def _http(reg: CollectorRegistry, rng: random.Random) -> None:
    c = Counter(
        "http_requests", "Total HTTP requests", ["handler", "method", "status"], registry=reg
    )
    h = Histogram("http_request_duration_highr_seconds", "Latency", registry=reg, buckets=HTTP)
    d = Histogram("http_request_duration_seconds", "Latency", ["handler", "method"], registry=reg)
    for handler in ("/v1/chat/completions", "/v1/completions", "/metrics", "/health"):
        c.labels(handler, "POST" if handler.startswith("/v1") else "GET", "2xx").inc(
            rng.randint(10, 9999)
        )
        _observe(rng, d, (handler, "POST"), 0.5)
    for _ in range(100):
        h.observe(rng.expovariate(2.0))


def _vllm_histograms(
    reg: CollectorRegistry, rng: random.Random, engines: tuple[str, ...], v1: bool
) -> None:
    names = [
        ("vllm:time_to_first_token_seconds", TTFT, 0.2),
        ("vllm:e2e_request_latency_seconds", E2E, 5.0),
        ("vllm:request_queue_time_seconds", E2E, 0.5),
        ("vllm:request_prefill_time_seconds", E2E, 0.3),
        ("vllm:request_decode_time_seconds", E2E, 4.0),
        ("vllm:request_prompt_tokens", TOKENS, 800.0),
        ("vllm:request_generation_tokens", TOKENS, 200.0),
        ("vllm:request_params_max_tokens", TOKENS, 500.0),
    ]
    names.append(
        ("vllm:inter_token_latency_seconds", ITL, 0.03)
        if v1
        else ("vllm:time_per_output_token_seconds", ITL, 0.03)
    )
    labels = ["model_name", "engine"] if v1 else ["model_name"]
    for name, buckets, scale in names:
        h = Histogram(name, name, labels, registry=reg, buckets=buckets)
        for e in engines:
            _observe(rng, h, (MODEL, e) if v1 else (MODEL,), scale)


def vllm_v0() -> bytes:
    rng = random.Random(0)
    reg = CollectorRegistry()
    _http(reg, rng)
    g = {
        n: Gauge(n, n, ["model_name"], registry=reg)
        for n in (
            "vllm:num_requests_running",
            "vllm:num_requests_swapped",
            "vllm:num_requests_waiting",
            "vllm:gpu_cache_usage_perc",
            "vllm:cpu_cache_usage_perc",
            "vllm:avg_prompt_throughput_toks_per_s",
            "vllm:avg_generation_throughput_toks_per_s",
        )
    }
    for n, v in {
        "vllm:num_requests_running": 7,
        "vllm:num_requests_swapped": 0,
        "vllm:num_requests_waiting": 3,
        "vllm:gpu_cache_usage_perc": 0.4375,
        "vllm:cpu_cache_usage_perc": 0.0,
        "vllm:avg_prompt_throughput_toks_per_s": 1234.5,
        "vllm:avg_generation_throughput_toks_per_s": 310.2,
    }.items():
        g[n].labels(MODEL).set(v)
    info = Gauge(
        "vllm:cache_config_info",
        "Information of the LLMEngine CacheConfig",
        [
            "block_size",
            "cache_dtype",
            "cpu_offload_gb",
            "enable_prefix_caching",
            "gpu_memory_utilization",
            "num_cpu_blocks",
            "num_gpu_blocks",
            "num_gpu_blocks_override",
            "sliding_window",
            "swap_space_bytes",
        ],
        registry=reg,
    )
    info.labels("16", "auto", "0", "True", "0.9", "2048", "7281", "None", "None", "4294967296").set(
        1
    )
    lora = Gauge(
        "vllm:lora_requests_info",
        "Running stats on lora requests.",
        ["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
        registry=reg,
    )
    lora.labels("4", "", "").set(1_730_000_000.125)
    lora.labels("4", "sql-lora", "").set(1_730_000_010.5)
    lora.labels("4", "sql-lora, tweet-lora", "french-lora").set(1_730_000_020.75)
    lora.labels("4", "tweet-lora", "").set(1_730_000_015.0)
    for n in ("vllm:prompt_tokens", "vllm:generation_tokens", "vllm:num_preemptions"):
        Counter(n, n, ["model_name"], registry=reg).labels(MODEL).inc(rng.randint(1, 10**6))
    _vllm_histograms(reg, rng, ("",), v1=False)
    return generate_latest(reg)


def vllm_v1(engines: tuple[str, ...] = ("0", "1")) -> bytes:
    rng = random.Random(1)
    reg = CollectorRegistry()
    _http(reg, rng)
    per_engine = {
        "vllm:num_requests_running": (5, 6),
        "vllm:num_requests_waiting": (2, 9),
        "vllm:kv_cache_usage_perc": (0.25, 0.75),
        "vllm:engine_sleep_state": (0, 0),
    }
    for n, values in per_engine.items():
        g = Gauge(n, n, ["model_name", "engine"], registry=reg)
        for e, v in zip(engines, values, strict=False):
            g.labels(MODEL, e).set(v)
    reason = Gauge(
        "vllm:num_requests_waiting_by_reason", "w", ["model_name", "engine", "reason"], registry=reg
    )
    for e in engines:
        reason.labels(MODEL, e, "capacity").set(1)
        reason.labels(MODEL, e, "deferred").set(0)
    info = Gauge(
        "vllm:cache_config_info",
        "Information of the LLMEngine CacheConfig",
        [
            "block_size",
            "cache_dtype",
            "enable_prefix_caching",
            "engine",
            "gpu_memory_utilization",
            "num_gpu_blocks",
            "prefix_caching_hash_algo",
        ],
        registry=reg,
    )
    for e in engines:
        info.labels("16", "auto", "True", e, "0.9", "27000", "sha256").set(1)
    lora = Gauge(
        "vllm:lora_requests_info",
        "Running stats on lora requests.",
        ["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
        registry=reg,
    )
    lora.labels("8", "sql-lora", "").set(1_790_000_000.0)
    lora.labels("8", "sql-lora,tweet-lora", "chat-lora").set(1_790_000_050.0)
    for n in (
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
        "vllm:num_preemptions",
        "vllm:prompt_tokens",
        "vllm:generation_tokens",
    ):
        c = Counter(n, n, ["model_name", "engine"], registry=reg)
        for e in engines:
            c.labels(MODEL, e).inc(rng.randint(1, 10**7))
    succ = Counter(
        "vllm:request_success", "s", ["model_name", "engine", "finished_reason"], registry=reg
    )
    for e in engines:
        for reason_name in ("stop", "length", "abort"):
            succ.labels(MODEL, e, reason_name).inc(rng.randint(0, 5000))
    _vllm_histograms(reg, rng, engines, v1=True)
    return generate_latest(reg)


def sglang() -> bytes:
    rng = random.Random(2)
    reg = CollectorRegistry()
    labels = ["dp_rank", "engine_type", "model_name", "pp_rank", "tp_rank"]
    values = {
        "sglang:num_running_reqs": (4, 11),
        "sglang:num_queue_reqs": (1, 2),
        "sglang:num_used_tokens": (50000, 90000),
        "sglang:token_usage": (0.3, 0.5),
        "sglang:gen_throughput": (812.5, 640.1),
        "sglang:cache_hit_rate": (0.61, 0.58),
        "sglang:spec_accept_length": (0.0, 0.0),
    }
    for n, vals in values.items():
        g = Gauge(n, n, labels, registry=reg)
        for rank, v in enumerate(vals):
            g.labels(str(rank), "unified", MODEL, "0", "0").set(v)
    info = Gauge("sglang:cache_config_info", "c", ["num_pages", "page_size"], registry=reg)
    info.labels("180000", "1").set(1)
    for n in ("sglang:prompt_tokens", "sglang:generation_tokens", "sglang:num_requests"):
        Counter(n, n, labels, registry=reg).labels("0", "unified", MODEL, "0", "0").inc(
            rng.randint(1, 10**6)
        )
    for n, b, s in (
        ("sglang:time_to_first_token_seconds", TTFT, 0.2),
        ("sglang:e2e_request_latency_seconds", E2E, 4.0),
        ("sglang:inter_token_latency_seconds", ITL, 0.02),
    ):
        h = Histogram(n, n, labels, registry=reg, buckets=b)
        _observe(rng, h, ("0", "unified", MODEL, "0", "0"), s)
    return generate_latest(reg)


def trtllm_serve() -> bytes:
    rng = random.Random(3)
    reg = CollectorRegistry()
    labels = ["engine_type", "model_name"]
    for n, v in {
        "trtllm_num_requests_running": 6,
        "trtllm_num_requests_waiting": 4,
        "trtllm_kv_cache_utilization": 0.625,
        "trtllm_kv_cache_hit_rate": 0.4,
        "trtllm_kv_cache_tokens_per_block": 32,
        "trtllm_kv_cache_max_blocks": 4096,
        "trtllm_kv_cache_used_blocks": 2560,
    }.items():
        Gauge(n, n, labels, registry=reg).labels("trtllm", MODEL).set(v)
    succ = Counter("trtllm_request_success", "s", [*labels, "finished_reason"], registry=reg)
    succ.labels("trtllm", MODEL, "stop").inc(4242)
    for n, b, s in (
        ("trtllm_time_to_first_token_seconds", TTFT, 0.1),
        ("trtllm_e2e_request_latency_seconds", E2E, 3.0),
        ("trtllm_time_per_output_token_seconds", ITL, 0.01),
        ("trtllm_request_queue_time_seconds", E2E, 0.2),
    ):
        _observe(rng, Histogram(n, n, labels, registry=reg, buckets=b), ("trtllm", MODEL), s)
    return generate_latest(reg)


def triton() -> bytes:
    reg = CollectorRegistry()
    for n in ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count"):
        c = Counter(n, n, ["model", "version"], registry=reg)
        for m in ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing"):
            c.labels(m, "1").inc(1000)
    req = Gauge(
        "nv_trt_llm_request_metrics", "TRT LLM request metrics",
        ["model", "request_type", "version"], registry=reg,
    )  # fmt: skip
    for kind, v in {"active": 9, "context": 1, "max": 256, "scheduled": 8, "waiting": 5}.items():
        req.labels("tensorrt_llm", kind, "1").set(v)
    kv = Gauge(
        "nv_trt_llm_kv_cache_block_metrics", "TRT LLM KV cache block metrics",
        ["kv_cache_block_type", "model", "version"], registry=reg,
    )  # fmt: skip
    blocks: dict[str, float] = {"fraction": 0.375, "free": 2560, "max": 4096, "tokens_per": 64}
    blocks["used"] = 1536
    for kind, value in blocks.items():
        kv.labels(kind, "tensorrt_llm", "1").set(value)
    batcher = Gauge(
        "nv_trt_llm_inflight_batcher_metrics", "b",
        ["inflight_batcher_specific_metric", "model", "version"], registry=reg,
    )  # fmt: skip
    for kind in ("micro_batch_id", "generation_requests", "total_context_tokens"):
        batcher.labels(kind, "tensorrt_llm", "1").set(3)
    gpu = Gauge(
        "nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", ["gpu_uuid"], registry=reg
    )
    gpu.labels("GPU-2c1b3e4a-0d5f-4c2b-9e1f-3a7b5c6d7e8f").set(0.83)
    return generate_latest(reg)


def main() -> None:
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    pages = {
        "vllm_v0.txt": vllm_v0(),
        "vllm_v1_2engines.txt": vllm_v1(),
        "sglang.txt": sglang(),
        "trtllm_serve.txt": trtllm_serve(),
        "triton_trtllm.txt": triton(),
    }
    for name, body in pages.items():
        (HERE / name).write_bytes(body)
        print(name, len(body))


if __name__ == "__main__":
    main()
