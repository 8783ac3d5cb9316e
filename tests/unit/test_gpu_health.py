"""DCGM health classes with hysteresis, through GpuPoller with an in-memory query."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from epp.gpu import DcgmHealth, GpuPoller, GpuSettings, HealthSettings
from epp.gpu.health import Readings
from epp.hardware import HEALTH_DEGRADED, HEALTH_DRAIN, HEALTH_OK
from epp.types import GpuMetrics

H = HealthSettings(clear_after=10.0)


def readings(
    reasons: int | None = None,
    temperature: float | None = None,
    violation_us: float | None = None,
    xid: float | None = None,
) -> Readings:
    def one(value: float | None) -> dict[str, float]:
        return {} if value is None else {"ns/p": value}

    return Readings(
        {} if reasons is None else {"ns/p": reasons},
        one(temperature),
        one(violation_us),
        one(xid),
    )


@pytest.mark.parametrize(
    ("reading", "health"),
    [
        (readings(reasons=0x1), HEALTH_OK),  # idle
        (readings(reasons=0x4), HEALTH_OK),  # software power cap: normal under load
        (readings(reasons=0x40), HEALTH_DEGRADED),  # hardware thermal slowdown
        (readings(reasons=0x20 | 0x1), HEALTH_DEGRADED),  # software thermal slowdown
        (readings(temperature=86.0), HEALTH_OK),
        (readings(temperature=88.0), HEALTH_DEGRADED),
        (readings(violation_us=50_000.0), HEALTH_OK),  # 5 % of the time
        (readings(violation_us=400_000.0), HEALTH_DEGRADED),
        (readings(xid=13.0), HEALTH_OK),  # an application's error, not the GPU's
        (readings(xid=79.0), HEALTH_DRAIN),  # fallen off the bus
        (readings(reasons=0x40, xid=48.0), HEALTH_DRAIN),
    ],
)
def test_classes(reading: Readings, health: str) -> None:
    assert DcgmHealth(H).classify("ns/p", reading) == health


def test_rises_at_once_and_clears_only_after_staying_better() -> None:
    tracker = DcgmHealth(H)
    assert tracker.update(readings(temperature=70.0), 0.0) == {"ns/p": HEALTH_OK}
    assert tracker.update(readings(temperature=90.0), 1.0) == {"ns/p": HEALTH_DEGRADED}
    # 84 C is inside the band below 87 C: still hot, the clock does not start
    assert tracker.update(readings(temperature=84.0), 2.0) == {"ns/p": HEALTH_DEGRADED}
    assert tracker.update(readings(temperature=80.0), 3.0) == {"ns/p": HEALTH_DEGRADED}
    assert tracker.update(readings(temperature=80.0), 12.0) == {"ns/p": HEALTH_DEGRADED}
    assert tracker.update(readings(temperature=80.0), 13.0) == {"ns/p": HEALTH_OK}
    # a drain outranks a degradation at once; back to degraded only after the wait
    assert tracker.update(readings(xid=79.0), 14.0) == {"ns/p": HEALTH_DRAIN}
    assert tracker.update(readings(reasons=0x40), 15.0) == {"ns/p": HEALTH_DRAIN}
    assert tracker.update(readings(reasons=0x40), 25.0) == {"ns/p": HEALTH_DEGRADED}
    # a pod no longer reported keeps its class until it clears, then is forgotten
    assert tracker.update(readings(), 26.0) == {"ns/p": HEALTH_DEGRADED}
    assert tracker.update(readings(), 36.0) == {"ns/p": HEALTH_OK}
    assert tracker.update(readings(), 37.0) == {}


def test_invalid_settings() -> None:
    with pytest.raises(ValueError, match="violation_share"):
        HealthSettings(violation_share=0)


class Sink:
    def __init__(self) -> None:
        self.latest: dict[str, GpuMetrics] = {}

    def set_gpu(self, pod_key: str, gpu: GpuMetrics) -> None:
        self.latest[pod_key] = gpu


async def test_poller_ors_throttle_reasons_over_a_pods_gpus() -> None:
    settings = GpuSettings(prometheus_url="http://unused", health=H)
    now = [100.0]

    def series(value: str, pod: str, gpu: str) -> dict[str, Any]:
        return {"metric": {"pod": pod, "namespace": "ns", "gpu": gpu}, "value": [0, value]}

    results: dict[str, list[dict[str, Any]]] = {
        settings.query: [series("50", "a", "0"), series("50", "b", "1")],
        H.reasons_query: [series("256", "a", "0"), series("64", "a", "1")],  # display | thermal
        H.xid_query or "": [series("0", "b", "1")],
    }

    def query(promql: str) -> Sequence[Mapping[str, Any]]:
        return results.get(promql, [])

    sink = Sink()
    poller = GpuPoller(sink, settings, query=query, clock=lambda: now[0])
    await poller.poll_once(query)
    assert sink.latest["ns/a"].health == HEALTH_DEGRADED
    assert sink.latest["ns/b"].health == HEALTH_OK
    assert sink.latest["ns/a"].utilization == 50.0
    results[H.xid_query or ""] = [series("79", "b", "1")]
    await poller.poll_once(query)
    assert sink.latest["ns/b"].health == HEALTH_DRAIN
    off = GpuSettings(prometheus_url="http://unused", health=HealthSettings(enabled=False))
    quiet = Sink()
    await GpuPoller(quiet, off, query=query).poll_once(query)
    assert quiet.latest["ns/b"].health == HEALTH_OK
