"""The calibration fit recovers the step-time coefficients from timed samples (no GPU needed)."""

from __future__ import annotations

import pytest

from epp.sim.calibrate import StepSample, fit
from epp.sim.profiles import get_profile


def test_fit_recovers_a_profile_from_its_own_step_times() -> None:
    p = get_profile("A100-80G")
    shapes = [(n, 0, 0) for n in (128, 512, 2048)] + [
        (0, b, b * c) for b in (1, 8, 64) for c in (256, 1024)
    ]
    samples = [StepSample(*s, p.step_time(*s)) for s in shapes]
    got = fit(samples)
    assert got["base_step_s"] == pytest.approx(p.base_step_s, rel=1e-6)
    assert got["prefill_token_s"] == pytest.approx(p.prefill_token_s, rel=1e-6)
    assert got["decode_seq_s"] == pytest.approx(p.decode_seq_s, rel=1e-6)
    assert got["kv_token_s"] == pytest.approx(p.kv_token_s, rel=1e-6)


def test_fit_needs_varied_samples() -> None:
    with pytest.raises(ValueError, match="determine"):
        fit([StepSample(10, 0, 0, 0.01), StepSample(20, 0, 0, 0.02)])
