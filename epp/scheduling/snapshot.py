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

from epp.hardware import DEGRADED_SLOWDOWN, HEALTH_DEGRADED, PRIOR_TPOT
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
    def scraped_load(self) -> list[int]:
        """The server's last running + waiting, moved by the requests the EPP started (+) and
        ended (-) since that scrape."""
        return [c.metrics.running + c.metrics.waiting + c.in_flight_since_scrape for c in self]

    @cached_property
    def load(self) -> list[int]:
        """`EndpointState.load` per endpoint: the EPP's in-flight count or the server's total."""
        return [f if f > s else s for f, s in zip(self.in_flight, self.scraped_load, strict=True)]

    @cached_property
    def limit(self) -> list[int]:
        return [c.limit for c in self]

    @cached_property
    def tpot(self) -> list[float]:
        return [c.tpot for c in self]

    @cached_property
    def tpot_spread(self) -> list[float]:
        return [c.tpot_spread for c in self]

    @cached_property
    def prefill_pace(self) -> list[float]:
        return [c.prefill_pace for c in self]

    @cached_property
    def measured_tpot(self) -> list[float]:
        """The paces measured so far (0.0 means not measured yet)."""
        return [p for p in self.tpot if p > 0.0]

    @cached_property
    def capacity(self) -> list[float]:
        return [c.endpoint.capacity for c in self]

    @cached_property
    def slowdown(self) -> list[float]:
        """How much slower than its prior a GPU is taken to be: `DEGRADED_SLOWDOWN` where its
        health is degraded (throttling), 1.0 elsewhere."""
        return [DEGRADED_SLOWDOWN if c.gpu_health == HEALTH_DEGRADED else 1.0 for c in self]

    @cached_property
    def priors_matter(self) -> bool:
        """Whether the hardware tells the endpoints apart (capacities differ, or a GPU is
        degraded); when not, paces are read exactly as measured."""
        # one pass, attributes read directly: this runs on every pick of the time model
        first = self[0].endpoint.capacity if self else 1.0
        degraded = HEALTH_DEGRADED
        for c in self:
            ep = c.endpoint
            # three comparisons, not `in (a, b)`: building the tuple doubles the pass's cost
            if ep.capacity != first or ep.device_health == degraded or c.gpu.health == degraded:  # noqa: PLR1714
                return True
        return False

    @cached_property
    def unit_pace(self) -> tuple[float, float]:
        """(mean, fastest) seconds per output token of one unit of capacity, from the paces
        measured on GPUs not degraded (on any when all are); `PRIOR_TPOT` while none is."""
        units = [
            p * c
            for p, c, s in zip(self.tpot, self.capacity, self.slowdown, strict=True)
            if p > 0.0 and s == 1.0
        ] or [p * c for p, c in zip(self.tpot, self.capacity, strict=True) if p > 0.0]
        if not units:
            return PRIOR_TPOT, PRIOR_TPOT
        return sum(units) / len(units), min(units)

    def _with_priors(self, unit: float) -> list[float]:
        """Measured paces, unmeasured ones from their capacity (`unit` / capacity); a degraded
        GPU at least `slowdown` times its prior, even where measured, while it holds at least
        the pool's mean load: the signal moves traffic before any answer shows the slowdown,
        and once the GPU holds less than the others its measured pace decides (a floor held
        regardless starved a throttled GPU whose small batch made it fast again)."""
        loads = self.load
        mean = sum(loads) / len(loads) if loads else 0.0
        out = []
        for p, c, s, ld in zip(self.tpot, self.capacity, self.slowdown, loads, strict=True):
            prior = unit / c if c > 0.0 else unit
            if s != 1.0 and (p <= 0.0 or ld >= mean):
                out.append(max(p, s * prior))
            else:
                out.append(p if p > 0.0 else prior)
        return out

    @cached_property
    def fastest_tpot(self) -> float:
        """The fastest measured pace (seconds per output token), or with hardware priors the
        fastest of `filled_tpot`; 0.0 when none is known."""
        if self.priors_matter:
            return min(self.filled_tpot, default=0.0)
        return min(self.measured_tpot, default=0.0)

    @cached_property
    def filled_tpot(self) -> list[float]:
        """Measured paces, the unmeasured ones as the mean of the measured (all 0.0: none);
        with hardware priors, the mean pace of one unit of capacity over each one's capacity
        while nothing is measured, after that only where it is faster than the mean."""
        paces = self.tpot
        measured = self.measured_tpot
        if self.priors_matter:
            filled = self._with_priors(self.unit_pace[0])
            if not measured:
                return filled
            # an unmeasured GPU is taken at its prior only where that is faster than the
            # measured mean: one the prior calls slower still gets tried, and measured
            # (a loaded GPU's pace over a slice's capacity overstates an idle slice's)
            default = sum(measured) / len(measured)
            columns = zip(filled, paces, self.slowdown, strict=True)
            return [f if p > 0.0 or s != 1.0 or f < default else default for f, p, s in columns]
        if not measured or len(measured) == len(paces):
            return paces
        default = sum(measured) / len(measured)
        return [p if p > 0.0 else default for p in paces]

    @cached_property
    def relative_pace(self) -> list[float]:
        """Pace over the fastest measured one; 1.0 where unmeasured (or none is measured). With
        hardware priors an unmeasured endpoint counts at the fastest unit's pace over its
        capacity, so a 1/7 MIG slice is 7 times slower than its whole GPU from the start."""
        if self.priors_matter:
            paces = self._with_priors(self.unit_pace[1])
            inv = 1.0 / min(paces)
            return [p * inv for p in paces]
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
