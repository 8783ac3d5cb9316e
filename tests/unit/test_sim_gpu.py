"""The simulator's GPU faults: validation of `/sim/config`'s `gpu` object, the speed a throttle
leaves, and the DCGM families that show it, read back the way `epp.gpu.health` classifies them."""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from epp.gpu.health import DcgmHealth, HealthSettings, Readings
from epp.hardware import HEALTH_DEGRADED, HEALTH_DRAIN, HEALTH_OK
from epp.sim.gpu import REASON_IDLE, GpuFault, SimGpu
from epp.sim.metrics import render_dcgm
from epp.sim.pod import SimPod
from epp.sim.spec import SimPodSpec


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"throttle": "hot"}, "gpu.throttle must be one of ['power', 'thermal'] or null"),
        ({"throttle": 1}, "gpu.throttle must be one of"),
        ({"clock": 0}, "gpu.clock must be a number in (0, 1], not 0"),
        ({"clock": 1.5}, "gpu.clock must be a number in (0, 1]"),
        ({"clock": "half"}, "gpu.clock must be a number in (0, 1], not 'half'"),
        ({"xid": -3}, "gpu.xid must be a positive integer XID or null, not -3"),
        ({"xid": True}, "gpu.xid must be a positive integer XID"),
        ({"xid": 79.5}, "gpu.xid must be a positive integer XID"),
        ({"temperature": "hot"}, "gpu.temperature must be a number of degrees C"),
        ({"temperature": 400}, "gpu.temperature must be a number of degrees C in [-50, 150]"),
        ({"speed": 0.5}, "unknown gpu keys: ['speed']; known: ['clock', 'temperature'"),
    ],
)
def test_bad_gpu_faults_are_refused_with_the_field_named(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        GpuFault.parse(GpuFault(), changes)


def test_parse_merges_and_null_clears() -> None:
    hot = GpuFault.parse(GpuFault(), {"throttle": "thermal", "clock": 0.25})
    assert (hot.throttle, hot.clock, hot.speed) == ("thermal", 0.25, 0.25)
    failed = GpuFault.parse(hot, {"xid": 79})
    assert (failed.throttle, failed.xid) == ("thermal", 79)
    assert GpuFault.parse(failed, {"throttle": None}).throttle is None
    assert GpuFault.parse(failed, None) == GpuFault()
    with pytest.raises(ValueError, match="gpu must be an object or null"):
        GpuFault.parse(GpuFault(), "thermal")


def test_violation_time_accumulates_while_throttled() -> None:
    gpu = SimGpu(1410)
    assert gpu.violation_us(5.0) == (0.0, 0.0)
    gpu.set(GpuFault(throttle="thermal"), 10.0)
    assert gpu.violation_us(12.5) == (2_500_000.0, 0.0)
    gpu.set(GpuFault(throttle="power"), 13.0)  # thermal banked, power starts
    assert gpu.violation_us(14.0) == (3_000_000.0, 1_000_000.0)
    gpu.set(GpuFault(), 15.0)
    assert gpu.violation_us(100.0) == (3_000_000.0, 2_000_000.0)  # counters never go back


def test_readings_of_a_healthy_and_a_throttled_gpu() -> None:
    gpu = SimGpu(1410)
    assert gpu.reasons(0.0) == REASON_IDLE
    assert gpu.reasons(0.7) == 0
    assert gpu.sm_clock(0.7) == 1410
    assert gpu.temperature(1.0) < 87
    gpu.set(GpuFault(throttle="thermal", clock=0.5), 0.0)
    assert gpu.reasons(0.7) & 0x20 and gpu.reasons(0.7) & 0x40
    assert gpu.sm_clock(0.7) == 705
    assert gpu.temperature(0.7) >= 87
    gpu.set(GpuFault(temperature=45.0, xid=48), 1.0)
    assert (gpu.temperature(1.0), gpu.xid()) == (45.0, 48)


def test_configure_throttles_the_engine_and_clearing_restores_it() -> None:
    pod = SimPod(SimPodSpec("127.0.0.2", 8000, "pod-0", speed=2.0))
    view = pod.configure({"gpu": {"throttle": "thermal", "clock": 0.5}})
    assert view["gpu"]["throttle"] == "thermal"
    assert (view["speed"], view["effective_speed"]) == (2.0, 1.0)
    pod.configure({"speed": 4.0})  # the base speed moves; the throttle still halves it
    assert pod.engine.speed == 2.0
    with pytest.raises(ValueError, match=r"gpu\.clock"):
        pod.configure({"gpu": {"clock": 2}, "speed": 1.0})
    assert pod.engine.speed == 2.0  # a refused document changes nothing
    pod.configure({"gpu": None})
    assert pod.engine.speed == 4.0 and pod.gpu_error() is None


def test_an_xid_fails_new_requests_until_cleared() -> None:
    pod = SimPod(SimPodSpec("127.0.0.2", 8000, "pod-0"))
    pod.configure({"gpu": {"xid": 79}})
    error = pod.gpu_error()
    assert error is not None and error.status == 500 and "Xid 79" in error.message
    pod.configure({"gpu": {"xid": None}})
    assert pod.gpu_error() is None


def dcgm_readings(page: bytes, now: float) -> Readings:
    """What the EPP's poller would read from this page through Prometheus (instant values; the
    violation rate over the window since t=0)."""
    fams = {f.name: f.samples for f in text_string_to_metric_families(page.decode())}

    def by_pod(name: str) -> dict[str, float]:
        return {f"default/{s.labels['pod']}": s.value for s in fams[name]}

    violation = {
        k: max(v, by_pod("DCGM_FI_DEV_POWER_VIOLATION")[k]) / now
        for k, v in by_pod("DCGM_FI_DEV_THERMAL_VIOLATION").items()
    }
    reasons = {k: int(v) for k, v in by_pod("DCGM_FI_DEV_CLOCKS_EVENT_REASONS").items()}
    return Readings(reasons, by_pod("DCGM_FI_DEV_GPU_TEMP"), violation,
                    by_pod("DCGM_FI_DEV_XID_ERRORS"))  # fmt: skip


def test_the_exporter_page_classifies_as_the_epp_reads_it() -> None:
    pods = [SimPod(SimPodSpec("127.0.0.2", 8000, f"pod-{i}")) for i in range(4)]
    healthy = dcgm_readings(render_dcgm(pods, 30.0), 30.0)
    judge = DcgmHealth(HealthSettings())
    assert set(judge.update(healthy, 30.0).values()) == {HEALTH_OK}
    pods[1].gpu.set(GpuFault(throttle="thermal"), 0.0)
    pods[2].gpu.set(GpuFault(throttle="power", clock=0.8), 0.0)
    pods[3].gpu.set(GpuFault(xid=79), 0.0)
    page = render_dcgm(pods, 30.0)
    fams = {f.name: f for f in text_string_to_metric_families(page.decode())}
    assert fams["DCGM_FI_DEV_THERMAL_VIOLATION"].type == "counter"
    clocks = {s.labels["pod"]: s.value for s in fams["DCGM_FI_DEV_SM_CLOCK"].samples}
    assert clocks["pod-1"] == 990 and clocks["pod-2"] == 1584  # H100 boost 1980 MHz
    classes = DcgmHealth(HealthSettings()).update(dcgm_readings(page, 30.0), 30.0)
    assert classes == {
        "default/pod-0": HEALTH_OK,
        "default/pod-1": HEALTH_DEGRADED,
        "default/pod-2": HEALTH_DEGRADED,
        "default/pod-3": HEALTH_DRAIN,
    }
