"""GPU profiles: the built-in table and time-sliced shares (`<profile>-shared-<N>`)."""

from __future__ import annotations

import pytest

from epp.sim.engine import Engine, EngineConfig, Seq
from epp.sim.profiles import get_profile


def serve_alone(profile: str, prompt: int, output: int) -> float:
    """Seconds one request takes alone on an engine of `profile` (virtual time)."""
    engine = Engine(EngineConfig(profile=get_profile(profile), num_gpu_blocks=400))
    seq = Seq("r", prompt, output, [])
    now = 0.0
    engine.submit(seq, now)
    while not seq.done:
        step = engine.plan_step(now)
        assert step is not None
        now += step
        engine.finish_step(now)
    return now


def test_a_time_sliced_share_is_that_many_times_slower_with_its_share_of_memory() -> None:
    whole, quarter = get_profile("H100"), get_profile("h100-shared-4")
    assert quarter.name == "H100-shared-4"
    assert quarter.step_time(512, 8, 4000) == pytest.approx(4 * whole.step_time(512, 8, 4000))
    assert quarter.num_gpu_blocks == whole.num_gpu_blocks // 4
    assert quarter.memory_mib == whole.memory_mib  # the exporter shows the one physical GPU
    assert get_profile("MIG-1g.10gb-shared-2").name == "MIG-1g.10gb-shared-2"
    alone, shared = serve_alone("H100", 300, 50), serve_alone("H100-shared-4", 300, 50)
    assert shared == pytest.approx(4 * alone)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("H100-shared-0", "1 to 64 users"),
        ("H100-shared-x", "-shared-<users>"),
        ("B300-shared-2", "unknown GPU profile 'b300'"),
        ("B300", "time-sliced"),
    ],
)
def test_bad_profile_names_say_what_is_known(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_profile(name)
