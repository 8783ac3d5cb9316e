"""The GPU layer's priors: accelerator models, MIG slices, time-sliced shares, health classes."""

from __future__ import annotations

import pytest

from epp.hardware import (
    HEALTH_DEGRADED,
    HEALTH_DRAIN,
    HEALTH_OK,
    capacity_of,
    mig_fraction,
    model_speed,
    taint_health,
    worst,
)


@pytest.mark.parametrize(
    ("name", "speed"),
    [
        ("nvidia-tesla-v100", 0.58),  # the seed's node label
        ("nvidia-tesla-a100", 1.0),
        ("NVIDIA-A100-SXM4-80GB", 1.31),  # GPU feature discovery's product label
        ("nvidia-h100-80gb", 2.15),
        ("NVIDIA-H100-PCIe", 1.3),
        ("NVIDIA H200", 3.1),
        ("NVIDIA-GH200-480GB", 2.6),
        ("nvidia-l4", 0.19),
        ("nvidia-l40s", 0.56),
        ("NVIDIA-A10G", 0.39),
        ("nvidia-tesla-t4", 0.21),
        ("some-new-card", 1.0),
        (None, 1.0),
    ],
)
def test_model_speed_by_name(name: str | None, speed: float) -> None:
    assert model_speed(name) == speed


def test_mig_slices_are_sevenths_of_their_gpu_and_quarters_of_an_a30() -> None:
    assert mig_fraction("1g.5gb") == pytest.approx(1 / 7)
    assert mig_fraction("3g.20gb", "nvidia-a100") == pytest.approx(3 / 7)
    assert mig_fraction("7g.40gb") == 1.0
    assert mig_fraction("1g.6gb", "NVIDIA-A30") == pytest.approx(1 / 4)
    assert mig_fraction("not-a-profile") == 1.0
    assert mig_fraction(None) == 1.0


def test_capacity_combines_model_mig_and_time_slicing() -> None:
    assert capacity_of("nvidia-a100", "1g.5gb") == pytest.approx(1 / 7)
    assert capacity_of("nvidia-h100-80gb") == pytest.approx(2.15)
    # a profile inside GPU feature discovery's product name counts as the slice
    assert capacity_of("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb") == pytest.approx(1 / 7)
    assert capacity_of("nvidia-tesla-t4", users=4) == pytest.approx(0.21 / 4)
    assert capacity_of(None, gpus=2) == 2.0
    assert capacity_of(None, users=0) == 1.0


def test_taint_effects_and_the_worse_of_two_classes() -> None:
    assert taint_health("NoSchedule") == HEALTH_DRAIN
    assert taint_health("NoExecute") == HEALTH_DRAIN
    assert taint_health("PreferNoSchedule") == HEALTH_DEGRADED
    assert taint_health("None") == HEALTH_OK
    assert taint_health("SomethingNew") == HEALTH_OK
    assert worst(HEALTH_OK, HEALTH_DEGRADED) == HEALTH_DEGRADED
    assert worst(HEALTH_DRAIN, HEALTH_DEGRADED) == HEALTH_DRAIN
    assert worst(HEALTH_OK, "garbage") == HEALTH_OK
