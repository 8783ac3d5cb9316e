"""The candidates of one scheduling cycle, with per-endpoint columns computed once, on demand.

Several scorers read the same fields (scrape time, queue, in-flight); over 1,024 endpoints each
pass costs tens of microseconds in CPython, so `Profile.schedule` wraps the candidates in a
`Snapshot` and plugins read its cached columns. A plugin given a plain sequence (a unit test, a
third-party caller) gets a Snapshot built on the spot via `snapshot_of`: same results, no cache.
A Snapshot lives for one cycle only, so a column can never outlive the states it was read from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from epp.types import EndpointState

if TYPE_CHECKING:
    from functools import cached_property
else:

    class cached_property:  # the functools name, so the type checker reads it as that one
        """functools.cached_property without its per-access lock (Python 3.11 takes one on
        every first read; a Snapshot is read by one thread): the first read stores the value
        in the instance, which then shadows this non-data descriptor."""

        def __init__(self, compute: Callable[[Any], Any]) -> None:
            self.compute = compute
            self.name = compute.__name__

        def __set_name__(self, owner: type, name: str) -> None:
            self.name = name

        def __get__(self, instance: Any, owner: type | None = None) -> Any:
            if instance is None:
                return self
            value = instance.__dict__[self.name] = self.compute(instance)
            return value


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
    def measured_tpot(self) -> list[float]:
        """The paces measured so far (0.0 means not measured yet)."""
        return [p for p in self.tpot if p > 0.0]

    @cached_property
    def fastest_tpot(self) -> float:
        """The fastest measured pace (seconds per output token); 0.0 when none is measured."""
        return min(self.measured_tpot, default=0.0)

    @cached_property
    def filled_tpot(self) -> list[float]:
        """Measured paces, the unmeasured ones as the mean of the measured (all 0.0: none)."""
        paces = self.tpot
        measured = self.measured_tpot
        if not measured or len(measured) == len(paces):
            return paces
        default = sum(measured) / len(measured)
        return [p if p > 0.0 else default for p in paces]

    @cached_property
    def relative_pace(self) -> list[float]:
        """Pace over the fastest measured one; 1.0 where unmeasured (or none is measured)."""
        fastest = self.fastest_tpot
        if not fastest:
            return [1.0] * len(self)
        inv = 1.0 / fastest
        return [p * inv if p > 0.0 else 1.0 for p in self.tpot]

    @cached_property
    def queued_share(self) -> list[float] | None:
        """Requests queued beyond a full batch (this one included), over the batch's limit:
        how many typical requests' time the excess takes to drain. None: no limit is known."""
        limits = self.limit
        if not any(limits):
            return None
        return [
            (ld - lim + 1) / lim if lim and ld >= lim else 0.0
            for ld, lim in zip(self.load, limits, strict=True)
        ]

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
