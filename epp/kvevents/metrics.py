"""The KV-event subscribers' health on the EPP's `/metrics`, read at scrape time.

Per pod followed (label `pod`, its address): batches and events received, sequence gaps, batches
replayed, engine restarts seen, entries dropped after a gap the replay could not fill, payloads
that did not decode, the last batch's lag (the pod's batch timestamp to the index, which
includes the clocks' difference) and the blocks the index holds for it; and the lag's median
and p99 over recent batches. Summed over the subscribers (one per precise scorer). Nothing is
counted on the request path: `collect` reads what `epp.kvevents.subscriber` keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import islice

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.kvevents.subscriber import KvEventsSubscriber, PodEvents

RECENT = 1_000  # batches the lag quantiles are taken over

_COUNTERS = (
    ("batches", "epp_kv_events_batches", "KV event batches received from the pod"),
    ("events", "epp_kv_events", "KV events received from the pod"),
    ("gaps", "epp_kv_events_gaps", "Sequence gaps in the pod's event stream"),
    ("replayed", "epp_kv_events_replayed_batches", "Batches fetched from the pod's replay socket"),
    ("restarts", "epp_kv_events_restarts", "Engine restarts seen (the sequence went back)"),
    ("dropped", "epp_kv_events_dropped", "The pod's entries dropped after an unfilled gap"),
    ("bad", "epp_kv_events_bad", "Payloads or frames that did not decode"),
)


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class KvEventsCollector(Collector):
    def __init__(self, subscribers: Callable[[], Sequence[KvEventsSubscriber]]) -> None:
        self._subscribers = subscribers

    def collect(self) -> Iterator[Metric]:
        subs = list(self._subscribers())
        pods: dict[str, list[PodEvents]] = {}
        for sub in subs:
            for address, pod in list(sub.per_pod.items()):
                pods.setdefault(address, []).append(pod)
        for attr, name, doc in _COUNTERS:
            family = CounterMetricFamily(name, doc, labels=["pod"])
            for address, stats in sorted(pods.items()):
                family.add_metric([address], sum(getattr(p, attr) for p in stats))
            yield family
        lag = GaugeMetricFamily(
            "epp_kv_events_lag_seconds",
            "Seconds from the pod's last batch timestamp to the index",
            labels=["pod"],
        )
        for address, stats in sorted(pods.items()):
            lag.add_metric([address], max(p.lag for p in stats))
        yield lag
        blocks = GaugeMetricFamily(
            "epp_kv_index_blocks", "KV blocks the precise index holds for the pod", labels=["pod"]
        )
        for address in sorted(pods):
            blocks.add_metric([address], sum(s.index.blocks_of(address) for s in subs))
        yield blocks
        recent: list[float] = []
        for sub in subs:
            lat = sub.stats.latencies
            recent.extend(islice(lat, max(0, len(lat) - RECENT), None))
        quantiles = GaugeMetricFamily(
            "epp_kv_events_recent_lag_seconds",
            f"Batch timestamp to index, over the last {RECENT} batches",
            labels=["quantile"],
        )
        if recent:
            for q in (0.5, 0.99):
                quantiles.add_metric([str(q)], _quantile(recent, q))
        yield quantiles
