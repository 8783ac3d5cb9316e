from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from epp.loop_metrics import LoopCounter, LoopGauge, LoopHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)
AMOUNTS = (0.0, 0.001, 0.0010001, 0.05, 0.1, 3.0, 10.0, 11.0, math.inf, -1.0, math.nan, 0.5)


def exposition(counter: type[Counter], gauge: type[Gauge], histogram: type[Histogram]) -> bytes:
    r = CollectorRegistry()
    c = counter("c", "a counter", ("model",), registry=r)
    g = gauge("g", "a gauge", ("model",), registry=r)
    h = histogram("h", "a histogram", ("model",), buckets=BUCKETS, registry=r)
    plain = histogram("p", "a histogram without labels", registry=r)
    for i, amount in enumerate(AMOUNTS):
        model = "ab"[i % 2]
        c.labels(model).inc(i)
        g.labels(model).inc(i)
        g.labels(model).dec(0.5)
        h.labels(model).observe(amount)
        plain.observe(amount)
    g.labels("c").set(7)
    return b"\n".join(line for line in generate_latest(r).splitlines() if b"_created" not in line)


def test_loop_metrics_expose_exactly_what_prometheus_client_would() -> None:
    mine = exposition(LoopCounter, LoopGauge, LoopHistogram)
    assert mine == exposition(Counter, Gauge, Histogram)
    assert b'h_bucket{le="0.01",model="a"} 2.0' in mine  # 0.0 and 0.0010001


def test_loop_metrics_keep_their_parents_errors() -> None:
    r = CollectorRegistry()
    with pytest.raises(ValueError, match="missing label values"):
        LoopHistogram("h", "h", ("model",), registry=r).observe(1.0)
    with pytest.raises(ValueError, match="missing label values"):
        LoopCounter("c", "c", ("model",), registry=r).inc()
    with pytest.raises(ValueError, match="non-negative"):
        LoopCounter("d", "d", registry=r).inc(-1)
    with pytest.raises(ValueError, match="missing label values"):
        LoopGauge("g", "g", ("model",), registry=r).dec()
