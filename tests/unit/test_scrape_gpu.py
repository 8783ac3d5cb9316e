"""GpuPoller with an in-memory query: pod keys, values, scaling, outages and recovery."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from epp.gpu import GpuPoller, GpuSettings
from epp.types import GpuMetrics

SETTINGS = GpuSettings(prometheus_url="http://unused", interval=0.01)


def series(value: str, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1_700_000_000.0, value]}


@dataclass
class FakePrometheus:
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    down: bool = False
    threads: set[int] = field(default_factory=set)

    def __call__(self, query: str) -> Sequence[Mapping[str, Any]]:
        self.threads.add(threading.get_ident())
        if self.down:
            raise ConnectionError("connection refused")
        return self.results.get(query, [])


@dataclass
class Sink:
    latest: dict[str, GpuMetrics] = field(default_factory=dict)

    def set_gpu(self, pod_key: str, gpu: GpuMetrics) -> None:
        self.latest[pod_key] = gpu


def fake_with_data() -> FakePrometheus:
    s = SETTINGS
    assert s.memory_query is not None
    return FakePrometheus(
        {
            s.query: [
                series("37.5", pod="vllm-0", namespace="prod"),
                series("120", pod="vllm-1", namespace="prod"),  # clamped to 100
                series("NaN", pod="vllm-2", namespace="prod"),  # dropped
                series("12", pod="bare"),  # no namespace label
                series("99", gpu="0"),  # no pod label: cannot be mapped
            ],
            s.memory_query: [series("0.25", pod="vllm-0", namespace="prod")],
        }
    )


async def test_maps_series_to_pod_keys() -> None:
    prom, sink = fake_with_data(), Sink()
    await GpuPoller(sink, SETTINGS, query=prom, clock=lambda: 7.0).poll_once(prom)
    assert sink.latest == {
        "prod/vllm-0": GpuMetrics(37.5, 0.25, 7.0),
        "prod/vllm-1": GpuMetrics(100.0, None, 7.0),
        "bare": GpuMetrics(12.0, None, 7.0),
    }
    assert threading.get_ident() not in prom.threads  # queried off the event loop


async def test_outage_marks_unknown_logs_once_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="epp.gpu")
    prom, sink = fake_with_data(), Sink()
    poller = GpuPoller(sink, SETTINGS, query=prom)
    await poller.poll_once(prom)
    prom.down = True
    for _ in range(3):
        await poller.poll_once(prom)
    assert {k: g.utilization for k, g in sink.latest.items()} == dict.fromkeys(sink.latest)
    prom.down = False
    await poller.poll_once(prom)
    assert sink.latest["prod/vllm-0"].utilization == 37.5
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [lvl for lvl, _ in levels] == [logging.WARNING, logging.INFO]
    assert "connection refused" in levels[0][1]


async def test_pod_gone_from_results_becomes_unknown() -> None:
    prom, sink = fake_with_data(), Sink()
    poller = GpuPoller(sink, SETTINGS, query=prom)
    await poller.poll_once(prom)
    prom.results[SETTINGS.query] = prom.results[SETTINGS.query][:1]
    await poller.poll_once(prom)
    assert sink.latest["prod/vllm-1"].utilization is None
    assert sink.latest["prod/vllm-0"].utilization == 37.5


async def test_duty_cycle_scale_and_custom_labels() -> None:
    settings = GpuSettings(
        prometheus_url="x",
        query="nvidia_gpu_duty_cycle",
        memory_query=None,
        pod_label="exported_pod",
        namespace_label="exported_namespace",
        utilization_scale=100.0,
    )
    prom = FakePrometheus(
        {"nvidia_gpu_duty_cycle": [series("0.5", exported_pod="p", exported_namespace="n")]}
    )
    sink = Sink()
    await GpuPoller(sink, settings, query=prom).poll_once(prom)
    assert sink.latest == {"n/p": GpuMetrics(50.0, None, sink.latest["n/p"].sampled_at)}


async def test_bad_payload_degrades_to_unknown() -> None:
    def broken(query: str) -> Sequence[Mapping[str, Any]]:
        return [{"metric": None, "value": "garbage"}, {"no": "fields"}]

    sink = Sink()
    await GpuPoller(sink, SETTINGS, query=broken).poll_once(broken)
    assert sink.latest == {}


async def test_run_polls_until_cancelled_and_without_url_returns() -> None:
    prom, sink = fake_with_data(), Sink()
    task = asyncio.create_task(GpuPoller(sink, SETTINGS, query=prom).run())
    await asyncio.sleep(0.1)
    assert not task.done() and "prod/vllm-0" in sink.latest
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(GpuPoller(Sink(), GpuSettings()).run(), 1.0)


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        GpuSettings(interval=0)
