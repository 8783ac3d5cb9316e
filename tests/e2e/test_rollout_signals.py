"""The controller's view of several EPP replicas: their /metrics pages over real HTTP, added up;
a replica that cannot be read fails the sample instead of looking like a drop in traffic."""

from __future__ import annotations

import httpx
import pytest

from epp.rollout.signals import MetricsSource, quantile
from tests.e2e.test_rollout_kube import MODEL, MetricsPage

pytestmark = pytest.mark.e2e


async def test_replicas_are_added_up_and_a_missing_one_fails_the_sample() -> None:
    pages = [MetricsPage(), MetricsPage()]
    for page, (n, tpot) in zip(pages, ((30, 0.01), (10, 0.04)), strict=True):
        await page.start()
        for _ in range(n):
            page.metrics.version_completed.labels(MODEL, "canary").inc()
            page.metrics.version_tpot.labels(MODEL, "canary").observe(tpot)
        page.metrics.version_errors.labels(MODEL, "canary", "Incomplete").inc()
    source = MetricsSource([p.url for p in pages])
    try:
        sample = await source.sample([MODEL])
        counts = sample[(MODEL, "canary")]
        assert (counts.completed, counts.errors) == (40, 2)
        p90 = quantile(counts.tpot, 0.9)  # the slow replica's quarter decides the tail
        assert p90 is not None and 0.03 < p90 <= 0.045
        await pages[1].stop()
        with pytest.raises(httpx.HTTPError):
            await source.sample([MODEL])
    finally:
        await source.aclose()
        for page in pages:
            await page.stop()
