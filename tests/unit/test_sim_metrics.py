"""The simulator's /metrics and DCGM pages parse with prometheus_client, with vLLM's names."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from epp.sim.driver import ManualDriver
from epp.sim.engine import Seq
from epp.sim.metrics import GARBAGE, render_dcgm, render_vllm, restrict
from epp.sim.pod import SimPod
from epp.sim.spec import SimPodSpec
from tests.sim_hashes import block_hashes

MODEL = 'org/model "v2"'


def busy_pod(**spec: object) -> tuple[SimPod, float]:
    pod = SimPod(SimPodSpec("127.0.0.2", 8000, "pod-0", model=MODEL, loras=("a", "b"), **spec))  # type: ignore[arg-type]
    driver = ManualDriver(pod.engine)
    for i in range(6):
        prompt = b"x" * 400 + bytes([i]) * 40
        adapter = (None, "a", "b")[i % 3]
        hashes = block_hashes(prompt, 110, 16, adapter or "")
        driver.submit_at(0.0, Seq(f"r{i}", 110, 400 + i, hashes, adapter))
    driver.run(until=1.0)
    return pod, driver.run(until=1.2)


def families(text: bytes) -> dict[str, list[Sample]]:
    return {f.name: f.samples for f in text_string_to_metric_families(text.decode())}


def one(samples: list[Sample], name: str) -> Sample:
    (s,) = [s for s in samples if s.name == name]
    return s


def test_vllm_page_parses_with_names_and_labels() -> None:
    pod, now = busy_pod(max_loras=1, legacy_metrics=True)
    fams = families(render_vllm(pod, now, 1700000000.5))
    base = {"model_name": MODEL, "engine": "0"}
    for gauge in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:gpu_cache_usage_perc",
    ):
        assert fams[gauge][0].labels == base, gauge
    running = fams["vllm:num_requests_running"][0].value
    waiting = fams["vllm:num_requests_waiting"][0].value
    assert running + waiting == 6 and waiting > 0  # one LoRA slot: other adapters wait
    assert 0 < fams["vllm:gpu_cache_usage_perc"][0].value < 1
    assert "vllm:kv_cache_usage_perc" not in fams  # older vLLM had only the old name
    lora = fams["vllm:lora_requests_info"][0]
    step = pod.engine.stats.last_step_at
    assert step is not None and 0 < now - step < 0.1
    assert lora.value == 1700000000.5 - (now - step)  # the wall time of the engine's last step
    assert lora.labels["max_lora"] == "1"
    assert lora.labels["running_lora_adapters"] in ("a", "b")
    assert "waiting_lora_adapters" in lora.labels
    cache = fams["vllm:cache_config_info"][0].labels
    assert cache["block_size"] == "16" and cache["num_gpu_blocks"] == "7400"
    assert one(fams["vllm:prefix_cache_queries"], "vllm:prefix_cache_queries_total").value > 0
    assert "vllm:prefix_cache_hits" in fams
    assert one(fams["vllm:prompt_tokens"], "vllm:prompt_tokens_total").value > 0
    assert one(fams["vllm:generation_tokens"], "vllm:generation_tokens_total").value > 0
    for hist in (
        "vllm:time_to_first_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:inter_token_latency_seconds",
    ):
        samples = fams[hist]
        count = one(samples, hist + "_count")
        inf = [s for s in samples if s.name == hist + "_bucket" and s.labels["le"] == "+Inf"]
        assert inf[0].value == count.value and count.labels == base
    assert (
        one(
            fams["vllm:time_to_first_token_seconds"], "vllm:time_to_first_token_seconds_count"
        ).value
        >= 2
    )
    success = {s.labels["finished_reason"]: s.value for s in fams["vllm:request_success"]}
    assert success["length"] == 0 and success["abort"] == 0


def test_fake_metrics_override_the_engine() -> None:
    pod, now = busy_pod()
    pod.set_fake_metrics(waiting=10, running=3, kv_usage=0.9)
    fams = families(render_vllm(pod, now, 0.0))
    assert fams["vllm:num_requests_waiting"][0].value == 10
    assert fams["vllm:num_requests_running"][0].value == 3
    assert fams["vllm:kv_cache_usage_perc"][0].value == 0.9
    assert "vllm:gpu_cache_usage_perc" not in fams


def test_dcgm_page() -> None:
    busy, now = busy_pod()
    idle = SimPod(SimPodSpec("127.0.0.3", 8000, "pod-1", profile="L4"))
    fams = families(render_dcgm([busy, idle], now))
    util = {s.labels["pod"]: s.value for s in fams["DCGM_FI_DEV_GPU_UTIL"]}
    assert util == {"pod-0": 100, "pod-1": 0}
    used = {s.labels["pod"]: s.value for s in fams["DCGM_FI_DEV_FB_USED"]}
    free = {s.labels["pod"]: s.value for s in fams["DCGM_FI_DEV_FB_FREE"]}
    assert used["pod-1"] + free["pod-1"] == idle.profile.memory_mib
    assert used["pod-0"] > busy.profile.weights_mib
    assert fams["DCGM_FI_DEV_GPU_UTIL"][1].labels["modelName"] == "NVIDIA L4"


def test_garbage_does_not_parse_as_vllm() -> None:
    try:
        names = {f.name for f in text_string_to_metric_families(GARBAGE.decode())}
    except ValueError:
        names = set()
    assert "vllm:num_requests_waiting" not in names


def test_a_page_restricted_to_named_samples_as_prometheus_client_serves_it() -> None:
    pod, now = busy_pod()
    names = ["vllm:num_requests_running", "vllm:inter_token_latency_seconds_count", "nothing"]
    page = restrict(render_vllm(pod, now, 0.0), names)
    found = {s.name for fam in text_string_to_metric_families(page.decode()) for s in fam.samples}
    assert found == {"vllm:num_requests_running", "vllm:inter_token_latency_seconds_count"}
    assert page.count(b"# TYPE") == 2  # each kept family keeps its HELP and TYPE lines
    assert restrict(render_vllm(pod, now, 0.0), ["nothing"]) == b""


def test_an_idle_pods_page_is_the_same_from_one_scrape_to_the_next() -> None:
    """vLLM stamps `vllm:lora_requests_info` only when its engine steps: an idle pod's page
    stays byte-identical (the EPP's scraper skips parsing a page it has seen)."""
    pod = SimPod(SimPodSpec("127.0.0.2", 8000, "pod-0", model=MODEL, loras=("a",), max_loras=1))
    driver = ManualDriver(pod.engine)
    before_any_step = render_vllm(pod, 0.5, 1700000000.5)
    assert render_vllm(pod, 3.0, 1700000003.0) == before_any_step
    driver.submit_at(1.0, Seq("r0", 4, 40, block_hashes(b"y" * 40, 40, 16, "a"), "a"))
    end = driver.run(until=5.0)
    step = pod.engine.stats.last_step_at
    assert step is not None and 1.0 < step <= end
    page = render_vllm(pod, 6.0, 1700000006.0)
    assert page != before_any_step
    lora = families(page)["vllm:lora_requests_info"][0]
    assert lora.value == 1700000006.0 - (6.0 - step)
    assert render_vllm(pod, 9.0, 1700000009.0) == page  # idle again: nothing moves
