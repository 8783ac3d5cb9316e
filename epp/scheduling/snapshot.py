"""The candidates of one scheduling cycle, with per-endpoint columns computed once, on demand.

Several scorers read the same fields (scrape time, queue, in-flight); over 1,024 endpoints each
pass costs tens of microseconds in CPython, so `Profile.schedule` wraps the candidates in a
`Snapshot` and plugins read its cached columns. A plugin given a plain sequence (a unit test, a
third-party caller) gets a Snapshot built on the spot via `snapshot_of`: same results, no cache.
A Snapshot lives for one cycle only, so a column can never outlive the states it was read from.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from epp.types import EndpointState


class Snapshot(tuple[EndpointState, ...]):
    @cached_property
    def scraped_at(self) -> list[float]:
        return [c.metrics.scraped_at for c in self]

    @cached_property
    def oldest_scrape(self) -> float:
        return min(self.scraped_at)

    @cached_property
    def waiting(self) -> list[int]:
        return [c.metrics.waiting for c in self]

    @cached_property
    def running(self) -> list[int]:
        return [c.metrics.running for c in self]

    @cached_property
    def kv_usage(self) -> list[float]:
        return [c.metrics.kv_usage for c in self]

    @cached_property
    def in_flight(self) -> list[int]:
        return [c.in_flight for c in self]

    @cached_property
    def in_flight_tokens(self) -> list[int]:
        return [c.in_flight_tokens for c in self]

    @cached_property
    def load(self) -> list[int]:
        """`EndpointState.load` per endpoint: the EPP's in-flight count or the server's total."""
        columns = zip(self.in_flight, self.running, self.waiting, strict=True)
        return [f if f > r + w else r + w for f, r, w in columns]

    @cached_property
    def limit(self) -> list[int]:
        return [c.limit for c in self]

    @cached_property
    def tpot(self) -> list[float]:
        return [c.tpot for c in self]

    @cached_property
    def addresses(self) -> list[str]:
        return [c.endpoint.address for c in self]

    @cached_property
    def newest_gpu_sample(self) -> float:
        return max([c.gpu.sampled_at for c in self])

    def all_fresh(self, cutoff: float) -> bool:
        return self.oldest_scrape > cutoff

    def fresh(self, cutoff: float) -> list[bool]:
        return [t > cutoff for t in self.scraped_at]


def snapshot_of(candidates: Sequence[EndpointState]) -> Snapshot:
    return candidates if isinstance(candidates, Snapshot) else Snapshot(candidates)
