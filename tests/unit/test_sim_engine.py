"""Engine on a fake clock: prefix caching, queueing, KV pressure, preemption, LoRA, speed."""

from __future__ import annotations

import dataclasses
import math

import pytest

from epp.sim.driver import ManualDriver
from epp.sim.engine import FINISHED, Engine, EngineConfig, Seq
from epp.sim.profiles import get_profile
from tests.sim_hashes import block_hashes

H100 = get_profile("H100")


def seq(rid: str, prompt: bytes, max_tokens: int, adapter: str | None = None) -> Seq:
    tokens = -(-len(prompt) // 4)
    return Seq(rid, tokens, max_tokens, block_hashes(prompt, tokens, 16, adapter or ""), adapter)


def text(tokens: int, tag: str = "a") -> bytes:
    """A prompt of exactly `tokens` tokens whose content depends on `tag`."""
    unit = (tag * 4).encode()[:4]
    return b"".join(unit + i.to_bytes(4, "little")[:0] for i in range(tokens))


def unique(tokens: int, seed: int) -> bytes:
    return b"".join(((seed * 1_000_003 + i) % 2**32).to_bytes(4, "little") for i in range(tokens))


def ttft(s: Seq) -> float:
    assert s.first_token_at is not None
    return s.first_token_at - s.arrival


def two_sharing_a_prefix(max_tokens: int) -> tuple[Engine, ManualDriver, Seq, Seq]:
    """Two 2,048-token prompts sharing their first 2,000 tokens, arriving at 0 s and 1 s."""
    engine = Engine(EngineConfig(profile=H100))
    driver = ManualDriver(engine)
    shared = unique(2000, 1)
    first = seq("a", shared + unique(48, 2), max_tokens)
    second = seq("b", shared + unique(48, 3), max_tokens)
    driver.submit_at(0.0, first)
    driver.submit_at(1.0, second)
    return engine, driver, first, second


def test_repeated_long_prefix_skips_its_prefill() -> None:
    engine, driver, first, second = two_sharing_a_prefix(1)
    driver.run()
    assert ttft(first) == pytest.approx(H100.step_time(2048, 0, 0))
    # 125 full blocks (2000 tokens) are cached: only 48 tokens are computed, over 2000 of context
    assert second.cached_tokens == 2000
    assert ttft(second) == pytest.approx(H100.step_time(48, 0, 2000))
    saved = ttft(first) - ttft(second)
    assert saved == pytest.approx(2000 * H100.prefill_token_s - 2000 * H100.kv_token_s)
    assert engine.stats.prefix_hits == 2000
    assert engine.stats.prefix_queries == 4096


def test_fully_cached_prompt_still_computes_its_last_block() -> None:
    engine = Engine(EngineConfig(profile=H100))
    driver = ManualDriver(engine)
    prompt = unique(64, 7)
    driver.submit_at(0.0, seq("a", prompt, 1))
    again = seq("b", prompt, 1)
    driver.submit_at(1.0, again)
    driver.run()
    assert again.cached_tokens == 48


def test_queue_and_kv_grow_past_capacity_then_drain() -> None:
    config = EngineConfig(profile=H100, num_gpu_blocks=128, max_num_seqs=4)
    engine = Engine(config)
    driver = ManualDriver(engine)
    seqs = [seq(f"r{i}", unique(256, i), 64) for i in range(20)]
    for s in seqs:
        driver.submit_at(0.0, s)
    driver.run(until=0.05)
    assert len(engine.waiting) == 16
    assert len(engine.running) == 4
    assert engine.kv.usage() == pytest.approx(4 * 17 / 128)
    end = driver.run()
    assert all(s.status == FINISHED and s.generated == 64 for s in seqs)
    assert not engine.waiting and not engine.running
    assert engine.kv.usage() == 0.0
    assert engine.stats.queue.count == 20
    assert end > 4 * 64 * H100.base_step_s


def test_preemption_when_kv_blocks_run_out() -> None:
    engine = Engine(EngineConfig(profile=H100, num_gpu_blocks=16))
    driver = ManualDriver(engine)
    seqs = [seq(f"r{i}", unique(32, i), 100) for i in range(4)]
    for s in seqs:
        driver.submit_at(0.0, s)
    driver.run(until=0.01)
    assert len(engine.running) == 4  # 2 blocks each at first
    driver.run()
    assert engine.stats.preemptions > 0
    assert sum(s.preemptions for s in seqs) == engine.stats.preemptions
    assert all(s.status == FINISHED and s.generated == 100 for s in seqs)
    assert engine.kv.num_free == 16


def test_adapter_swap_delays_the_request_by_the_load_cost() -> None:
    config = EngineConfig(profile=H100, max_loras=1, lora_load_s=0.05)
    prompt = unique(100, 5)
    base, lora_a, lora_b = (
        seq("base", prompt, 1),
        seq("a", prompt, 1, "a"),
        seq("b", prompt, 1, "b"),
    )
    engine = Engine(config)
    driver = ManualDriver(engine)
    driver.submit_at(0.0, base)
    driver.submit_at(1.0, lora_a)
    driver.submit_at(2.0, lora_b)
    again_a = seq("a2", unique(100, 6), 1, "a")
    driver.submit_at(3.0, again_a)
    driver.run()
    assert ttft(lora_a) - ttft(base) == pytest.approx(0.05)
    assert ttft(lora_b) - ttft(base) == pytest.approx(0.05)  # one slot: b evicts a
    assert ttft(again_a) - ttft(base) == pytest.approx(0.05)  # and a comes back
    assert engine.stats.lora_loads == 3


def test_adapter_without_a_free_slot_waits_for_the_running_one() -> None:
    engine = Engine(EngineConfig(profile=H100, max_loras=1, lora_load_s=0.01))
    driver = ManualDriver(engine)
    a = seq("a", unique(32, 1), 10, "a")
    b = seq("b", unique(32, 2), 10, "b")
    driver.submit_at(0.0, a)
    driver.submit_at(0.0, b)
    driver.run(until=0.02)
    assert engine.running == [a]
    assert engine.waiting_adapters() == ["b"]
    driver.run()
    assert b.scheduled_at is not None and a.finished_at is not None
    assert b.scheduled_at >= a.finished_at


def run_workload(speed: float) -> list[Seq]:
    engine = Engine(EngineConfig(profile=get_profile("A100-80G"), speed=speed))
    driver = ManualDriver(engine)
    seqs = [seq(f"r{i}", unique(300 + 10 * i, i), 50 + i) for i in range(8)]
    for i, s in enumerate(seqs):
        driver.submit_at(i * 0.1 / speed, s)
    driver.run()
    return seqs


def test_half_speed_pod_takes_twice_as_long() -> None:
    fast, slow = run_workload(1.0), run_workload(0.5)
    for f, s in zip(fast, slow, strict=True):
        assert f.finished_at is not None and s.finished_at is not None
        assert s.finished_at - s.arrival == pytest.approx(2 * (f.finished_at - f.arrival))
        assert ttft(s) == pytest.approx(2 * ttft(f))


def test_runs_are_deterministic() -> None:
    a, b = run_workload(1.0), run_workload(1.0)
    assert [s.finished_at for s in a] == [s.finished_at for s in b]


def test_chunked_prefill_splits_a_long_prompt_over_steps() -> None:
    config = EngineConfig(profile=H100, max_num_batched_tokens=2048, max_model_len=8192)
    engine = Engine(config)
    driver = ManualDriver(engine)
    s = seq("long", unique(5000, 9), 2)
    driver.submit_at(0.0, s)
    driver.run()
    expected = (
        H100.step_time(2048, 0, 0) + H100.step_time(2048, 0, 2048) + H100.step_time(904, 0, 4096)
    )
    assert ttft(s) == pytest.approx(expected)
    assert engine.stats.steps == 4


def test_decode_step_time_grows_with_batch_and_context() -> None:
    engine = Engine(EngineConfig(profile=H100))
    driver = ManualDriver(engine)
    seqs = [seq(f"r{i}", unique(160, i), 3) for i in range(4)]
    for s in seqs:
        driver.submit_at(0.0, s)
    driver.run()
    # step 1 prefills 640 tokens; steps 2 and 3 decode 4 sequences over 160 and 161 tokens each
    assert ttft(seqs[0]) == pytest.approx(H100.step_time(640, 0, 0))
    assert seqs[0].first_token_at is not None and seqs[0].finished_at is not None
    decode = H100.step_time(0, 4, 4 * 160) + H100.step_time(0, 4, 4 * 161)
    assert seqs[0].finished_at - seqs[0].first_token_at == pytest.approx(decode)
    assert engine.stats.itl.count == 8


def test_abort_frees_blocks_and_utilization_reflects_busy_time() -> None:
    engine = Engine(EngineConfig(profile=H100, num_gpu_blocks=32))
    driver = ManualDriver(engine)
    s = seq("a", unique(64, 1), 400)
    driver.submit_at(0.0, s)
    driver.run(until=0.5)
    assert engine.kv.usage() > 0
    assert engine.utilization(driver.now, window=0.4) == pytest.approx(1.0, abs=0.02)
    engine.abort(s)
    assert engine.kv.usage() == 0.0
    assert engine.stats.finished["abort"] == 1
    end = driver.run()
    assert s.generated < 400
    assert engine.utilization(end + 10, window=1.0) == 0.0


def test_submit_rejects_requests_larger_than_the_cache() -> None:
    engine = Engine(EngineConfig(profile=H100, num_gpu_blocks=4))
    with pytest.raises(ValueError, match="exceed"):
        engine.submit(seq("big", unique(60, 1), 10), 0.0)


def test_step_floor_applies_after_speed() -> None:
    config = dataclasses.replace(EngineConfig(profile=H100), speed=1000.0, min_step_s=0.001)
    engine = Engine(config)
    engine.submit(seq("a", unique(8, 1), 1), 0.0)
    d = engine.plan_step(0.0)
    assert d is not None and math.isclose(d, 0.001)


def test_prompt_and_prefill_figures_are_counted_when_vllm_counts_them() -> None:
    """vLLM v1 counts a prompt's tokens at its first token, and observes its prefill time and
    the tokens it computed when it finishes; cache hits when it is scheduled."""
    engine, driver, first, second = two_sharing_a_prefix(200)
    st = engine.stats
    driver.run(until=0.5)  # the first has its first token, and is still decoding
    assert first.first_token_at is not None and first.status != FINISHED
    assert st.prompt_tokens == 2048
    assert st.prefill.count == 0 and st.prefill_computed.count == 0
    driver.run()
    assert st.prompt_tokens == 2 * 2048
    assert st.prefill.count == 2 and st.prefill_computed.count == 2
    # the first computed its whole prompt, the second only what its cached prefix left
    assert st.prefill_computed.sum == 2048 + 48
    prefills = [s.first_token_at - s.scheduled_at for s in (first, second)]  # type: ignore[operator]
    assert st.prefill.sum == pytest.approx(sum(prefills))
