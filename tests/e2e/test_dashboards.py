"""The operators' dashboard and alerts (deploy/grafana/, deploy/alerts.yaml) against real data.

Unit part: the EPP's own registry carries what the dashboard reads besides the request metrics
(process CPU, each endpoint's metrics age).
"""

from __future__ import annotations

import math
import time

from prometheus_client import CollectorRegistry

from epp.observability import EppMetrics
from tests.factories import fresh, seed_store


def test_the_epp_registry_exports_process_metrics_and_endpoint_metrics_age() -> None:
    registry = CollectorRegistry()
    metrics = EppMetrics(registry)
    assert registry.get_sample_value("process_cpu_seconds_total") is not None
    store = seed_store(2)
    store.set_metrics("127.0.0.2:8000", fresh())
    metrics.refresh_pools(store)

    def age(address: str) -> float | None:
        labels = {"pool": "llama2-gpu-pool", "endpoint": address}
        return registry.get_sample_value("epp_endpoint_metrics_age_seconds", labels)

    scraped = age("127.0.0.2:8000")
    assert scraped is not None and 0 <= scraped < 1
    assert age("127.0.0.3:8000") == math.inf  # never scraped
    time.sleep(0.05)
    metrics.refresh_pools(store)
    later = age("127.0.0.2:8000")
    assert later is not None and later >= scraped + 0.05
